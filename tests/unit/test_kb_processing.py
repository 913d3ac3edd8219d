"""Text extraction, chunking and the hashing embedder (no database, no network)."""

from __future__ import annotations

import io
import itertools
import subprocess
import sys
import unicodedata
import zipfile

import httpx
import numpy as np
import pg8000.dbapi
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from sqlalchemy.exc import OperationalError, ProgrammingError

from airies.core.errors import NotAvailableError, ProviderError, is_transient
from airies.knowledge import extraction as dp
from airies.knowledge.chunking import chunk_text
from airies.knowledge.embedders.base import approx_tokens
from airies.knowledge.embedders.hashing import HashingEmbedder
from tests.kb_support import make_docx, make_pdf

DOCX = dp.DOCX


def test_pdf_pages_and_text():
    data = make_pdf(["First page about pumps.", "Second page about valves."])
    doc = dp.extract(data, dp.PDF)
    assert doc.page_count == 2 and "pumps" in doc.pages[0] and "valves" in doc.pages[1]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_document"),
        (b"hello, not a pdf", "corrupt_pdf"),
        (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF", "corrupt_pdf"),
    ],
)
def test_bad_pdfs(data, code):
    with pytest.raises(dp.DocumentRejected) as info:
        dp.extract(data, dp.PDF)
    assert info.value.code == code


def test_pdf_without_text_and_page_limit():
    with pytest.raises(dp.DocumentRejected) as info:
        dp.extract(make_pdf(["", ""]), dp.PDF)
    assert info.value.code == "no_text"
    with pytest.raises(dp.DocumentRejected) as info:
        dp.extract(make_pdf(["a"] * 5), dp.PDF, max_pages=4)
    assert info.value.code == "too_many_pages"


