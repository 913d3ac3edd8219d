"""Offline, deterministic feature-hashing embedder (lexical only).

Words, word bigrams and character 3-5-grams of each word are hashed (blake2b, seeded) into a fixed
number of buckets with a sign bit, weighted by sublinear term frequency, then L2-normalised. Two texts
are close when they share words and word pieces, so it finds the chunk that *mentions* what is asked,
not one that means the same in other words: it is labelled ``lexical_only``. No model, no network,
sub-millisecond per chunk; the default for local runs and tests.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections import Counter
from typing import TYPE_CHECKING

from airies.knowledge.embedders.base import EmbeddingResult, approx_tokens, normalise_rows

if TYPE_CHECKING:
    import numpy as np

MODELS = {"hashing-v1": (4096, True)}  # any dimension up to 4096

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# Very common English words carry little signal for retrieval; they are down-weighted, not dropped.
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "has",
        "have",
        "how",
        "i",
        "if",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "our",
        "so",
        "than",
        "that",
        "the",
        "their",
        "there",
        "these",
        "this",
        "to",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
    ]
)


class HashingEmbedder:
    provider = "hashing"
    lexical_only = True
    max_batch = 2048

    def __init__(self, dimensions: int = 512, model: str = "hashing-v1") -> None:
        self.dimensions = dimensions
        self.model = model
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _features(self, token: str) -> tuple[np.ndarray, np.ndarray]:
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        import numpy as np  # lazy, as in base.normalise_rows: numpy stays off cold starts that never embed

        pieces: list[tuple[str, float]] = [("w:" + token, 1.0)]
        if len(token) > 3 and not token.isdigit() and "_" not in token:
            padded = f"<{token}>"
            grams = [padded[i : i + n] for n in (3, 4, 5) for i in range(len(padded) - n + 1)]
            weight = 0.6 / math.sqrt(len(grams))
            pieces.extend(("c:" + g, weight) for g in grams)
        indexes = np.empty(len(pieces), dtype=np.int64)
        values = np.empty(len(pieces), dtype=np.float64)
        for i, (piece, weight) in enumerate(pieces):
            value = int.from_bytes(
                hashlib.blake2b(piece.encode(), digest_size=8, person=b"airies-kb").digest(), "little"
            )
            indexes[i] = (value >> 1) % self.dimensions
            values[i] = weight if value & 1 else -weight
        if len(self._cache) < 200_000:
            self._cache[token] = (indexes, values)
        return indexes, values

    def _vector(self, text: str) -> np.ndarray:
        import numpy as np  # lazy, as in base.normalise_rows: numpy stays off cold starts that never embed

        words = _WORD.findall(text.lower())
        counts = Counter(words)
        counts.update(f"{a}_{b}" for a, b in itertools.pairwise(words) if a not in _STOPWORDS or b not in _STOPWORDS)
        if not counts:
            return np.zeros(self.dimensions)
        all_indexes, all_values = [], []
        for token, count in counts.items():
            weight = 1.0 + math.log(count)
            if token in _STOPWORDS:
                weight *= 0.15
            indexes, values = self._features(token)
            all_indexes.append(indexes)
            all_values.append(values * weight)
        return np.bincount(np.concatenate(all_indexes), np.concatenate(all_values), minlength=self.dimensions)

    def embed(self, texts: list[str]) -> EmbeddingResult:
        import numpy as np  # lazy, as in base.normalise_rows: numpy stays off cold starts that never embed

        matrix = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            matrix[row] = self._vector(text)
        return EmbeddingResult(vectors=normalise_rows(matrix), tokens=sum(approx_tokens(t) for t in texts), requests=0)
