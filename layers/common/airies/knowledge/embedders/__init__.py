"""Embedders behind one interface (``base.Embedder``), in one table: ``EMBEDDERS`` (provider name -> how to build it
and the models it has). To add an embedder: one module in this folder and one line in ``EMBEDDERS``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from airies.core.config import Settings
from airies.core.errors import NotAvailableError, ValidationFailedError
from airies.core.secrets import get_platform_secret
from airies.knowledge.embedders import hashing, minilm, openai
from airies.knowledge.embedders.base import Embedder


@dataclass(frozen=True)
class EmbedderKind:
    build: Callable[[str, int, Settings], Embedder]  # (model, dimensions, settings) -> the embedder
    # model -> the largest dimension it can produce, and whether a smaller one may be asked for
    models: dict[str, tuple[int, bool]]
    default_model: str
    default_dimensions: int


def _hashing(model: str, dimensions: int, settings: Settings) -> Embedder:
    return hashing.HashingEmbedder(dimensions=dimensions, model=model)


def _openai(model: str, dimensions: int, settings: Settings) -> Embedder:
    key = settings.openai_api_key or get_platform_secret("openai_api_key", settings)
    if not key:
        raise NotAvailableError("OpenAI embeddings need AIRIES_OPENAI_API_KEY (or the platform secret)")
    return openai.OpenAIEmbedder(
        api_key=key,
        model=model,
        dimensions=dimensions,
        base_url=settings.kb_embeddings_base_url or settings.openai_base_url,
        max_retries=settings.kb_embeddings_max_retries,
    )


def _minilm(model: str, dimensions: int, settings: Settings) -> Embedder:
    return minilm.MiniLMEmbedder()


EMBEDDERS: dict[str, EmbedderKind] = {
    "hashing": EmbedderKind(_hashing, hashing.MODELS, "hashing-v1", 512),
    "openai": EmbedderKind(_openai, openai.MODELS, "text-embedding-3-small", 1536),
    "minilm": EmbedderKind(_minilm, minilm.MODELS, "all-MiniLM-L6-v2", 384),
}


def check_model(provider: str, model: str, dimensions: int) -> None:
    """422 for a model its provider does not have, or a dimension the model cannot produce."""
    kind = EMBEDDERS.get(provider)
    if kind is None:
        raise NotAvailableError(f"unknown embeddings provider '{provider}'")
    models = kind.models
    if model not in models:
        raise ValidationFailedError(
            f"'{model}' is not a {provider} embedding model",
            details=[
                {
                    "field": "embedding_model",
                    "code": "unknown_model",
                    "message": f"{provider} models: {', '.join(sorted(models))}",
                }
            ],
        )
    largest, shortenable = models[model]
    if dimensions > largest or (not shortenable and dimensions != largest) or dimensions < 8:
        allowed = f"8-{largest}" if shortenable else str(largest)
        raise ValidationFailedError(
            f"{model} cannot produce {dimensions}-dimensional vectors",
            details=[
                {"field": "embedding_dimensions", "code": "unsupported_dimensions", "message": f"allowed: {allowed}"}
            ],
        )


def build_embedder(provider: str, model: str, dimensions: int, settings: Settings) -> Embedder:
    kind = EMBEDDERS.get(provider)
    if kind is None:
        raise NotAvailableError(f"unknown embeddings provider '{provider}'")
    return kind.build(model, dimensions, settings)
