"""The embeddings interface: texts in, one L2-normalised float32 row per text out.

Every embedder (offline hashing, OpenAI, MiniLM) implements ``Embedder``; the knowledge service only
ever sees this interface. ``provider``/``model``/``dimensions`` are recorded on each knowledge base so a
query is always embedded by the same model its chunks were.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: np.ndarray  # shape (len(texts), dimensions), float32, rows L2-normalised
    tokens: int  # tokens billed by the provider (estimated for offline embedders)
    requests: int = 1  # HTTP requests made (0 for in-process embedders)


class Embedder(Protocol):
    provider: str
    model: str
    dimensions: int
    max_batch: int  # texts per request/call
    lexical_only: bool  # True when similarity is word overlap, not meaning

    def embed(self, texts: list[str]) -> EmbeddingResult:
        """Embed texts in order; batching within ``max_batch`` is the embedder's job."""
        ...


def normalise_rows(matrix: np.ndarray) -> np.ndarray:
    import numpy as np

    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (matrix / norms).astype(np.float32, copy=False)


def approx_tokens(text: str) -> int:
    """A tokenizer-free estimate close to cl100k for English (≈ 0.75 words per token); ``str.split`` keeps it
    cheap enough to call on every sentence of a 200-page document."""
    words = len(text.split())
    return max(1, round(words * 1.3)) if words else 0
