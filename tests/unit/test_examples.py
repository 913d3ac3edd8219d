"""The sample files of the README's tour: small, readable, and the PDF is exactly what its committed script writes."""

from __future__ import annotations

import wave

from airies.core.config import PROJECT_ROOT
from airies.knowledge.extraction import extract_text_from_markdown, extract_text_from_pdf
from examples.make_pdf import HANDBOOK_PAGES, PDF_PATH
from tests.kb_support import make_pdf

EXAMPLES = PROJECT_ROOT / "examples"


def test_the_committed_pdf_is_what_make_pdf_writes() -> None:
    assert PDF_PATH.read_bytes() == make_pdf(HANDBOOK_PAGES), "rerun: .venv/bin/python -m examples.make_pdf"


def test_the_pdf_has_one_page_per_topic_with_the_opening_hours_on_page_two() -> None:
    document = extract_text_from_pdf(PDF_PATH.read_bytes())
    assert document.page_count == len(HANDBOOK_PAGES) == 4
    assert "We are open Monday to Friday" in document.pages[1]


def test_the_markdown_page_reads_as_text() -> None:
    text = extract_text_from_markdown((EXAMPLES / "faq.md").read_text())
    assert "12 Harbour Street" in text and "**" not in text and "#" not in text


def test_the_spoken_question_is_16_khz_mono_speech() -> None:
    with wave.open(str(EXAMPLES / "question.wav")) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
        assert 0.5 < wav.getnframes() / wav.getframerate() < 5


def test_the_sample_files_stay_small() -> None:
    sizes = {path.name: path.stat().st_size for path in EXAMPLES.iterdir() if path.is_file()}
    assert set(sizes) >= {"question.wav", "clinic-handbook.pdf", "faq.md", "make_pdf.py"}
    assert max(sizes.values()) < 64 * 1024, sizes
