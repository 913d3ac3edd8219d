"""Vector stores behind one interface (``base.VectorStore``), in one table: ``VECTOR_STORES`` (store name -> how to
build it). To add a vector store: one module in this folder and one line in ``VECTOR_STORES``."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from sqlalchemy.orm import Session

from airies.core.config import Settings
from airies.core.database import Database, database_ssl_context
from airies.core.errors import NotAvailableError
from airies.core.secrets import get_platform_secret
from airies.core.url_guard import as_url, url_guard
from airies.knowledge.vector_stores.base import VectorStore
from airies.knowledge.vector_stores.embedded import EmbeddedVectorStore
from airies.knowledge.vector_stores.pgvector import PgVectorStore
from airies.knowledge.vector_stores.pinecone import PineconeVectorStore


@dataclass(frozen=True)
class StoreWiring:
    """What a store is built from: the platform's settings and database, the caller's unit of work, and the
    account's own key for the store's vendor (``PUT /provider-keys/{vendor}``), when it stored one."""

    settings: Settings
    database: Database
    unit_of_work: Callable[[], AbstractContextManager[Session]]
    account_key: Callable[[str], tuple[str, dict[str, str]] | None]  # vendor -> (key, options) or None


@dataclass(frozen=True)
class StoreKind:
    build: Callable[[StoreWiring], VectorStore]
    # Built stores with the same key are shared by every bound copy of the knowledge service (SDK clients,
    # connection pools); ``None``: one per bound copy, because the store writes through its unit of work.
    reuse_key: Callable[[StoreWiring], str] | None


def _embedded(wiring: StoreWiring) -> VectorStore:
    return EmbeddedVectorStore(wiring.unit_of_work, cache_key=wiring.database.url)


def _pgvector(wiring: StoreWiring) -> VectorStore:
    url = wiring.settings.kb_pgvector_database_url
    # A separate pgvector database gets the same TLS as the platform's (on by default outside the local stage).
    return PgVectorStore(Database(url, ssl_context=database_ssl_context(wiring.settings)) if url else wiring.database)


def pinecone_credentials(wiring: StoreWiring) -> tuple[str, str]:
    """(api key, index host): the account's own key (and index host, when stored with it) first, then the
    platform key like every other platform key (settings/env locally, the provider-keys secret on AWS)."""
    settings = wiring.settings
    host = settings.pinecone_index_host
    own = wiring.account_key("pinecone")
    if own is not None:
        key, options = own
        own_host = options.get("index_host") or host
        if not own_host:
            raise NotAvailableError("Pinecone needs an index host (AIRIES_PINECONE_INDEX_HOST)")
        if options.get("index_host"):  # the account's own host: checked again before every use
            url_guard(settings).check(as_url(own_host), field="index_host")
        return key, own_host
    platform_key = settings.pinecone_api_key or get_platform_secret("pinecone_api_key", settings)
    if not (platform_key and host):
        raise NotAvailableError(
            "Pinecone needs an API key (the account's own, AIRIES_PINECONE_API_KEY or the platform's "
            "provider-keys secret) and AIRIES_PINECONE_INDEX_HOST"
        )
    return platform_key, host


def _pinecone(wiring: StoreWiring) -> VectorStore:
    api_key, host = pinecone_credentials(wiring)
    return PineconeVectorStore(api_key=api_key, index_host=host)


def _pinecone_key(wiring: StoreWiring) -> str:
    api_key, host = pinecone_credentials(wiring)
    return "pinecone:" + hashlib.sha256(f"{api_key}\n{host}".encode()).hexdigest()[:32]


VECTOR_STORES: dict[str, StoreKind] = {
    "embedded": StoreKind(_embedded, reuse_key=None),
    "pgvector": StoreKind(_pgvector, reuse_key=lambda wiring: "pgvector"),
    "pinecone": StoreKind(_pinecone, reuse_key=_pinecone_key),
}
