"""Embedders behind one interface (``base.Embedder``); ``build_embedder`` picks one by provider name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airies.errors import NotAvailableError

if TYPE_CHECKING:
    from airies.config import Settings
    from airies.providers.embeddings.base import Embedder


def build_embedder(provider: str, model: str, dimensions: int, settings: Settings) -> Embedder:
    if provider == "hashing":
        from airies.providers.embeddings.hashing import HashingEmbedder

        return HashingEmbedder(dimensions=dimensions, model=model)
    if provider == "openai":
        from airies.providers.embeddings.openai import OpenAIEmbedder
        from airies.services.secrets import get_platform_secret

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
        from airies.providers.embeddings.minilm import MiniLMEmbedder

        return MiniLMEmbedder()
    raise NotAvailableError(f"unknown embeddings provider '{provider}'")
