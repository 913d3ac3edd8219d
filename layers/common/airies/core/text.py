"""Text rules shared by calls, agent tests and speech: phrase matching and sentence splitting.

Phrase matching (end-call phrases, interruption phrases) compares whole words, ignoring case and punctuation:
"Goodbye." says "goodbye", "goodbyes" does not. The underscore counts as punctuation, not as part of a word:
model replies use it for emphasis (``_goodbye_``) and a caller never speaks one, so "all_done" says "all done".
Letters of any script are words (a phrase may be "adiós"); the typographic apostrophe is the ASCII one, so
"I’m done" says "I'm done".

Sentence splitting: ``SentenceSegmenter`` cuts a token stream into speakable sentences as early as it safely can
(a call speaks the first sentence while the model is still writing); ``split_sentences`` is the same rule on a
whole text.
"""

from __future__ import annotations

import re

_NOT_WORD = re.compile(r"[^\w']|_")


def normalise_words(text: str) -> str:
    """Lower-case words separated by single spaces: punctuation, underscores and whitespace runs are one space."""
    return " ".join(_NOT_WORD.sub(" ", text.lower().replace("\u2019", "'")).split())


def contains_phrase(text: str, phrases: list[str] | tuple[str, ...]) -> str | None:
    """The first of ``phrases`` said in ``text`` as whole words (see the module docstring), else None."""
    hay = f" {normalise_words(text)} "
    for phrase in phrases:
        needle = normalise_words(phrase)
        if needle and f" {needle} " in hay:
            return phrase
    return None


_ABBREVIATIONS = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "inc",
        "ltd",
        "co",
        "no",
        "approx",
        "dept",
        "est",
        "min",
        "max",
        "ave",
        "blvd",
        "rd",
        "u.s",
        "a.m",
        "p.m",
    }
)
_BOUNDARY = re.compile(r"[.!?…]+[\"')\]]*(?=\s)|[;:](?=\s)|\n+")
_COMMA = re.compile(r",(?=\s)")
_LAST_WORD = re.compile(r"([A-Za-z.]+)$")


class SentenceSegmenter:
    """Cuts a token stream into speakable sentences as early as it safely can.

    Ends a sentence at . ! ? … ; : or a newline followed by whitespace, but not after an abbreviation
    ("Dr. Smith"), a decimal ("3.5") or an initial ("J. R."). The first segment may also end at a comma once
    it has ``first_comma_words`` words, because the first audio is what the caller waits for; any segment
    is cut at a comma once it exceeds ``max_chars`` so TTS never waits on a run-on sentence.
    """

    def __init__(self, *, first_comma_words: int = 6, max_chars: int = 220) -> None:
        self.buffer = ""
        self.first_comma_words = first_comma_words
        self.max_chars = max_chars
        self.emitted = 0

    def push(self, text: str) -> list[str]:
        self.buffer += text
        out: list[str] = []
        while True:
            cut = self._find_cut()
            if cut is None:
                break
            sentence, self.buffer = self.buffer[:cut].strip(), self.buffer[cut:].lstrip()
            if sentence:
                out.append(sentence)
                self.emitted += 1
        return out

    def flush(self) -> list[str]:
        rest, self.buffer = self.buffer.strip(), ""
        if rest:
            self.emitted += 1
            return [rest]
        return []

    def _find_cut(self) -> int | None:
        for match in _BOUNDARY.finditer(self.buffer):
            if match.group().startswith(".") and self._is_abbreviation(match.start()):
                continue
            return match.end()
        limit_words = self.first_comma_words if self.emitted == 0 else None
        for match in _COMMA.finditer(self.buffer):
            head = self.buffer[: match.end()]
            if (limit_words and len(head.split()) >= limit_words) or len(head) >= self.max_chars:
                return match.end()
        return None

    def _is_abbreviation(self, dot: int) -> bool:
        word = _LAST_WORD.search(self.buffer[:dot])
        if not word:
            return False
        token = word.group(1).lower().rstrip(".")
        if token in _ABBREVIATIONS:
            return True
        return len(token) == 1 and token.isalpha() and self.buffer[dot - 1].isupper()  # an initial: "J."


def split_sentences(text: str) -> list[str]:
    """The sentences of a whole text, by the ``SentenceSegmenter`` rule (no early cut at a comma)."""
    segmenter = SentenceSegmenter(first_comma_words=0)
    return segmenter.push(text) + segmenter.flush()
