"""OpenAI embeddings through the official SDK: many chunks per request, SDK retries with backoff.

Vectors are requested as base64 float32 (a third of the JSON size) and the raw body is decoded straight into
numpy (the SDK's parsed model would build Python float lists first); ``base_url`` points the SDK at any
OpenAI-compatible endpoint (the wire-level test double included).
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

from airies.core.errors import ProviderError
from airies.knowledge.embedders.base import EmbeddingResult, approx_tokens, normalise_rows

if TYPE_CHECKING:
    import numpy as np

# model -> its native (largest) dimension, and whether a smaller ``dimensions`` may be asked for.
MODELS = {
    "text-embedding-3-small": (1536, True),
    "text-embedding-3-large": (3072, True),
    "text-embedding-ada-002": (1536, False),
}
MODEL_DIMENSIONS = {model: largest for model, (largest, _) in MODELS.items()}
# OpenAI: at most 2048 inputs and 300k tokens per request; stay well inside both.
MAX_INPUTS_PER_REQUEST = 256
MAX_TOKENS_PER_REQUEST = 200_000


def _decode(embedding: str | list[float]) -> np.ndarray:
    import numpy as np  # lazy, as in base.normalise_rows: numpy stays off cold starts that never embed

    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding, dtype=np.float32)  # a server that ignored encoding_format


class OpenAIEmbedder:
    provider = "openai"
    lexical_only = False
    max_batch = MAX_INPUTS_PER_REQUEST

    def __init__(
        self,
        *,
        api_key: str,
        model: str = "text-embedding-3-small",
        dimensions: int | None = None,
        base_url: str | None = None,
        max_retries: int = 3,
        timeout: float = 30.0,
        client: Any = None,
    ) -> None:
        self.model = model
        self.dimensions = dimensions or MODEL_DIMENSIONS.get(model, 1536)
        # Only send ``dimensions`` when it differs from the model's native size (ada-002 rejects it).
        self._send_dimensions = dimensions is not None and dimensions != MODEL_DIMENSIONS.get(model)
        if client is None:
            from openai import OpenAI  # lazy: heavy import

            client = OpenAI(api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout)
        self._client = client

    def _batches(self, texts: list[str]) -> list[list[str]]:
        batches: list[list[str]] = []
        current: list[str] = []
        tokens = 0
        for text in texts:
            cost = approx_tokens(text)
            if current and (len(current) >= self.max_batch or tokens + cost > MAX_TOKENS_PER_REQUEST):
                batches.append(current)
                current, tokens = [], 0
            current.append(text)
            tokens += cost
        if current:
            batches.append(current)
        return batches

    def embed(self, texts: list[str]) -> EmbeddingResult:
        import numpy as np  # lazy, as in base.normalise_rows: numpy stays off cold starts that never embed
        import openai

        rows: list[np.ndarray] = []
        tokens = 0
        requests = 0
        for batch in self._batches([t if t.strip() else " " for t in texts]):
            kwargs: dict[str, Any] = {"model": self.model, "input": batch, "encoding_format": "base64"}
            if self._send_dimensions:
                kwargs["dimensions"] = self.dimensions
            try:
                # The raw body: base64 float32 decodes straight into numpy; the parsed model would turn every
                # vector into a list of Python floats first (~1 ms per 1536-dim vector).
                raw = self._client.embeddings.with_raw_response.create(**kwargs)
                payload = json.loads(raw.content)
            except openai.APIStatusError as exc:
                raise ProviderError(
                    f"OpenAI embeddings failed: {exc.message}",
                    provider="openai",
                    retryable=exc.status_code in (408, 409, 429) or exc.status_code >= 500,
                    upstream_status=exc.status_code,
                ) from exc
            except openai.APIConnectionError as exc:
                raise ProviderError(f"OpenAI embeddings unreachable: {exc}", provider="openai", retryable=True) from exc
            except (ValueError, KeyError) as exc:
                raise ProviderError(f"OpenAI embeddings: unreadable response: {exc}", provider="openai") from exc
            requests += 1
            ordered = sorted(payload.get("data") or [], key=lambda item: item["index"])
            if len(ordered) != len(batch):
                raise ProviderError(
                    f"OpenAI returned {len(ordered)} embeddings for {len(batch)} inputs", provider="openai"
                )
            matrix = np.vstack([_decode(item["embedding"]) for item in ordered])
            if matrix.shape[1] != self.dimensions:
                raise ProviderError(
                    f"OpenAI returned {matrix.shape[1]}-dim vectors, expected {self.dimensions}", provider="openai"
                )
            rows.append(matrix)
            usage = payload.get("usage") or {}
            tokens += int(usage.get("total_tokens") or usage.get("prompt_tokens") or 0)
        vectors = np.vstack(rows) if rows else np.zeros((0, self.dimensions), dtype=np.float32)
        return EmbeddingResult(vectors=normalise_rows(vectors), tokens=tokens, requests=requests)
