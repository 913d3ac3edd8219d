"""What every part of the knowledge capability works with: the database and its units of work, settings, object
storage, embedders and vector stores (built from the tables in ``embedders`` and ``vector_stores``, cached), the
usage publisher and the ingestion counters.

``KnowledgeService`` (``service.py``) is this context plus one method per operation; the operations themselves are
functions in ``bases``, ``documents``, ``ingestion``, ``retrieval``, ``reembedding`` and ``scraping`` that take it.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Self

from sqlalchemy.orm import Session

from airies.accounts.provider_keys import ProviderKeyService
from airies.billing.metering import UsagePublisher
from airies.billing.schemas import UsageEvent
from airies.billing.usage import build_usage_publisher
from airies.core.config import Settings
from airies.core.database import Database
from airies.core.errors import NotAvailableError
from airies.core.models import utcnow
from airies.core.observability import provider_span
from airies.core.storage import StorageService
from airies.knowledge.crawler import Fetcher
from airies.knowledge.embedders import build_embedder
from airies.knowledge.embedders.base import Embedder, EmbeddingResult
from airies.knowledge.vector_stores import VECTOR_STORES, StoreWiring
from airies.knowledge.vector_stores.base import VectorStore


@dataclass
class IngestionCounters:
    """What the pipeline did (benchmarks and tests read it)."""

    embed_requests: int = 0
    embed_calls: int = 0
    embedding_tokens: int = 0
    documents_processed: int = 0
    documents_skipped: int = 0
    documents_failed: int = 0


class KnowledgeContext:
    def __init__(
        self,
        database: Database,
        settings: Settings,
        *,
        storage: StorageService | None = None,
        embedder_factory: Callable[[str, str, int], Embedder] | None = None,
        store_factory: Callable[[str], VectorStore] | None = None,
        usage_publisher: UsagePublisher | None = None,
        sqs_client: Any = None,
        sfn_client: Any = None,
        fetcher: Fetcher | None = None,
        session: Session | None = None,
    ) -> None:
        self.database = database
        self.settings = settings
        self._storage = storage
        self._embedder_factory = embedder_factory
        self._store_factory = store_factory
        self._usage = usage_publisher
        self.sqs = sqs_client
        self.sfn = sfn_client
        self.fetcher = fetcher
        self._session = session
        self._embedders: dict[tuple[str, str, int], Embedder] = {}
        self._stores: dict[str, VectorStore] = {}
        self._shared_stores: dict[str, VectorStore] = {}
        self._local = threading.local()
        self.counters = IngestionCounters()

    def bind(self, session: Session | None) -> Self:
        """The same service working inside the caller's unit of work (API requests); ``None`` unbinds. The copy
        shares clients, embedders, shared stores and counters; the embedded store and the thread's session are its
        own (they write through its unit of work)."""
        bound = copy.copy(self)
        bound._session = session
        bound._stores = {}
        bound._local = threading.local()
        return bound

    def pipeline(self) -> Self:
        """The ingestion stages use their own short transactions: commit the caller's first, then run unbound
        (on SQLite a second writer would wait for the request's open transaction)."""
        if self._session is None:
            return self
        self._session.commit()
        return self.bind(None)

    @contextmanager
    def unit_of_work(self) -> Iterator[Session]:
        """The bound session, else the one already open on this thread (re-entrant), else a new unit of work."""
        if self._session is not None:
            yield self._session
            self._session.flush()
            return
        current = getattr(self._local, "session", None)
        if current is not None:
            yield current
            return
        with self.database.session() as session:
            self._local.session = session
            try:
                yield session
            finally:
                self._local.session = None

    def lease_cutoff(self) -> datetime:
        """Claims (of a document being ingested, of a knowledge base being re-embedded) older than this are stale:
        the run that took them crashed, and a new one may take over."""
        return utcnow() - timedelta(seconds=self.settings.kb_processing_lease_s)

    # -- vendors ----------------------------------------------------------------------------------------------
    @property
    def storage(self) -> StorageService:
        if self._storage is None:
            self._storage = StorageService(
                self.settings.kb_documents_bucket or self.settings.storage_bucket,
                region=self.settings.aws_region,
                endpoint_url=self.settings.aws_endpoint_url,
            )
        return self._storage

    def embedder(self, provider: str, model: str, dimensions: int) -> Embedder:
        key = (provider, model, dimensions)
        if key not in self._embedders:
            if self._embedder_factory is not None:
                self._embedders[key] = self._embedder_factory(provider, model, dimensions)
            else:
                self._embedders[key] = build_embedder(provider, model, dimensions, self.settings)
        return self._embedders[key]

    def embed(self, embedder: Embedder, texts: list[str]) -> EmbeddingResult:
        """``embedder.embed`` counted in ``counters`` (ingestion and re-embed)."""
        with provider_span("embeddings", getattr(embedder, "provider", type(embedder).__name__)):
            result = embedder.embed(texts)
        self.counters.embed_requests += result.requests
        self.counters.embed_calls += 1
        self.counters.embedding_tokens += result.tokens
        return result

    def store(self, name: str, account_id: str | None = None) -> VectorStore:
        """The vector store ``name``; for Pinecone, the one reached with the account's own key when it stored one
        (``PUT /provider-keys/pinecone``), else with the platform's key."""
        if self._store_factory is not None:
            stores = self._stores if name == "embedded" else self._shared_stores
            if name not in stores:
                stores[name] = self._store_factory(name)
            return stores[name]
        kind = VECTOR_STORES.get(name)
        if kind is None:
            raise NotAvailableError(f"unknown vector store '{name}'")
        wiring = StoreWiring(
            self.settings, self.database, self.unit_of_work, lambda vendor: self._account_key(account_id, vendor)
        )
        if kind.reuse_key is None:  # writes through this copy's unit of work: its own
            if name not in self._stores:
                self._stores[name] = kind.build(wiring)
            return self._stores[name]
        key = kind.reuse_key(wiring)
        if key not in self._shared_stores:
            self._shared_stores[key] = kind.build(wiring)
        return self._shared_stores[key]

    def _account_key(self, account_id: str | None, vendor: str) -> tuple[str, dict[str, str]] | None:
        if not account_id:
            return None
        with self.unit_of_work() as session:
            credentials = ProviderKeyService(session, self.settings).get_with_options(account_id, vendor)
        if credentials is None or not credentials[0]:
            return None
        return credentials[0], dict(credentials[1])

    def publish_usage(self, events: Sequence[UsageEvent]) -> None:
        if not events:
            return
        if self._usage is None:
            self._usage = build_usage_publisher(self.settings, self.database)
        self._usage.publish(events)