def test_owner_password_only_pdf_opens():
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    writer.append(PdfReader(io.BytesIO(make_pdf(["Readable with an empty user password."]))))
    writer.encrypt(user_password="", owner_password="owner", algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    assert "Readable" in dp.extract(out.getvalue(), dp.PDF).text


def test_docx_paragraphs_tables_and_zip_bomb():
    import docx

    document = docx.Document()
    document.add_paragraph("Warranty lasts two years.")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "Model X"
    table.rows[0].cells[1].text = "1200 W"
    buffer = io.BytesIO()
    document.save(buffer)
    text = dp.extract(buffer.getvalue(), DOCX).text
    assert "Warranty lasts two years." in text and "Model X | 1200 W" in text

    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", b"\0" * (5 * 1024 * 1024))
    assert len(bomb.getvalue()) < 50_000
    with pytest.raises(dp.DocumentRejected) as info:
        dp.extract(bomb.getvalue(), DOCX, max_decompressed_bytes=1024 * 1024)
    assert info.value.code == "zip_bomb"
    # Lying headers: the declared size is small but the stream inflates past the cap.
    with pytest.raises(dp.DocumentRejected) as info:
        dp.extract(b"PK\x03\x04 broken", DOCX)
    assert info.value.code == "corrupt_docx"
    assert dp.extract(make_docx(["One", "Two"]), DOCX).text == "One\n\nTwo"


def test_html_and_markdown_cleaning():
    html = (
        "<html><head><title>T</title><style>p{}</style></head><body><nav>Menu</nav>"
        "<h1>Title</h1><p>First <a href='/x'>link</a> para.</p><ul><li>one</li><li>two</li></ul>"
        "<script>alert(1)</script><table><tr><td>a</td><td>b</td></tr></table></body></html>"
    )
    doc = dp.extract(html.encode(), dp.HTML)
    assert doc.title == "T" and doc.links == ["/x"]
    assert doc.text == "Title\n\nFirst link para.\n\none\n\ntwo\n\na | b"
    md = "# Head\n\nSome **bold** and `code` with [a link](http://x).\n\n- item one\n- item two\n\n```py\nprint(1)\n```"
    assert (
        dp.extract(md.encode(), dp.MARKDOWN).text
        == "Head\n\nSome bold and code with a link.\n\nitem one\nitem two\n\nprint(1)"
    )


# Every C0 control but the whitespace ones, DEL and a few C1 controls (all encodable in the PDF's Latin-1 strings).
CONTROLS = "".join(chr(c) for c in (*range(0x00, 0x09), *range(0x0E, 0x20), 0x7F, 0x80, 0x85, 0x9F))


def _unwanted(text: str) -> list[str]:
    return [ch for ch in text if (ch != "\n" and unicodedata.category(ch) in ("Cc", "Cs")) or ch == "\ufeff"]


@pytest.mark.parametrize("kind", ["pdf", "text", "markdown", "html"])
def test_control_characters_never_leave_extraction(kind):
    """PostgreSQL refuses NUL and prompts should not carry the rest: every format comes out clean. (DOCX cannot hold
    them: XML 1.0 forbids control characters, python-docx refuses to write them.)"""
    dirty = f"Refunds{CONTROLS} take 14 days.\tTabs\x0band\x0cfeeds are spaces.\r\nNew line."
    if kind == "pdf":
        data, content_type = make_pdf([dirty]), dp.PDF
    elif kind == "html":
        page = f"<html><title>FAQ\x1b\x7f</title><p>{'Intro. ' * 700}</p><p>{dirty}</p></html>"
        data, content_type = page.encode(), dp.HTML
    else:
        # NUL only after the first 4 KB (also for HTML above): a NUL at the start marks a binary file (not_text)
        data, content_type = ("Intro. " * 700 + dirty).encode(), dp.MARKDOWN if kind == "markdown" else dp.TEXT
    doc = dp.extract(data, content_type)
    assert _unwanted(doc.text) == []
    assert "Refunds take 14 days." in doc.text and "Tabs and feeds are spaces." in doc.text
    if kind == "html":
        assert doc.title == "FAQ"


def test_lone_surrogates_and_byte_order_marks_are_removed():
    assert dp.normalise_text("a\ud800b\udfffc\ufeffd\x00e") == "abcde"
    assert dp.strip_control_characters("keep\ttabs\nand lines\x07") == "keep\ttabs\nand lines"


def test_content_types():
    assert dp.normalise_content_type("application/octet-stream", "Guide.PDF") == dp.PDF
    assert dp.normalise_content_type("text/plain; charset=utf-8") == dp.TEXT
    assert dp.normalise_content_type(None, "notes.md") == dp.MARKDOWN
    with pytest.raises(dp.DocumentRejected) as info:
        dp.extract(b"GIF89a", "image/gif")
    assert info.value.code == "unsupported_content_type"
    with pytest.raises(dp.DocumentRejected) as info:
        dp.extract(b"\x00\x01\x02binary", dp.TEXT)
    assert info.value.code == "not_text"
    assert dp.extract("Grüße".encode("cp1252"), dp.TEXT).text == "Grüße"


def test_chunks_respect_size_overlap_and_boundaries():
    paragraphs = [" ".join(f"Sentence {p}.{s} talks about topic {p}." for s in range(12)) for p in range(8)]
    chunks = chunk_text("\n\n".join(paragraphs), chunk_tokens=80, overlap_tokens=20)
    assert len(chunks) > 5
    assert all(c.token_count <= 80 for c in chunks)
    for chunk in chunks:
        assert chunk.text.endswith(".")  # never cut inside a sentence
        assert chunk.text[0].isupper()
    for previous, current in itertools.pairwise(chunks):
        last_sentence = previous.text.rsplit(". ", 1)[-1].split("\n\n")[-1]
        assert last_sentence in current.text  # the overlap carries the previous chunk's tail
    joined = " ".join(c.text for c in chunks)
    for p in range(8):
        assert f"Sentence {p}.11 talks" in joined  # nothing lost


def test_small_paragraphs_are_packed_and_pages_kept():
    chunks = chunk_text(["Page one text.", "Page two text.", "Page three text."], chunk_tokens=300)
    assert len(chunks) == 1 and chunks[0].page == 1
    many = chunk_text([" ".join(["word"] * 200)] * 3, chunk_tokens=100, overlap_tokens=0)
    assert [c.page for c in many][:2] == [1, 1] and many[-1].page == 3
    giant = chunk_text("x" * 50 + " " + "y " * 1000, chunk_tokens=50, overlap_tokens=0)
    assert all(c.token_count <= 50 for c in giant)
    assert chunk_text("   ", 100) == []


def test_hashing_embedder_is_deterministic_normalised_and_lexical():
    embedder = HashingEmbedder()
    texts = [
        "How do I reset my password?",
        "Reset your password from the settings page.",
        "The cafeteria serves lunch.",
    ]
    a = embedder.embed(texts).vectors
    b = HashingEmbedder().embed(texts).vectors
    assert np.array_equal(a, b) and a.shape == (3, 512) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    assert a[0] @ a[1] > a[0] @ a[2] + 0.2
    assert embedder.lexical_only and approx_tokens("one two three four") == 5
    assert np.allclose(embedder.embed([""]).vectors, 0)


def _shared(previous: str, current: str) -> str:
    """The longest start of ``current`` that ends ``previous`` (whitespace-normalised): what they share."""
    a, b = " ".join(previous.split()), " ".join(current.split())
    return next((b[:k] for k in range(min(len(a), len(b)), 0, -1) if a.endswith(b[:k])), "")


def test_overlap_survives_paragraphs_smaller_than_a_chunk_but_larger_than_the_overlap():
    # 30 paragraphs of ~95 tokens (5 sentences of ~19 tokens) at 300/40: whole paragraphs never fit in the overlap,
    # so the overlap comes from the last paragraph's trailing sentences.
    paragraphs = [
        " ".join(f"Paragraph {p} sentence {s} describes one more detail of item number {p}." for s in range(5))
        for p in range(30)
    ]
    assert all(60 < approx_tokens(p) < 120 for p in paragraphs)
    chunks = chunk_text("\n\n".join(paragraphs), chunk_tokens=300, overlap_tokens=40)
    assert len(chunks) > 5 and all(c.token_count <= 300 for c in chunks)
    for previous, current in itertools.pairwise(chunks):
        shared = _shared(previous.text, current.text)
        assert 20 <= approx_tokens(shared) <= 40, (previous.index, shared)
        assert shared.endswith(".") and shared[0].isupper()  # whole sentences
    joined = " ".join(c.text for c in chunks)
    assert all(f"Paragraph {p} sentence 4 " in joined for p in range(30))


def test_overlap_falls_back_to_words_for_a_long_last_sentence():
    # Paragraphs that are one ~78-token sentence each: nothing to cut at but words.
    paragraphs = [" ".join(f"p{p}w{i}" for i in range(60)) + "." for p in range(4)]
    chunks = chunk_text("\n\n".join(paragraphs), chunk_tokens=100, overlap_tokens=20)
    assert len(chunks) == 4
    for previous, current in itertools.pairwise(chunks):
        shared = _shared(previous.text, current.text)
        assert 10 <= approx_tokens(shared) <= 20 and shared.endswith(f"p{previous.index}w59.")
        assert current.token_count <= 100
    assert chunk_text("\n\n".join(paragraphs), chunk_tokens=100, overlap_tokens=0)[1].text == paragraphs[1]


def _pg_error(sqlstate: str) -> ProgrammingError:
    return ProgrammingError("INSERT ...", {}, pg8000.dbapi.ProgrammingError({"C": sqlstate, "M": "refused"}))


@pytest.mark.parametrize(
    ("make", "transient"),
    [
        (lambda: _pg_error("22021"), False),  # invalid byte sequence (a NUL)
        (lambda: _pg_error("23514"), False),  # check violation
        (lambda: _pg_error("40001"), True),  # serialisation failure
        (lambda: _pg_error("57P01"), True),  # admin shutdown
        (lambda: _pg_error("08006"), True),  # connection failure
        (lambda: OperationalError("SELECT", {}, Exception("database is locked")), True),
        (lambda: ValueError("bad vector count"), False),
        (lambda: UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), False),
        (lambda: TimeoutError("read timed out"), True),
        (lambda: httpx.ConnectError("refused"), True),
        (lambda: ProviderError("overloaded", provider="x", retryable=True, upstream_status=503), True),
        (lambda: ProviderError("bad input", provider="x", retryable=False, upstream_status=400), False),
        (lambda: NotAvailableError("no key"), False),
    ],
)
def test_ingestion_errors_are_transient_or_permanent(make, transient):
    assert is_transient(make()) is transient


def test_aws_errors_are_transient_when_throttled_or_5xx():
    def client_error(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    assert is_transient(client_error("SlowDown", 503)) and is_transient(client_error("InternalError", 500))
    assert not is_transient(client_error("AccessDenied", 403))
    assert is_transient(EndpointConnectionError(endpoint_url="https://s3.amazonaws.com"))


def test_the_api_loads_without_numpy():
    """Embedding and vector maths import numpy when first used: an API cold start that never embeds skips it."""
    code = "import sys, airies.api.app\nprint('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
