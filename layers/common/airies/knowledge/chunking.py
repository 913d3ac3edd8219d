"""Token-sized chunks with overlap, cut at paragraph boundaries, then sentences, then words.

Sizes are in tokens as estimated by ``approx_tokens`` (≈ cl100k for English; no tokenizer download is
needed offline). A chunk keeps the page its first sentence came from, so answers can cite pages.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from airies.knowledge.embedders.base import approx_tokens

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
# A sentence ends at . ! ? (optionally closed by a quote or bracket) followed by whitespace. Single newlines
# are not boundaries: PDF text wraps lines mid-sentence.
_SENTENCE_SPLIT = re.compile(r"([.!?…][\"')\]]?)\s+")  # keeps the end mark (group) with its sentence


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    token_count: int
    page: int | None  # 1-based; None for formats without pages


@dataclass(frozen=True)
class _Unit:
    text: str
    tokens: int
    page: int | None
    starts_paragraph: bool


def _sentences(paragraph: str) -> list[str]:
    parts = _SENTENCE_SPLIT.split(paragraph)
    sentences = [parts[i] + parts[i + 1] for i in range(0, len(parts) - 1, 2)]
    sentences.append(parts[-1])
    return [sentence.replace("\n", " ") for sentence in sentences if sentence]


def _split_words(sentence: str, max_tokens: int) -> list[str]:
    words = sentence.split()
    per_piece = max(1, int(max_tokens / 1.3))
    return [" ".join(words[i : i + per_piece]) for i in range(0, len(words), per_piece)]


def _units(pages: Iterable[str], max_tokens: int, paged: bool) -> Iterator[_Unit]:
    for page_number, page in enumerate(pages, start=1):
        page_ref = page_number if paged else None
        for raw in _PARAGRAPH_BREAK.split(page):
            paragraph = raw.strip()
            if not paragraph:
                continue
            tokens = approx_tokens(paragraph)
            if tokens <= max_tokens:
                yield _Unit(paragraph, tokens, page_ref, True)
                continue
            first = True
            for sentence in _sentences(paragraph):
                sentence_tokens = approx_tokens(sentence)
                if sentence_tokens <= max_tokens:
                    yield _Unit(sentence, sentence_tokens, page_ref, first)
                    first = False
                    continue
                for piece in _split_words(sentence, max_tokens):
                    yield _Unit(piece, approx_tokens(piece), page_ref, first)
                    first = False


def _join(units: list[_Unit]) -> str:
    out: list[str] = []
    for i, unit in enumerate(units):
        if i:
            out.append("\n\n" if unit.starts_paragraph else " ")
        out.append(unit.text)
    return "".join(out)


def _tail(unit: _Unit, budget: int, *, words: bool) -> _Unit | None:
    """The end of ``unit`` within ``budget`` tokens: its last whole sentences, else (``words``: a last sentence more
    than twice the budget) its last words. None when nothing fits."""
    if budget <= 0:
        return None
    sentences = _sentences(unit.text)
    taken: list[str] = []
    tokens = 0
    for sentence in reversed(sentences):
        cost = approx_tokens(sentence)
        if tokens + cost > budget:
            break
        taken.insert(0, sentence)
        tokens += cost
    # Last resort, for a "sentence" far longer than the overlap (lists, tables, unpunctuated PDF text): its trailing
    # words. A sentence only a little longer is not cut into a fragment (that costs retrieval more than it gives).
    if not taken and sentences and words and approx_tokens(sentences[-1]) > 2 * budget:
        tail_words = sentences[-1].split()
        count = 0
        while count < len(tail_words) and approx_tokens(" ".join(tail_words[-(count + 1) :])) <= budget:
            count += 1
        if count:
            taken = [" ".join(tail_words[-count:])]
    if not taken:
        return None
    text = " ".join(taken)
    return _Unit(text, approx_tokens(text), unit.page, True)


def _overlap(units: list[_Unit], budget: int) -> list[_Unit]:
    """The trailing units of a chunk worth at most ``budget`` tokens. Whole units first; the unit that does not fit
    whole gives its last sentences (or words), so consecutive chunks share about ``budget`` tokens even when every
    unit is a paragraph larger than the overlap."""
    carried: list[_Unit] = []
    tokens = 0
    for previous in reversed(units):
        if tokens + previous.tokens <= budget:
            carried.insert(0, previous)
            tokens += previous.tokens
            continue
        # Words only when nothing else would overlap: a chunk rather starts at a sentence than mid-way.
        part = _tail(previous, budget - tokens, words=not carried)
        if part is not None:
            carried.insert(0, part)
        break
    return carried


def chunk_text(text: str | list[str], chunk_tokens: int = 300, overlap_tokens: int = 40) -> list[Chunk]:
    """Chunks of a text, or of a list of page texts (then every chunk carries its 1-based page, a single page too), of
    at most ``chunk_tokens`` (one oversize word aside); each after the first repeats about ``overlap_tokens`` of the
    previous chunk's end (trailing sentences, or words when a sentence is longer) so a fact cut at a boundary is
    whole in one."""
    paged = not isinstance(text, str)  # a list is pages (one page included): chunks cite them
    return list(iter_chunks([text] if isinstance(text, str) else text, chunk_tokens, overlap_tokens, paged=paged))


def iter_chunks(
    pages: Iterable[str], chunk_tokens: int = 300, overlap_tokens: int = 40, *, paged: bool = True
) -> Iterator[Chunk]:
    """``chunk_text`` as a stream: each chunk is yielded as soon as it is complete, so the ingestion pipeline can
    embed the first chunks while later pages are still being extracted."""
    if chunk_tokens < 16:
        raise ValueError("chunk_tokens must be at least 16")
    overlap_tokens = max(0, min(overlap_tokens, chunk_tokens // 2))
    count = 0
    current: list[_Unit] = []
    current_tokens = 0
    fresh = 0  # units in ``current`` not carried over from the previous chunk

    for unit in _units(pages, chunk_tokens, paged):
        if current and current_tokens + unit.tokens > chunk_tokens and fresh:
            yield Chunk(count, _join(current), current_tokens, current[0].page)
            count += 1
            # The overlap never pushes the next chunk over its size: it shrinks to what the new unit leaves.
            carried = _overlap(current, min(overlap_tokens, chunk_tokens - unit.tokens))
            current, current_tokens, fresh = carried, sum(u.tokens for u in carried), 0
        current.append(unit)
        current_tokens += unit.tokens
        fresh += 1
    if current and fresh:
        yield Chunk(count, _join(current), current_tokens, current[0].page)
