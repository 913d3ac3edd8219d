"""Writes ``examples/clinic-handbook.pdf``, the PDF of the README's tour, from the text below.

Run from the repository root: ``.venv/bin/python -m examples.make_pdf``. The writer is the small hand-written one the
knowledge-base tests use (``tests/kb_support.py``): a plain text PDF without timestamps, so the same text always gives
the same bytes (``tests/unit/test_examples.py`` checks that the committed file is what this script writes).
"""

from __future__ import annotations

from pathlib import Path

from tests.kb_support import make_pdf

PDF_PATH = Path(__file__).with_name("clinic-handbook.pdf")

# One page per topic, so each page is one passage of the knowledge base (chunks of a PDF carry their page).
HANDBOOK_PAGES = [
    "Acme Dental patient handbook\nWelcome to Acme Dental. This handbook answers the questions patients ask most.",
    "Opening hours\nWe are open Monday to Friday, 8 am to 6 pm, and Saturday, 9 am to 1 pm.",
    "Appointments\nBook by phone or on our website. Please cancel at least 24 hours ahead: a missed appointment "
    "costs 25 dollars.",
    "Emergencies\nOutside our opening hours, call the emergency dentist line on 555 0100.",
]


def main() -> None:
    PDF_PATH.write_bytes(make_pdf(HANDBOOK_PAGES))
    print(f"wrote {PDF_PATH} ({PDF_PATH.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
