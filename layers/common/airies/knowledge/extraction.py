"""Text out of customer documents: PDF (pypdf), DOCX (python-docx), HTML (BeautifulSoup), Markdown, plain text.

Every extractor ends in ``normalise_text``: whatever the format, the text that is chunked, stored and put in prompts
has no control characters (but newlines), no lone surrogates and tidy whitespace.

Bad input never raises anything but ``DocumentRejected`` with a stable ``code`` and a reason a customer can
act on (encrypted PDF, corrupt file, no extractable text, zip bomb, wrong type, too large), so the pipeline
marks that one document failed and moves on.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
HTML = "text/html"
MARKDOWN = "text/markdown"
TEXT = "text/plain"

SUPPORTED_TYPES = {PDF: "pdf", DOCX: "docx", HTML: "html", MARKDOWN: "markdown", TEXT: "text"}
_ALIASES = {
    "application/x-pdf": PDF,
    "text/x-markdown": MARKDOWN,
    "application/xhtml+xml": HTML,
    "text/md": MARKDOWN,
}
_EXTENSIONS = {
    ".pdf": PDF,
    ".docx": DOCX,
    ".html": HTML,
    ".htm": HTML,
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".txt": TEXT,
    ".text": TEXT,
    ".csv": TEXT,
}
MAX_TEXT_CHARS = 20_000_000  # a decompression bomb inside a PDF stops here


class DocumentRejected(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class ExtractedDocument:
    pages: list[str]  # one entry per PDF page; one entry for other formats
    title: str | None = None
    links: list[str] = field(default_factory=list)  # HTML only: hrefs, for the crawler

    @property
    def page_count(self) -> int:
        return len(self.pages)

    @property
    def text(self) -> str:
        return "\n\n".join(self.pages)


def normalise_content_type(content_type: str | None, filename: str | None = None) -> str:
    """The canonical MIME type; falls back to the file extension when the type is missing or generic."""
    base = (content_type or "").split(";", 1)[0].strip().lower()
    base = _ALIASES.get(base, base)
    if base in SUPPORTED_TYPES:
        return base
    if base in ("", "application/octet-stream", "binary/octet-stream") and filename:
        suffix = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
        if suffix in _EXTENSIONS:
            return _EXTENSIONS[suffix]
    return base or "application/octet-stream"


def check_content_type(content_type: str) -> None:
    if content_type not in SUPPORTED_TYPES:
        raise DocumentRejected(
            "unsupported_content_type",
            f"content type '{content_type}' is not supported; send one of: {', '.join(sorted(SUPPORTED_TYPES))}",
        )


def extract(
    data: bytes,
    content_type: str,
    *,
    max_pages: int = 2000,
    max_decompressed_bytes: int = 100 * 1024 * 1024,
) -> ExtractedDocument:
    check_content_type(content_type)
    if not data or not data.strip():
        raise DocumentRejected("empty_document", "the document is empty")
    kind = SUPPORTED_TYPES[content_type]
    if kind == "pdf":
        document = extract_text_from_pdf(data, max_pages=max_pages)
    elif kind == "docx":
        document = ExtractedDocument(
            pages=[extract_text_from_docx(data, max_decompressed_bytes=max_decompressed_bytes)]
        )
    elif kind == "html":
        document = extract_text_from_html(decode_text(data))
    elif kind == "markdown":
        document = ExtractedDocument(pages=[extract_text_from_markdown(decode_text(data))])
    else:
        document = ExtractedDocument(pages=[normalise_text(decode_text(data))])
    if not any(page.strip() for page in document.pages):
        raise no_text(content_type)
    return document


def no_text(content_type: str) -> DocumentRejected:
    """The rejection of a document without extractable text (the streamed pipeline finds it after chunking)."""
    if content_type == PDF:
        return DocumentRejected(
            "no_text", "the PDF has no extractable text (scanned pages need OCR, which is not supported)"
        )
    return DocumentRejected("no_text", "the document has no text")


def decode_text(data: bytes) -> str:
    if b"\x00" in data[:4096] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DocumentRejected("not_text", "the file is binary, not text")
    for encoding in ("utf-8-sig", "utf-16") if data.startswith((b"\xff\xfe", b"\xfe\xff")) else ("utf-8-sig",):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("cp1252", errors="replace")


_SPACES = re.compile(r"[ \t\f\v\u00a0]{2,}|[\t\f\v\u00a0]")  # runs and odd spaces only: single spaces stay
_BLANKS = re.compile(r"\n\s*\n\s*(?:\n\s*)*")
# Removed from extracted text: C0 and C1 control characters other than the whitespace ones (tab, newline, vertical
# tab, form feed, carriage return become spaces and newlines below), DEL, lone surrogates, the byte-order mark and the
# two noncharacters U+FFFE/U+FFFF. PostgreSQL refuses NUL, no UTF-8 encoder takes a lone surrogate, and the rest is
# noise in prompts. PDFs without a Unicode map yield them for glyphs (pypdf passes the raw codes through); dropping
# them keeps words whole ("H\x00e\x00l\x00p" from mis-decoded UTF-16 reads "Help").
_UNWANTED = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufeff\ufffe\uffff]")


def strip_control_characters(text: str) -> str:
    """``text`` without the characters no stored text may hold (see ``_UNWANTED``); whitespace is left as it is."""
    return _UNWANTED.sub("", text)


def normalise_text(text: str) -> str:
    """The one exit of every extractor: unwanted characters removed, line ends unified, runs of spaces and blank
    lines collapsed, lines stripped."""
    text = strip_control_characters(text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANKS.sub("\n\n", text).strip()


def check_signature(data: bytes, content_type: str) -> None:
    """Reject content that cannot be of ``content_type`` by its first bytes: a PDF starts with ``%PDF``, a DOCX is a
    zip archive. Cheap enough to run before anything is stored."""
    if content_type == PDF and not data.lstrip()[:5].startswith(b"%PDF"):
        raise DocumentRejected("corrupt_pdf", "the file is not a PDF (no %PDF header)")
    if content_type == DOCX and not data.startswith(b"PK\x03\x04"):
        raise DocumentRejected("corrupt_docx", "the file is not a DOCX (not a zip archive)")


def open_pdf(data: bytes, *, max_pages: int = 2000) -> Any:
    """A ``PdfReader`` whose page count is checked; encrypted, corrupt and empty PDFs are rejected here."""
    from pypdf import PasswordType, PdfReader

    check_signature(data, PDF)
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")  # owner-password-only PDFs open with an empty user password
            except Exception:
                opened = PasswordType.NOT_DECRYPTED
            if not opened:
                raise DocumentRejected("encrypted_pdf", "the PDF is password-protected; upload an unencrypted copy")
        count = len(reader.pages)
    except DocumentRejected:
        raise
    except Exception as exc:  # pypdf raises a wide range on malformed input; the document fails, the queue goes on
        raise DocumentRejected("corrupt_pdf", f"the PDF could not be read: {type(exc).__name__}: {exc}") from exc
    if count == 0:
        raise DocumentRejected("empty_document", "the PDF has no pages")
    if count > max_pages:
        raise DocumentRejected("too_many_pages", f"the PDF has {count} pages; the limit is {max_pages}")
    return reader


def iter_pdf_pages(reader: Any) -> Iterator[str]:
    """Page texts one by one (the pipeline chunks and embeds while later pages are still being extracted)."""
    total = 0
    for number, page in enumerate(reader.pages, start=1):
        try:
            text = normalise_text(page.extract_text() or "")
        except Exception as exc:
            raise DocumentRejected(
                "corrupt_pdf", f"page {number} of the PDF could not be read: {type(exc).__name__}: {exc}"
            ) from exc
        total += len(text)
        if total > MAX_TEXT_CHARS:
            raise DocumentRejected("too_large", f"the PDF expands to more than {MAX_TEXT_CHARS} characters of text")
        yield text


def extract_text_from_pdf(data: bytes, *, max_pages: int = 2000) -> ExtractedDocument:
    return ExtractedDocument(pages=list(iter_pdf_pages(open_pdf(data, max_pages=max_pages))))


def extract_text_from_docx(data: bytes, *, max_decompressed_bytes: int = 100 * 1024 * 1024) -> str:
    check_signature(data, DOCX)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DocumentRejected("corrupt_docx", f"the DOCX archive is damaged: {exc}") from exc
    # Declared sizes first (cheap), then the real decompressed size of the parts python-docx reads.
    declared = sum(info.file_size for info in infos)
    if declared > max_decompressed_bytes or len(infos) > 10_000:
        raise DocumentRejected(
            "zip_bomb", f"the DOCX expands to {declared} bytes; the limit is {max_decompressed_bytes}"
        )
    total = 0
    for info in infos:
        with archive.open(info) as member:
            while chunk := member.read(1 << 20):
                total += len(chunk)
                if total > max_decompressed_bytes:
                    raise DocumentRejected("zip_bomb", f"the DOCX expands to more than {max_decompressed_bytes} bytes")
    try:
        import docx

        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx raises KeyError/ValueError/lxml errors on damaged parts
        raise DocumentRejected("corrupt_docx", f"the DOCX could not be read: {type(exc).__name__}: {exc}") from exc
    blocks = [p.text for p in document.paragraphs if p.text.strip()]
    for table in document.tables:
        for row in table.rows:
            cells = [cell.text.strip() for cell in row.cells if cell.text.strip()]
            if cells:
                blocks.append(" | ".join(dict.fromkeys(cells)))  # merged cells repeat; keep one of each
    return normalise_text("\n\n".join(blocks))


_DROP_TAGS = (
    "title",
    "script",
    "style",
    "noscript",
    "template",
    "svg",
    "canvas",
    "iframe",
    "nav",
    "footer",
    "form",
    "aside",
)
_BLOCK_TAGS = (
    "p", "div", "section", "article", "main", "header", "li", "ul", "ol", "table", "tr", "br", "hr",
    "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "dd", "dt", "dl", "figure", "figcaption", "td", "th",
)  # fmt: skip


def extract_text_from_html(html: str) -> ExtractedDocument:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    title = strip_control_characters(soup.title.get_text(" ", strip=True)) if soup.title else None
    links = [str(a["href"]) for a in soup.find_all("a", href=True)]  # href is single-valued: always a str
    for tag in soup.find_all(_DROP_TAGS):
        tag.decompose()
    if soup.head:
        soup.head.decompose()
    for tag in soup.find_all(_BLOCK_TAGS):
        # Cells stay on their row's line; everything else block-level becomes its own paragraph.
        separator = " | " if tag.name in ("td", "th") else "\n\n"
        tag.insert_before(separator)
        if tag.name not in ("td", "th"):
            tag.insert_after(separator)
    text = normalise_text(soup.get_text())
    text = re.sub(r"(?m)^[ \t]*\|[ \t]*", "", text)
    return ExtractedDocument(pages=[text], title=title or None, links=links)


_MD_RULES = [
    (re.compile(r"```[^\n]*\n"), ""),  # code fence openers keep their code
    (re.compile(r"```"), ""),
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),  # images -> alt text
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),  # links -> text
    (re.compile(r"(?m)^[ \t]{0,3}#{1,6}[ \t]+"), ""),  # headings
    (re.compile(r"(?m)^[ \t]{0,3}>[ \t]?"), ""),  # quotes
    (re.compile(r"(?m)^[ \t]*(?:[-*+]|\d+[.)])[ \t]+"), ""),  # list markers
    (re.compile(r"(\*\*|__)(.+?)\1"), r"\2"),
    (re.compile(r"(?<!\w)([*_])(?!\s)(.+?)(?<!\s)\1(?!\w)"), r"\2"),
    (re.compile(r"`([^`]+)`"), r"\1"),
    (re.compile(r"(?m)^[ \t]*(?:-{3,}|\*{3,}|_{3,})[ \t]*$"), ""),  # rules
    (re.compile(r"<[^>]+>"), ""),
]


def extract_text_from_markdown(markdown: str) -> str:
    text = markdown
    for pattern, replacement in _MD_RULES:
        text = pattern.sub(replacement, text)
    return normalise_text(text)
