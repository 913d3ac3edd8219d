"""Embedders behind one interface (``base.Embedder``); ``build_embedder`` picks one by provider name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airies.core.errors import NotAvailableError, ValidationFailedError

if TYPE_CHECKING:
    from airies.core.config import Settings
    from airies.knowledge.embedders.base import Embedder


# provider -> model -> the largest dimension it can produce, and whether a smaller one may be asked for.
KNOWN_MODELS: dict[str, dict[str, tuple[int, bool]]] = {
    "hashing": {"hashing-v1": (4096, True)},
    "openai": {
        "text-embedding-3-small": (1536, True),
        "text-embedding-3-large": (3072, True),
        "text-embedding-ada-002": (1536, False),
    },
    "minilm": {"all-MiniLM-L6-v2": (384, False)},
}


def check_model(provider: str, model: str, dimensions: int) -> None:
    """422 for a model its provider does not have, or a dimension the model cannot produce."""
    models = KNOWN_MODELS.get(provider)
    if models is None:
        raise NotAvailableError(f"unknown embeddings provider '{provider}'")
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
    if provider == "hashing":
        from airies.knowledge.embedders.hashing import HashingEmbedder

        return HashingEmbedder(dimensions=dimensions, model=model)
    if provider == "openai":
        from airies.core.secrets import get_platform_secret
        from airies.knowledge.embedders.openai import OpenAIEmbedder

        key = settings.openai_api_key or get_platform_secret("openai_api_key", settings)
        if not key:
            raise NotAvailableError("OpenAI embeddings need AIRIES_OPENAI_API_KEY (or the platform secret)")
        return OpenAIEmbedder(
            api_key=key,
            model=model,
            dimensions=dimensions,
            base_url=settings.kb_embeddings_base_url or settings.openai_base_url,
            max_retries=settings.kb_embeddings_max_retries,
        )
    if provider == "minilm":
        from airies.knowledge.embedders.minilm import MiniLMEmbedder

        return MiniLMEmbedder()
    raise NotAvailableError(f"unknown embeddings provider '{provider}'")
