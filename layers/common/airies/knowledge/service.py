"""Knowledge bases: documents in, chunks and vectors out, retrieval fast enough for a voice turn.

Pipeline of one document (the same stages inline and under Step Functions):
``prepare_document`` (claim, download, extract, chunk, store chunk rows) -> ``embed_chunk_range`` per batch
(embed + upsert vectors) -> ``finalise_document`` (counts, status ready, usage). Any ``DocumentRejected``
ends the document as ``failed`` with a code and a reason; nothing else is lost.

Idempotency: chunk and vector ids are ``{document_id}-{index:05d}``, a document is claimed with a conditional
UPDATE (a second delivery while it is processing is skipped), and a document already ``ready`` from the same
object version (S3 ETag) is skipped. A redelivered or duplicated event therefore never duplicates chunks.

Tenancy: every read is filtered by account; a foreign id is a 404; every vector query is scoped by account
and knowledge base inside the store.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from airies.core.errors import (
    AiriesError,
    BadRequestError,
    ConflictError,
    NotAvailableError,
    NotFoundError,
    PayloadTooLargeError,
    ProviderError,
    UnsupportedMediaTypeError,
    is_transient,
    sqlstate,
)
from airies.core.ids import new_id
from airies.core.models import utcnow
from airies.core.url_guard import as_url, url_guard
from airies.knowledge import extraction as dp
from airies.knowledge.chunking import iter_chunks
from airies.knowledge.models import KnowledgeBase, KnowledgeChunk, KnowledgeDocument, KnowledgeScrapeJob

if TYPE_CHECKING:
    import numpy as np

    from airies.billing.schemas import UsageEvent
    from airies.core.config import Settings
    from airies.core.database import Database
    from airies.knowledge.embedders.base import Embedder, EmbeddingResult
    from airies.knowledge.vector_stores.base import VectorRecord, VectorStore

log = logging.getLogger(__name__)

DEFAULT_MODELS = {
    "hashing": ("hashing-v1", 512),
    "openai": ("text-embedding-3-small", 1536),
    "minilm": ("all-MiniLM-L6-v2", 384),
}
VECTOR_STORES = ("embedded", "pgvector", "pinecone")
KEY_PATTERN = re.compile(r"^accounts/(?P<account>[^/]+)/knowledge/(?P<kb>[^/]+)/(?P<doc>[^/]+)/(?P<name>.+)$")


@dataclass(frozen=True)
class RetrievedChunk:
    text: str
    score: float
    document_id: str
    document_name: str
    knowledge_base_id: str
    chunk_id: str
    chunk_index: int
    page: int | None = None
    source_url: str | None = None


@dataclass
class PreparedDocument:
    document_id: str
    skipped: bool = False
    reason: str | None = None
    chunk_count: int = 0
    batches: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "document_id": self.document_id,
            "skipped": self.skipped,
            "reason": self.reason,
            "chunk_count": self.chunk_count,
            "batches": self.batches,
        }


@dataclass
class IngestionCounters:
    """What the pipeline did (benchmarks and tests read it)."""

    embed_requests: int = 0
    embed_calls: int = 0
    embedding_tokens: int = 0
    documents_processed: int = 0
    documents_skipped: int = 0
    documents_failed: int = 0


def safe_filename(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "document"
    return cleaned[:120]


def chunk_id(document_id: str, index: int) -> str:
    return f"{document_id}-{index:05d}"


def vector_records(
    account_id: str, kb_id: str, keys: Sequence[tuple[str, str, int]], vectors: np.ndarray
) -> list[VectorRecord]:
    """Store records of one knowledge base: ``keys`` are (chunk id, document id, chunk index), row n of ``vectors``
    belongs to ``keys[n]``."""
    from airies.knowledge.vector_stores.base import VectorRecord

    return [
        VectorRecord(
            id=cid,
            values=vectors[n],
            account_id=account_id,
            knowledge_base_id=kb_id,
            document_id=doc_id,
            chunk_index=index,
        )
        for n, (cid, doc_id, index) in enumerate(keys)
    ]


def refresh_counts(session: Session, kb: KnowledgeBase) -> None:
    """Recount a knowledge base from its ready documents (exact after re-uploads, failures and deletes)."""
    docs, chunks, tokens = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(KnowledgeDocument.chunk_count), 0),
            func.coalesce(func.sum(KnowledgeDocument.token_count), 0),
        ).where(KnowledgeDocument.knowledge_base_id == kb.id, KnowledgeDocument.status == "ready")
    ).one()
    kb.document_count, kb.chunk_count, kb.token_count = int(docs), int(chunks), int(tokens)


def failure_reason(exc: Exception) -> tuple[str, str]:
    """(error code, reason) a customer can read for an exception that stopped ingestion. Database errors give their
    SQLSTATE and message, never the statement or its parameters (the document's text)."""
    if isinstance(exc, NotAvailableError):
        # Configuration, not a fault: e.g. the OpenAI embedder has no key, the vector store is not set up.
        return "not_available", f"cannot process the document: {exc.message}"
    if isinstance(exc, ProviderError):
        return "embedding_failed", exc.message
    if isinstance(exc, AiriesError):
        return "processing_failed", exc.message
    if isinstance(exc, DBAPIError):
        fields = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
        message = fields.get("M") if isinstance(fields, dict) else str(exc.orig)
        return "processing_failed", f"the database refused the document (SQLSTATE {sqlstate(exc) or '?'}): {message}"
    return "processing_failed", f"{type(exc).__name__}: {exc}"[:500]


class KnowledgeService:
    def __init__(
        self,
        database: Database,
        settings: Settings,
        *,
        storage: Any = None,
        embedder_factory: Callable[[str, str, int], Embedder] | None = None,
        store_factory: Callable[[str], VectorStore] | None = None,
        usage_publisher: Any = None,
        sqs_client: Any = None,
        sfn_client: Any = None,
        fetcher: Any = None,
        session: Session | None = None,
    ) -> None:
        self.database = database
        self.settings = settings
        self._storage = storage
        self._embedder_factory = embedder_factory
        self._store_factory = store_factory
        self._usage = usage_publisher
        self._sqs = sqs_client
        self._sfn = sfn_client
        self._fetcher = fetcher
        self._session = session
        self._embedders: dict[tuple[str, str, int], Embedder] = {}
        self._stores: dict[str, VectorStore] = {}
        self._shared_stores: dict[str, VectorStore] = {}
        self._local = threading.local()
        self.counters = IngestionCounters()

    def bind(self, session: Session | None) -> KnowledgeService:
        """The same service working inside the caller's unit of work (API requests); ``None`` unbinds. The copy
        shares clients, embedders, shared stores and counters; the embedded store and the thread's session are its
        own (they write through its unit of work)."""
        bound = copy.copy(self)
        bound._session = session
        bound._stores = {}
        bound._local = threading.local()
        return bound

    def _pipeline(self) -> KnowledgeService:
        """The ingestion stages use their own short transactions: commit the caller's first, then run unbound
        (on SQLite a second writer would wait for the request's open transaction)."""
        if self._session is None:
            return self
        self._session.commit()
        return self.bind(None)

    # -- plumbing ---------------------------------------------------------------------------------------------
    @contextmanager
    def _uow(self) -> Iterator[Session]:
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

    @property
    def storage(self) -> Any:
        if self._storage is None:
            from airies.core.storage import StorageService

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
                from airies.knowledge.embedders import build_embedder

                self._embedders[key] = build_embedder(provider, model, dimensions, self.settings)
        return self._embedders[key]

    def store(self, name: str, account_id: str | None = None) -> VectorStore:
        """The vector store ``name``; for Pinecone, the one reached with the account's own key when it stored one
        (``PUT /provider-keys/pinecone``), else with the platform's key."""
        # The embedded store writes through this service's unit of work, so each bound copy has its own; the
        # others hold SDK clients and connection pools that every copy shares.
        if name == "pinecone" and self._store_factory is None:
            api_key, host = self._pinecone_credentials(account_id)
            key = "pinecone:" + hashlib.sha256(f"{api_key}\n{host}".encode()).hexdigest()[:32]
            if key not in self._shared_stores:
                from airies.knowledge.vector_stores.pinecone import PineconeVectorStore

                self._shared_stores[key] = PineconeVectorStore(api_key=api_key, index_host=host)
            return self._shared_stores[key]
        stores = self._stores if name == "embedded" else self._shared_stores
        if name not in stores:
            stores[name] = self._store_factory(name) if self._store_factory else self._build_store(name)
        return stores[name]

    def _pinecone_credentials(self, account_id: str | None) -> tuple[str, str]:
        """(api key, index host): the account's own key (and index host, when stored with it) first, then the
        platform key like every other platform key (settings/env locally, the provider-keys secret on AWS)."""
        host = self.settings.pinecone_index_host
        if account_id:
            own = self._account_pinecone_key(account_id)
            if own is not None:
                key, options = own
                own_host = options.get("index_host") or host
                if not own_host:
                    raise NotAvailableError("Pinecone needs an index host (AIRIES_PINECONE_INDEX_HOST)")
                if options.get("index_host"):  # the account's own host: checked again before every use
                    url_guard(self.settings).check(as_url(own_host), field="index_host")
                return key, own_host
        from airies.core.secrets import get_platform_secret

        key = self.settings.pinecone_api_key or get_platform_secret("pinecone_api_key", self.settings)
        if not (key and host):
            raise NotAvailableError(
                "Pinecone needs an API key (the account's own, AIRIES_PINECONE_API_KEY or the platform's "
                "provider-keys secret) and AIRIES_PINECONE_INDEX_HOST"
            )
        return key, host

    def _account_pinecone_key(self, account_id: str) -> tuple[str, dict[str, str]] | None:
        try:
            from airies.accounts.provider_keys import ProviderKeyService
        except ImportError:  # provider keys not installed: platform key only
            return None
        with self._uow() as session:
            credentials = ProviderKeyService(session, self.settings).get_with_options(account_id, "pinecone")
        if credentials is None or not credentials[0]:
            return None
        return credentials[0], dict(credentials[1])

    def _build_store(self, name: str) -> VectorStore:
        if name == "embedded":
            from airies.knowledge.vector_stores.embedded import EmbeddedVectorStore

            return EmbeddedVectorStore(self._uow, cache_key=self.database.url)
        if name == "pgvector":
            from airies.knowledge.vector_stores.pgvector import PgVectorStore

            if self.settings.kb_pgvector_database_url:
                from airies.core.database import Database

                return PgVectorStore(Database(self.settings.kb_pgvector_database_url))
            return PgVectorStore(self.database)
        raise NotAvailableError(f"unknown vector store '{name}'")

    def _publish_usage(self, events: list[UsageEvent]) -> None:
        if not events:
            return
        publisher = self._usage
        if publisher is None:
            try:
                from airies.billing.ledger import build_usage_publisher
            except ImportError:  # billing not installed: nothing to meter into
                return
            publisher = self._usage = build_usage_publisher(self.settings, self.database)
        publisher.publish(events)

    # -- knowledge bases --------------------------------------------------------------------------------------
    def create_knowledge_base(
        self,
        account_id: str,
        name: str,
        *,
        description: str | None = None,
        embedding_provider: str | None = None,
        embedding_model: str | None = None,
        embedding_dimensions: int | None = None,
        vector_store: str | None = None,
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
    ) -> KnowledgeBase:
        provider, model, dims = self._embedding_choice(embedding_provider, embedding_model, embedding_dimensions)
        store_name = vector_store or self.settings.kb_vector_store
        if store_name not in VECTOR_STORES:
            raise BadRequestError(f"vector_store must be one of {', '.join(VECTOR_STORES)}")
        size = chunk_size or self.settings.kb_chunk_tokens
        overlap = self.settings.kb_chunk_overlap_tokens if chunk_overlap is None else chunk_overlap
        if not 32 <= size <= 2000 or not 0 <= overlap <= size // 2:
            raise BadRequestError("chunk_size must be 32-2000 tokens and chunk_overlap at most half of it")
        self.embedder(provider, model, dims)  # fail now (501) if the provider is not configured
        kb = KnowledgeBase(
            id=new_id("kb"),
            account_id=account_id,
            name=name,
            description=description,
            embedding_provider=provider,
            embedding_model=model,
            embedding_dimensions=dims,
            vector_store=store_name,
            chunk_size=size,
            chunk_overlap=overlap,
            status="active",
            document_count=0,
            chunk_count=0,
            token_count=0,
        )
        with self._uow() as session:
            session.add(kb)
            session.flush()
        self.store(store_name, account_id).create_collection(account_id, kb.id, dims)
        return kb

    def _embedding_choice(self, provider: str | None, model: str | None, dims: int | None) -> tuple[str, str, int]:
        provider = provider or self.settings.kb_embedding_provider
        if provider not in DEFAULT_MODELS:
            raise BadRequestError(f"embedding_provider must be one of {', '.join(DEFAULT_MODELS)}")
        default_model, default_dims = DEFAULT_MODELS[provider]
        if provider == self.settings.kb_embedding_provider:
            model = model or self.settings.kb_embedding_model
            dims = dims or self.settings.kb_embedding_dimensions
        if provider == "openai" and model and not dims:
            from airies.knowledge.embedders.openai import MODEL_DIMENSIONS

            dims = MODEL_DIMENSIONS.get(model)
        choice = (provider, model or default_model, int(dims or default_dims))
        from airies.knowledge.embedders import check_model

        check_model(*choice)  # 422 for a model the provider does not have
        return choice

    def list_knowledge_bases(
        self, account_id: str, *, limit: int = 20, cursor: str | None = None
    ) -> tuple[list[KnowledgeBase], str | None]:
        with self._uow() as session:
            query = select(KnowledgeBase).where(KnowledgeBase.account_id == account_id)
            if cursor:
                query = query.where(KnowledgeBase.id < cursor)
            rows = list(session.scalars(query.order_by(KnowledgeBase.id.desc()).limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (rows[-1].id if more else None)

    def get_knowledge_base(self, account_id: str, kb_id: str, session: Session | None = None) -> KnowledgeBase:
        if session is None:
            with self._uow() as own:
                return self.get_knowledge_base(account_id, kb_id, own)
        kb = session.scalar(
            select(KnowledgeBase)
            .where(KnowledgeBase.id == kb_id, KnowledgeBase.account_id == account_id)
            .execution_options(populate_existing=True)  # the pipeline may have changed it in another session
        )
        if kb is None:
            raise NotFoundError("knowledge base", kb_id)
        return kb

    def update_knowledge_base(self, account_id: str, kb_id: str, patch: dict[str, Any]) -> KnowledgeBase:
        allowed = {"name", "description", "chunk_size", "chunk_overlap"}
        unknown = set(patch) - allowed
        if unknown:
            raise BadRequestError(
                f"cannot update {', '.join(sorted(unknown))}; change the embedding model with POST /reembed"
            )
        with self._uow() as session:
            kb = self.get_knowledge_base(account_id, kb_id, session)
            for key, value in patch.items():
                if value is not None or key == "description":
                    setattr(kb, key, value)
            if not 32 <= kb.chunk_size <= 2000 or not 0 <= kb.chunk_overlap <= kb.chunk_size // 2:
                raise BadRequestError("chunk_size must be 32-2000 tokens and chunk_overlap at most half of it")
            session.flush()
            return kb

    def delete_knowledge_base(self, account_id: str, kb_id: str) -> None:
        with self._uow() as session:
            kb = self.get_knowledge_base(account_id, kb_id, session)
            store_name = kb.vector_store
            session.execute(delete(KnowledgeChunk).where(KnowledgeChunk.knowledge_base_id == kb_id))
            session.execute(delete(KnowledgeDocument).where(KnowledgeDocument.knowledge_base_id == kb_id))
            session.execute(delete(KnowledgeScrapeJob).where(KnowledgeScrapeJob.knowledge_base_id == kb_id))
            session.delete(kb)
            session.flush()
        self.store(store_name, account_id).delete_collection(account_id, kb_id)
        self.storage.delete_prefix(account_id, f"knowledge/{kb_id}/")

    # -- documents --------------------------------------------------------------------------------------------
    def _new_document(
        self,
        kb: KnowledgeBase,
        *,
        name: str,
        content_type: str,
        source_type: str,
        size_bytes: int | None,
        source_url: str | None = None,
        scrape_job_id: str | None = None,
        status: str = "uploaded",
    ) -> KnowledgeDocument:
        doc_id = new_id("kdoc")
        name = dp.strip_control_characters(name).strip()[:300] or "document"  # a NUL would not even store
        return KnowledgeDocument(
            id=doc_id,
            account_id=kb.account_id,
            knowledge_base_id=kb.id,
            name=name,
            source_type=source_type,
            source_url=source_url,
            content_type=content_type,
            storage_key=f"knowledge/{kb.id}/{doc_id}/{safe_filename(name)}",
            size_bytes=size_bytes,
            status=status,
            page_count=0,
            chunk_count=0,
            token_count=0,
            attempts=0,
            scrape_job_id=scrape_job_id,
        )

    def _check_upload(self, filename: str, content_type: str | None, size: int | None) -> str:
        if not filename or not filename.strip():
            raise BadRequestError("filename is required")
        normalised = dp.normalise_content_type(content_type, filename)
        try:
            dp.check_content_type(normalised)
        except dp.DocumentRejected as exc:
            raise UnsupportedMediaTypeError(exc.reason) from exc
        if size is not None and size > self.settings.kb_max_document_bytes:
            raise PayloadTooLargeError(
                f"the document is {size} bytes; the limit is {self.settings.kb_max_document_bytes}"
            )
        return normalised

    @staticmethod
    def _content_bytes(session: Session, kb_id: str, *, excluding: str | None = None) -> int:
        """Bytes a knowledge base holds: its documents' sizes, failed ones aside (their content is not kept)."""
        query = select(func.coalesce(func.sum(KnowledgeDocument.size_bytes), 0)).where(
            KnowledgeDocument.knowledge_base_id == kb_id, KnowledgeDocument.status != "failed"
        )
        if excluding is not None:
            query = query.where(KnowledgeDocument.id != excluding)
        return int(session.scalar(query) or 0)

    def _check_kb_size(
        self, session: Session, account_id: str, kb_id: str, adding: int | None, *, replacing: str | None = None
    ) -> None:
        """402 ``kb_size_limit`` when the knowledge base would exceed its tier's size with ``adding`` bytes
        (``replacing``: the document whose current size the new content replaces)."""
        if adding is None:
            return
        try:
            from airies.billing.ledger import UsageService
        except ImportError:  # billing not installed: no tiers to enforce
            return
        total = self._content_bytes(session, kb_id, excluding=replacing) + adding
        UsageService(self.database).check_kb_size(account_id, total_bytes=total, session=session)

    @staticmethod
    def _refuse_while_reembedding(kb: KnowledgeBase) -> None:
        if kb.status == "reembedding":
            raise ConflictError(
                "the knowledge base is being re-embedded; add or replace documents when it is done",
                code="reembedding",
            )

    def upload_document(
        self, account_id: str, kb_id: str, *, filename: str, content_type: str | None, size_bytes: int | None = None
    ) -> tuple[KnowledgeDocument, Any]:
        """A document row plus a presigned S3 POST; the object's ObjectCreated event starts ingestion."""
        normalised = self._check_upload(filename, content_type, size_bytes)
        with self._uow() as session:
            kb = self.get_knowledge_base(account_id, kb_id, session)
            self._check_kb_size(session, account_id, kb_id, size_bytes)
            doc = self._new_document(
                kb,
                name=filename,
                content_type=normalised,
                source_type="upload",
                size_bytes=size_bytes,
                status="pending_upload",
            )
            session.add(doc)
            session.flush()
        presigned = self.storage.presigned_post(
            account_id,
            doc.storage_key,
            max_bytes=self.settings.kb_max_document_bytes,
            content_type=normalised,
            expires_in=self.settings.kb_presign_expires_s,
        )
        return doc, presigned

    def add_document_content(
        self,
        account_id: str,
        kb_id: str,
        *,
        filename: str,
        content_type: str | None,
        data: bytes,
        process: bool = True,
        source_type: str = "inline",
        source_url: str | None = None,
        scrape_job_id: str | None = None,
    ) -> KnowledgeDocument:
        """Store a small document's bytes and (by default) ingest it now, inside this request."""
        normalised = self._check_upload(filename, content_type, len(data))
        with self._uow() as session:
            kb = self.get_knowledge_base(account_id, kb_id, session)
            if process:
                self._refuse_while_reembedding(kb)
            self._check_kb_size(session, account_id, kb_id, len(data))
            doc = self._new_document(
                kb,
                name=filename,
                content_type=normalised,
                source_type=source_type,
                size_bytes=len(data),
                source_url=source_url,
                scrape_job_id=scrape_job_id,
            )
            doc.content_sha256 = hashlib.sha256(data).hexdigest()
            session.add(doc)
            session.flush()
        self.storage.upload_bytes(account_id, doc.storage_key, data, content_type=normalised)
        if process:
            etag = hashlib.md5(data, usedforsecurity=False).hexdigest()  # what S3 reports for a single PUT
            self._pipeline().process_document(doc.id, etag=etag, data=data)
        return self.get_document(account_id, kb_id, doc.id)

    def update_document(
        self, account_id: str, kb_id: str, doc_id: str, *, data: bytes, content_type: str | None = None
    ) -> KnowledgeDocument:
        """Replace a document's content: same id and key, new chunks and vectors (the old ones it no longer has
        are deleted); the document keeps serving its previous version until the new one is ready. The new content
        keeps the document's type unless ``content_type`` changes it: content that cannot be of that type (text for
        a PDF) is refused with 415 before anything changes."""
        with self._uow() as session:
            doc = self.get_document(account_id, kb_id, doc_id, session)
            if doc.storage_key is None:
                raise BadRequestError("this document has no stored content to replace (a failed web page)")
            normalised = self._check_upload(doc.name, content_type or doc.content_type, len(data))
            try:
                dp.check_signature(data, normalised)
            except dp.DocumentRejected as exc:
                raise UnsupportedMediaTypeError(
                    f"the document is {normalised} but {exc.reason.replace('the file', 'the new content', 1)}: "
                    "send the new content in that format "
                    "(content_base64 or a multipart file), or set content_type to change the document's type",
                    code="content_type_mismatch",
                ) from exc
            self._refuse_while_reembedding(self.get_knowledge_base(account_id, kb_id, session))
            self._check_kb_size(session, account_id, kb_id, len(data), replacing=doc_id)
            doc.content_type = normalised
            doc.size_bytes = len(data)
            storage_key = doc.storage_key
            session.flush()
        self.storage.upload_bytes(account_id, storage_key, data, content_type=normalised)
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        self._pipeline().process_document(doc_id, etag=etag, data=data)
        return self.get_document(account_id, kb_id, doc_id)

    def list_documents(
        self, account_id: str, kb_id: str, *, limit: int = 50, cursor: str | None = None, status: str | None = None
    ) -> tuple[list[KnowledgeDocument], str | None]:
        with self._uow() as session:
            self.get_knowledge_base(account_id, kb_id, session)
            query = select(KnowledgeDocument).where(
                KnowledgeDocument.account_id == account_id, KnowledgeDocument.knowledge_base_id == kb_id
            )
            if status:
                query = query.where(KnowledgeDocument.status == status)
            if cursor:
                query = query.where(KnowledgeDocument.id < cursor)
            rows = list(session.scalars(query.order_by(KnowledgeDocument.id.desc()).limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (rows[-1].id if more else None)

    def get_document(
        self, account_id: str, kb_id: str, doc_id: str, session: Session | None = None
    ) -> KnowledgeDocument:
        if session is None:
            with self._uow() as own:
                return self.get_document(account_id, kb_id, doc_id, own)
        doc = session.scalar(
            select(KnowledgeDocument)
            .where(
                KnowledgeDocument.id == doc_id,
                KnowledgeDocument.account_id == account_id,
                KnowledgeDocument.knowledge_base_id == kb_id,
            )
            .execution_options(populate_existing=True)
        )
        if doc is None:
            raise NotFoundError("document", doc_id)
        return doc

    def get_document_chunks(
        self, account_id: str, kb_id: str, doc_id: str, *, limit: int = 100, offset: int = 0
    ) -> list[KnowledgeChunk]:
        with self._uow() as session:
            self.get_document(account_id, kb_id, doc_id, session)
            return list(
                session.scalars(
                    select(KnowledgeChunk)
                    .where(KnowledgeChunk.document_id == doc_id, KnowledgeChunk.account_id == account_id)
                    .order_by(KnowledgeChunk.chunk_index)
                    .offset(offset)
                    .limit(limit)
                )
            )

    def delete_document(self, account_id: str, kb_id: str, doc_id: str) -> None:
        with self._uow() as session:
            kb = self.get_knowledge_base(account_id, kb_id, session)
            doc = self.get_document(account_id, kb_id, doc_id, session)
            ids = list(session.scalars(select(KnowledgeChunk.id).where(KnowledgeChunk.document_id == doc_id)))
            storage_key, store_name = doc.storage_key, kb.vector_store
            session.execute(delete(KnowledgeChunk).where(KnowledgeChunk.document_id == doc_id))
            session.delete(doc)
            session.flush()
            refresh_counts(session, kb)
        self.store(store_name, account_id).delete(account_id, kb_id, ids)
        if storage_key:
            self.storage.delete(account_id, storage_key)

    # -- ingestion --------------------------------------------------------------------------------------------
    def handle_object_created(self, key: str, *, size: int | None = None, etag: str | None = None) -> str:
        """One S3 ObjectCreated record: ingest inline, or start the state machine for a large document.

        Returns what happened (``processed``, ``failed``, ``started``, ``skipped:<reason>``); raises only for
        transient faults, so the SQS message is retried.
        """
        key = unquote_plus(key)  # S3 event keys arrive URL-encoded
        match = KEY_PATTERN.match(key)
        if match is None:
            return "skipped:not_a_document_key"
        doc_id = match["doc"]
        with self.database.session() as session:
            doc = session.get(KnowledgeDocument, doc_id)
            if doc is None or doc.account_id != match["account"] or doc.knowledge_base_id != match["kb"]:
                return "skipped:unknown_document"
            if doc.status == "ready" and etag and doc.processed_etag == etag:
                self.counters.documents_skipped += 1
                return "skipped:already_processed"
            if doc.status == "pending_upload":
                doc.status = "uploaded"
            if size is not None:
                doc.size_bytes = size
        if size is not None and size > self.settings.kb_max_document_bytes:
            self.fail_document(
                doc_id, "too_large", f"the document is {size} bytes; the limit is {self.settings.kb_max_document_bytes}"
            )
            return "failed"
        if size is not None:  # a presigned upload may have declared no size (or a smaller one): check what came
            from airies.core.errors import PaymentRequiredError

            try:
                with self.database.session() as session:
                    self._check_kb_size(session, match["account"], match["kb"], size, replacing=doc_id)
            except PaymentRequiredError as exc:
                self.fail_document(doc_id, exc.code, exc.message)
                return "failed"
        arn = self.settings.kb_ingestion_state_machine_arn
        if arn and size is not None and size > self.settings.kb_large_document_bytes:
            return self._start_state_machine(arn, doc_id, etag)
        status = self.process_document(doc_id, etag=etag)
        return status

    def _start_state_machine(self, arn: str, doc_id: str, etag: str | None) -> str:
        import json

        if self._sfn is None:
            import boto3

            self._sfn = boto3.client(
                "stepfunctions", region_name=self.settings.aws_region, endpoint_url=self.settings.aws_endpoint_url
            )
        # The execution name is the dedup key: a duplicate event for the same object version cannot start a second run.
        name = re.sub(r"[^A-Za-z0-9_-]", "", f"{doc_id}-{(etag or 'noetag')[:32]}")[:80]
        try:
            self._sfn.start_execution(
                stateMachineArn=arn, name=name, input=json.dumps({"document_id": doc_id, "etag": etag})
            )
        except self._sfn.exceptions.ExecutionAlreadyExists:
            return "skipped:execution_exists"
        return "started"

    def process_document(self, document_id: str, *, etag: str | None = None, data: bytes | None = None) -> str:
        """The whole pipeline in this process, streamed: chunks are embedded and upserted (one worker thread)
        while later pages are still being extracted. Returns the final status (or ``skipped:<reason>``)."""
        begun = self._begin(document_id, etag)
        if isinstance(begun, PreparedDocument):
            return f"skipped:{begun.reason}"
        doc, kb = begun
        batch_size = max(1, self.settings.kb_stream_batch_chunks)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kb-embed")
        futures: list[Future[None]] = []
        chunks: list[Any] = []
        try:
            try:
                if data is None:
                    data = self._download(doc)
                pages, paged, page_count = self._open_pages(doc, data)
                batch: list[Any] = []
                for chunk in iter_chunks(pages, kb.chunk_size, kb.chunk_overlap, paged=paged):
                    chunks.append(chunk)
                    batch.append(chunk)
                    if len(batch) >= batch_size:
                        futures.append(executor.submit(self._embed_and_upsert, kb, doc, batch))
                        batch = []
                if batch:
                    futures.append(executor.submit(self._embed_and_upsert, kb, doc, batch))
                if not chunks:
                    raise dp.no_text(doc.content_type)
                old_ids = self._replace_chunks(doc, chunks, page_count, hashlib.sha256(data).hexdigest())
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:  # let in-flight batches finish before the document's fate is written
                    future.cancel()
                wait(futures)
                raise
            finally:
                executor.shutdown(wait=True)
            self._drop_stale_vectors(kb, doc, old_ids, chunks)
            self.finalise_document(document_id, etag=etag)
        except dp.DocumentRejected as exc:
            self.fail_document(document_id, exc.code, exc.reason, vector_ids=self._vector_ids(doc, chunks))
            return "failed"
        except Exception as exc:
            return self._after_error(doc, chunks, exc)
        return "ready"

    @staticmethod
    def _vector_ids(doc: KnowledgeDocument, chunks: Sequence[Any]) -> list[str]:
        return [chunk_id(doc.id, c.index) for c in chunks]

    def _after_error(self, doc: KnowledgeDocument, chunks: Sequence[Any], exc: Exception) -> str:
        """An attempt that raised. Its vectors go either way. A permanent error (bad data, a bug, a configuration
        no retry can fix) ends the document ``failed`` with the reason and returns "failed" (the message is
        acknowledged); a transient one releases the document and re-raises, so the message is redelivered, until
        ``kb_max_attempts`` attempts have failed: then the document ends failed too."""
        code, reason = failure_reason(exc)
        vector_ids = self._vector_ids(doc, chunks)
        if is_transient(exc):
            attempts = doc.attempts  # counted by the claim of this attempt
            if attempts < self.settings.kb_max_attempts:
                log.warning("document %s: attempt %d failed, will be retried: %s", doc.id, attempts, reason)
                self._release(doc.id, f"attempt {attempts} failed and will be retried: {reason}", vector_ids)
                raise exc
            code, reason = "processing_failed", f"gave up after {attempts} attempts: {reason}"
        else:
            log.warning("document %s failed: %s", doc.id, reason, exc_info=exc)
        self.fail_document(doc.id, code, reason, vector_ids=vector_ids)
        return "failed"

    def _begin(self, document_id: str, etag: str | None) -> PreparedDocument | tuple[KnowledgeDocument, KnowledgeBase]:
        """Skip what is done or in flight; otherwise claim the document. Returns a skip or (document, kb)."""
        with self.database.session() as session:
            doc = session.get(KnowledgeDocument, document_id)
            if doc is None:
                return PreparedDocument(document_id, skipped=True, reason="unknown_document")
            if doc.status == "ready" and etag and doc.processed_etag == etag:
                self.counters.documents_skipped += 1
                return PreparedDocument(document_id, skipped=True, reason="already_processed")
        claimed = self._claim(document_id)
        if claimed is None:
            self.counters.documents_skipped += 1
            return PreparedDocument(document_id, skipped=True, reason="in_progress")
        if claimed.attempts > self.settings.kb_max_attempts:
            # Every earlier attempt stopped without recording an outcome (the function timed out or ran out of
            # memory): another one would too. End it here, while a delivery is left to say so.
            self.fail_document(
                document_id,
                "processing_failed",
                f"gave up after {claimed.attempts - 1} attempts that did not finish (time-out or out of memory)",
            )
            return PreparedDocument(document_id, skipped=True, reason="failed:processing_failed")
        with self.database.session() as session:
            kb = session.get(KnowledgeBase, claimed.knowledge_base_id)
        if kb is None:
            return PreparedDocument(document_id, skipped=True, reason="unknown_knowledge_base")
        if kb.status == "reembedding" and kb.updated_at >= self._reembed_fresh():
            # Its model is changing: vectors of the old one would be lost in the swap. Transient: the message is
            # redelivered (and the document claimed again) after the visibility timeout; waiting is no attempt.
            self._release(document_id, failed_attempt=False)
            raise ConflictError(
                "the knowledge base is being re-embedded; the document is ingested after it", code="reembedding"
            )
        return claimed, kb

    def _open_pages(self, doc: KnowledgeDocument, data: bytes) -> tuple[Iterator[str], bool, int]:
        """(page texts, paged?, page count); PDFs are read page by page, other formats (no pages) at once."""
        if len(data) > self.settings.kb_max_document_bytes:
            raise dp.DocumentRejected(
                "too_large", f"the document is {len(data)} bytes; the limit is {self.settings.kb_max_document_bytes}"
            )
        if doc.content_type == dp.PDF:
            if not data.strip():
                raise dp.DocumentRejected("empty_document", "the document is empty")
            reader = dp.open_pdf(data, max_pages=self.settings.kb_max_pages)
            return dp.iter_pdf_pages(reader), True, len(reader.pages)  # a one-page PDF cites page 1 too
        extracted = dp.extract(
            data,
            doc.content_type,
            max_pages=self.settings.kb_max_pages,
            max_decompressed_bytes=self.settings.kb_max_decompressed_bytes,
        )
        return iter(extracted.pages), False, extracted.page_count

    def _embed_and_upsert(self, kb: KnowledgeBase, doc: KnowledgeDocument, chunks: Sequence[Any]) -> None:
        vectors = self.generate_embeddings(kb, [c.text for c in chunks])
        keys = [(chunk_id(doc.id, c.index), doc.id, c.index) for c in chunks]
        self.store(kb.vector_store, doc.account_id).upsert(
            vector_records(doc.account_id, doc.knowledge_base_id, keys, vectors)
        )

    def _drop_stale_vectors(
        self, kb: KnowledgeBase, doc: KnowledgeDocument, old_ids: Sequence[str], chunks: Sequence[Any]
    ) -> None:
        """Vectors of the previous version's chunks that the new version no longer has."""
        new_ids = {chunk_id(doc.id, c.index) for c in chunks}
        stale = [i for i in old_ids if i not in new_ids]
        if stale:
            self.store(kb.vector_store, doc.account_id).delete(doc.account_id, doc.knowledge_base_id, stale)

    def _claim(self, document_id: str) -> KnowledgeDocument | None:
        cutoff = utcnow() - timedelta(seconds=self.settings.kb_processing_lease_s)
        with self.database.session() as session:
            claimed = session.execute(
                update(KnowledgeDocument)
                .where(
                    KnowledgeDocument.id == document_id,
                    or_(
                        KnowledgeDocument.status != "processing",
                        KnowledgeDocument.processing_started_at.is_(None),
                        KnowledgeDocument.processing_started_at < cutoff,
                    ),
                )
                .values(
                    status="processing",
                    processing_started_at=utcnow(),
                    attempts=KnowledgeDocument.attempts + 1,
                    error=None,
                    error_code=None,
                    updated_at=utcnow(),
                )
            ).rowcount
            if not claimed:
                return None
            return session.get(KnowledgeDocument, document_id)

    def _release(
        self,
        document_id: str,
        reason: str | None = None,
        vector_ids: Sequence[str] = (),
        *,
        failed_attempt: bool = True,
    ) -> None:
        """Back to ``uploaded`` for the next delivery. After a failed attempt its index goes (nothing half-written is
        left to a query) and ``reason`` is shown as the document's ``error``; a release without an attempt (the
        knowledge base is being re-embedded) does not count towards ``kb_max_attempts``."""
        values: dict[str, Any] = {"status": "uploaded", "processing_started_at": None}
        if failed_attempt:
            values["error"] = (reason or "")[:2000] or None
        else:
            values["attempts"] = KnowledgeDocument.attempts - 1
        self._settle(document_id, values, vector_ids if failed_attempt else None, only_processing=True)

    def _settle(
        self,
        document_id: str,
        values: dict[str, Any],
        vector_ids: Sequence[str] | None,
        *,
        only_processing: bool = False,
    ) -> None:
        """Write a document's outcome. Unless ``vector_ids`` is None, everything a query could reach for it goes
        first: every vector it may have (its chunk rows' and ``vector_ids``, upserted before the attempt stopped)
        and its chunk rows. The vector store is not the database (pgvector elsewhere, Pinecone): its delete is best
        effort, and a vector whose chunk row is gone is never served anyway."""
        with self.database.session() as session:
            doc = session.get(KnowledgeDocument, document_id)
            if doc is None:
                return
            account_id, kb_id = doc.account_id, doc.knowledge_base_id
            kb = session.get(KnowledgeBase, kb_id)
            store_name = kb.vector_store if kb is not None else None
            chunk_ids = set(session.scalars(select(KnowledgeChunk.id).where(KnowledgeChunk.document_id == document_id)))
        if vector_ids is not None and store_name is not None and (chunk_ids or vector_ids):
            try:
                self.store(store_name, account_id).delete(account_id, kb_id, sorted(chunk_ids | set(vector_ids)))
            except Exception:
                log.exception("could not remove the vectors of document %s", document_id)
        with self.database.session() as session:
            query = update(KnowledgeDocument).where(KnowledgeDocument.id == document_id)
            if only_processing:
                query = query.where(KnowledgeDocument.status == "processing")
            if vector_ids is not None:
                values = {**values, "chunk_count": 0, "token_count": 0}
            if not session.execute(query.values(**values, updated_at=utcnow())).rowcount:
                return
            if vector_ids is not None:
                session.execute(delete(KnowledgeChunk).where(KnowledgeChunk.document_id == document_id))
            kb = session.get(KnowledgeBase, kb_id)
            if kb is not None:
                refresh_counts(session, kb)

    def prepare_document(
        self, document_id: str, *, etag: str | None = None, data: bytes | None = None
    ) -> PreparedDocument:
        """State-machine stage 1: claim, download, extract and chunk; chunk rows are stored, vectors come in
        ``embed_chunk_range`` (one Map iteration per batch)."""
        begun = self._begin(document_id, etag)
        if isinstance(begun, PreparedDocument):
            return begun
        doc, kb = begun
        try:
            if data is None:
                data = self._download(doc)
            pages, paged, page_count = self._open_pages(doc, data)
            chunks = list(iter_chunks(pages, kb.chunk_size, kb.chunk_overlap, paged=paged))
            if not chunks:
                raise dp.no_text(doc.content_type)
        except dp.DocumentRejected as exc:
            self.fail_document(document_id, exc.code, exc.reason)
            return PreparedDocument(document_id, skipped=True, reason=f"failed:{exc.code}")
        old_ids = self._replace_chunks(doc, chunks, page_count, hashlib.sha256(data).hexdigest())
        self._drop_stale_vectors(kb, doc, old_ids, chunks)
        size = max(1, self.settings.kb_embed_batch_chunks)
        batches = [
            {"document_id": document_id, "start": start, "end": min(start + size, len(chunks))}
            for start in range(0, len(chunks), size)
        ]
        return PreparedDocument(document_id, chunk_count=len(chunks), batches=batches)

    def _download(self, doc: KnowledgeDocument) -> bytes:
        from airies.core.errors import NotFoundError as Missing

        try:
            return self.storage.download(doc.account_id, doc.storage_key)
        except Missing as exc:
            raise dp.DocumentRejected("missing_object", "the uploaded object is gone from storage") from exc

    def _replace_chunks(self, doc: KnowledgeDocument, chunks: Sequence[Any], pages: int, sha: str) -> list[str]:
        with self.database.session() as session:
            old_ids = list(session.scalars(select(KnowledgeChunk.id).where(KnowledgeChunk.document_id == doc.id)))
            session.execute(delete(KnowledgeChunk).where(KnowledgeChunk.document_id == doc.id))
            now = utcnow()
            session.execute(
                insert(KnowledgeChunk),
                [
                    {
                        "id": chunk_id(doc.id, c.index),
                        "account_id": doc.account_id,
                        "knowledge_base_id": doc.knowledge_base_id,
                        "document_id": doc.id,
                        "chunk_index": c.index,
                        "text": c.text,
                        "token_count": c.token_count,
                        "page": c.page,
                        "created_at": now,
                    }
                    for c in chunks
                ],
            )
            session.execute(
                update(KnowledgeDocument)
                .where(KnowledgeDocument.id == doc.id)
                .values(page_count=pages, content_sha256=sha, chunk_count=len(chunks))
            )
        return old_ids

    def generate_embeddings(self, kb: KnowledgeBase, texts: list[str]) -> np.ndarray:
        embedder = self.embedder(kb.embedding_provider, kb.embedding_model, kb.embedding_dimensions)
        return self._embed(embedder, texts).vectors

    def _embed(self, embedder: Embedder, texts: list[str]) -> EmbeddingResult:
        """``embedder.embed`` counted in ``counters`` (ingestion and re-embed)."""
        result = embedder.embed(texts)
        self.counters.embed_requests += result.requests
        self.counters.embed_calls += 1
        self.counters.embedding_tokens += result.tokens
        return result

    def store_embeddings(self, kb: KnowledgeBase, chunks: Sequence[KnowledgeChunk], vectors: np.ndarray) -> None:
        keys = [(c.id, c.document_id, c.chunk_index) for c in chunks]
        self.store(kb.vector_store, kb.account_id).upsert(vector_records(kb.account_id, kb.id, keys, vectors))

    def embed_chunk_range(self, document_id: str, start: int, end: int) -> int:
        """Embed chunks [start, end) of a document and upsert their vectors (idempotent: ids are stable)."""
        with self.database.session() as session:
            doc = session.get(KnowledgeDocument, document_id)
            if doc is None:
                return 0
            kb = session.get(KnowledgeBase, doc.knowledge_base_id)
            chunks = list(
                session.scalars(
                    select(KnowledgeChunk)
                    .where(
                        KnowledgeChunk.document_id == document_id,
                        KnowledgeChunk.chunk_index >= start,
                        KnowledgeChunk.chunk_index < end,
                    )
                    .order_by(KnowledgeChunk.chunk_index)
                )
            )
        if not chunks or kb is None:
            return 0
        vectors = self.generate_embeddings(kb, [c.text for c in chunks])
        self.store_embeddings(kb, chunks, vectors)
        return len(chunks)

    def finalise_document(self, document_id: str, *, etag: str | None = None) -> None:
        from airies.billing.schemas import UsageComponent, UsageEvent

        with self.database.session() as session:
            doc = session.get(KnowledgeDocument, document_id)
            if doc is None:
                return
            kb = session.get(KnowledgeBase, doc.knowledge_base_id)
            tokens, chunks = session.execute(
                select(func.coalesce(func.sum(KnowledgeChunk.token_count), 0), func.count()).where(
                    KnowledgeChunk.document_id == document_id
                )
            ).one()
            doc.status = "ready"
            doc.chunk_count = int(chunks)
            doc.token_count = int(tokens)
            doc.processed_etag = etag or doc.content_sha256
            doc.processed_at = utcnow()
            doc.processing_started_at = None
            doc.attempts = 0  # the next version starts its own count
            session.flush()
            if kb is not None:
                refresh_counts(session, kb)
            version = (doc.content_sha256 or etag or "")[:16]
            events = [
                UsageEvent(
                    idempotency_key=f"{doc.id}:{version}:kb_pages",
                    account_id=doc.account_id,
                    component=UsageComponent.KB_PAGES,
                    quantity=doc.page_count,
                    metadata={"knowledge_base_id": doc.knowledge_base_id, "document_id": doc.id},
                ),
                UsageEvent(
                    idempotency_key=f"{doc.id}:{version}:embedding_tokens",
                    account_id=doc.account_id,
                    component=UsageComponent.EMBEDDING_TOKENS,
                    quantity=int(tokens),
                    provider=kb.embedding_provider if kb else None,
                    model=kb.embedding_model if kb else None,
                    metadata={"knowledge_base_id": doc.knowledge_base_id, "document_id": doc.id},
                ),
            ]
        self.counters.documents_processed += 1
        try:
            self._publish_usage(events)
        except Exception:  # metering must never lose the document; keys make a later replay safe
            log.exception("usage publish failed for document %s", document_id)

    def fail_document(self, document_id: str, code: str, reason: str, *, vector_ids: Sequence[str] = ()) -> None:
        """End a document ``failed`` with a code and a reason. A failed document holds nothing a query could reach:
        its chunk rows and its vectors (also ``vector_ids``: upserted by the attempt that failed) are removed."""
        self._settle(
            document_id,
            {
                "status": "failed",
                "error_code": code[:60],
                "error": reason[:2000],
                "processing_started_at": None,
                "attempts": 0,
            },
            vector_ids,
        )
        self.counters.documents_failed += 1

    # -- retrieval --------------------------------------------------------------------------------------------
    def query_knowledge_base(
        self, account_id: str, kb_id: str, query: str, top_k: int = 5, threshold: float = 0.0
    ) -> list[RetrievedChunk]:
        return self.search_similar_content(account_id, [kb_id], query, top_k=top_k, threshold=threshold, strict=True)

    def search_similar_content(
        self,
        account_id: str,
        knowledge_base_ids: Sequence[str],
        query: str,
        *,
        top_k: int = 5,
        threshold: float = 0.0,
        strict: bool = False,
    ) -> list[RetrievedChunk]:
        """Top chunks across knowledge bases; ``strict`` raises 404 for an unknown id, else it is skipped."""
        if not query or not query.strip():
            raise BadRequestError("query must not be empty")
        top_k = max(1, min(int(top_k), 50))
        with self._uow():  # one session for the lookups, the (embedded) vector search and the chunk rows
            return self._search(account_id, knowledge_base_ids, query, top_k, threshold, strict)

    def _search(
        self, account_id: str, knowledge_base_ids: Sequence[str], query: str, top_k: int, threshold: float, strict: bool
    ) -> list[RetrievedChunk]:
        with self._uow() as session:
            kbs = list(
                session.scalars(
                    select(KnowledgeBase).where(
                        KnowledgeBase.account_id == account_id, KnowledgeBase.id.in_(list(knowledge_base_ids))
                    )
                )
            )
        if strict and len(kbs) != len(set(knowledge_base_ids)):
            missing = set(knowledge_base_ids) - {kb.id for kb in kbs}
            raise NotFoundError("knowledge base", sorted(missing)[0])
        matches: list[tuple[float, str, Any]] = []
        query_vectors: dict[tuple[str, str, int], np.ndarray] = {}
        for kb in kbs:
            key = (kb.embedding_provider, kb.embedding_model, kb.embedding_dimensions)
            if key not in query_vectors:  # one embedding per model, however many knowledge bases share it
                query_vectors[key] = self.embedder(*key).embed([query]).vectors[0]
            for match in self.store(kb.vector_store, account_id).query(account_id, kb.id, query_vectors[key], top_k):
                if match.score >= threshold:
                    matches.append((match.score, kb.id, match))
        matches.sort(key=lambda item: -item[0])
        matches = matches[:top_k]
        if not matches:
            return []
        ids = [m.id for _, _, m in matches]
        with self._uow() as session:
            rows = session.execute(
                select(KnowledgeChunk, KnowledgeDocument.name, KnowledgeDocument.source_url)
                .join(KnowledgeDocument, KnowledgeDocument.id == KnowledgeChunk.document_id)
                .where(
                    KnowledgeChunk.id.in_(ids),
                    KnowledgeChunk.account_id == account_id,
                    KnowledgeDocument.status == "ready",  # half-ingested or failed versions are never served
                )
            ).all()
        by_id = {row.KnowledgeChunk.id: row for row in rows}
        results = []
        for score, kb_id, match in matches:
            row = by_id.get(match.id)
            if row is None:  # a vector whose chunk was deleted meanwhile
                continue
            chunk = row.KnowledgeChunk
            results.append(
                RetrievedChunk(
                    text=chunk.text,
                    score=round(float(score), 6),
                    document_id=chunk.document_id,
                    document_name=row.name,
                    knowledge_base_id=kb_id,
                    chunk_id=chunk.id,
                    chunk_index=chunk.chunk_index,
                    page=chunk.page,
                    source_url=row.source_url,
                )
            )
        return results

    def retrieve_for_agent(
        self, account_id: str, knowledge_base_ids: Sequence[str], query: str, top_k: int = 3
    ) -> list[RetrievedChunk]:
        """For a voice turn: never raises for a deleted knowledge base or an empty query, just returns less."""
        if not knowledge_base_ids or not query or not query.strip():
            return []
        return self.search_similar_content(
            account_id, knowledge_base_ids, query, top_k=top_k, threshold=self.settings.kb_agent_min_score
        )

    async def aretrieve_for_agent(
        self, account_id: str, knowledge_base_ids: Sequence[str], query: str, top_k: int = 3
    ) -> list[RetrievedChunk]:
        """``retrieve_for_agent`` for the event loop of a voice turn (database and HTTP work in a thread)."""
        import asyncio

        return await asyncio.to_thread(self.retrieve_for_agent, account_id, knowledge_base_ids, query, top_k)

    # -- re-embedding -----------------------------------------------------------------------------------------
    def update_embeddings(
        self,
        account_id: str,
        kb_id: str,
        *,
        embedding_provider: str | None = None,
        embedding_model: str | None = None,
        embedding_dimensions: int | None = None,
    ) -> KnowledgeBase:
        """Re-embed every chunk of a knowledge base (after a model change, or to repair its vectors).

        Safe against failure: (1) the knowledge base is claimed (``status = reembedding``, committed: a concurrent
        re-embed answers 409 and ingestion waits for it); (2) every chunk is embedded with the new model into a spool
        file while the old vectors and model keep serving queries; (3) only then do the new vectors replace the old
        ones and the new model is recorded: in one transaction for the embedded store, in one store transaction for
        pgvector, by overwriting the same ids on Pinecone. A failure in (2), or in (3) on the embedded and pgvector
        stores, leaves the old vectors and the old model as they were. The embedding tokens are metered.
        """
        with self._uow() as session:
            kb = self.get_knowledge_base(account_id, kb_id, session)
            provider, model, dims = self._embedding_choice(
                embedding_provider or kb.embedding_provider,
                embedding_model or (kb.embedding_model if not embedding_provider else None),
                embedding_dimensions
                or (kb.embedding_dimensions if not (embedding_provider or embedding_model) else None),
            )
            store_name, old_dims = kb.vector_store, kb.embedding_dimensions
        embedder = self.embedder(provider, model, dims)  # 501 now if the provider is not configured
        worker = self._pipeline()  # commit the request's unit of work; the stages below commit on their own
        worker._claim_reembed(account_id, kb_id)
        import tempfile

        with tempfile.TemporaryFile(prefix="airies-reembed-") as spool:
            try:
                chunks, tokens = worker._embed_all(account_id, kb_id, embedder, spool)
                worker._swap_vectors(account_id, kb_id, store_name, old_dims, (provider, model, dims), chunks, spool)
            except BaseException:
                worker._end_reembed(account_id, kb_id)  # the old model (and, but for Pinecone, vectors) stay
                raise
        worker._publish_reembed_usage(account_id, kb_id, provider, model, tokens)
        return self.get_knowledge_base(account_id, kb_id)

    def _reembed_fresh(self) -> Any:
        """Claims of a re-embed older than this are stale (a crashed run): a new one may take over."""
        return utcnow() - timedelta(seconds=self.settings.kb_processing_lease_s)

    def _claim_reembed(self, account_id: str, kb_id: str) -> None:
        cutoff = self._reembed_fresh()
        with self.database.session() as session:
            claimed = session.execute(
                update(KnowledgeBase)
                .where(
                    KnowledgeBase.id == kb_id,
                    KnowledgeBase.account_id == account_id,
                    or_(KnowledgeBase.status != "reembedding", KnowledgeBase.updated_at < cutoff),
                )
                .values(status="reembedding", updated_at=utcnow())
            ).rowcount
        if not claimed:
            raise ConflictError("the knowledge base is already being re-embedded", code="reembedding")
        # Ingestion claims its document, then looks at the knowledge base; we claim the knowledge base, then look at
        # its documents: whichever looks second sees the other, so no document is embedded with the old model
        # after the swap.
        with self.database.session() as session:
            busy = session.scalar(
                select(func.count())
                .select_from(KnowledgeDocument)
                .where(
                    KnowledgeDocument.knowledge_base_id == kb_id,
                    KnowledgeDocument.status == "processing",
                    KnowledgeDocument.processing_started_at >= cutoff,
                )
            )
        if busy:
            self._end_reembed(account_id, kb_id)
            raise ConflictError(
                f"{busy} document(s) of this knowledge base are being ingested; re-embed when they are ready",
                code="ingestion_in_progress",
            )

    def _end_reembed(self, account_id: str, kb_id: str) -> None:
        with self.database.session() as session:
            session.execute(
                update(KnowledgeBase)
                .where(
                    KnowledgeBase.id == kb_id,
                    KnowledgeBase.account_id == account_id,
                    KnowledgeBase.status == "reembedding",
                )
                .values(status="active", updated_at=utcnow())
            )

    def _embed_all(self, account_id: str, kb_id: str, embedder: Embedder, spool: Any) -> tuple[list[Any], int]:
        """Embed every chunk of the knowledge base into ``spool`` (float32 rows in chunk-id order); returns the
        (id, document id, chunk index) of each row and the tokens embedded. Nothing in the store changes."""
        import numpy as np

        batch = max(1, self.settings.kb_embed_batch_chunks)
        chunks: list[Any] = []
        tokens = 0
        last = ""
        while True:
            with self.database.session() as session:
                rows = session.execute(
                    select(
                        KnowledgeChunk.id, KnowledgeChunk.document_id, KnowledgeChunk.chunk_index, KnowledgeChunk.text
                    )
                    .where(
                        KnowledgeChunk.knowledge_base_id == kb_id,
                        KnowledgeChunk.account_id == account_id,
                        KnowledgeChunk.id > last,
                    )
                    .order_by(KnowledgeChunk.id)
                    .limit(batch)
                ).all()
                # Heartbeat: the claim stays fresh however long the knowledge base takes.
                session.execute(update(KnowledgeBase).where(KnowledgeBase.id == kb_id).values(updated_at=utcnow()))
            if not rows:
                return chunks, tokens
            result = self._embed(embedder, [row.text for row in rows])
            tokens += result.tokens
            spool.write(np.ascontiguousarray(result.vectors, dtype="<f4").tobytes())
            chunks.extend((row.id, row.document_id, row.chunk_index) for row in rows)
            last = rows[-1].id

    def _swap_vectors(
        self,
        account_id: str,
        kb_id: str,
        store_name: str,
        old_dims: int,
        choice: tuple[str, str, int],
        chunks: list[Any],
        spool: Any,
    ) -> None:
        import numpy as np

        provider, model, dims = choice
        size = max(1, self.settings.kb_embed_batch_chunks)

        def batches() -> Iterator[list[VectorRecord]]:
            spool.seek(0)
            for start in range(0, len(chunks), size):
                part = chunks[start : start + size]
                vectors = np.frombuffer(spool.read(len(part) * dims * 4), dtype="<f4").reshape(len(part), dims)
                yield vector_records(account_id, kb_id, part, vectors)

        store = self.store(store_name, account_id)
        # The embedded store writes through this unit of work: its vectors and the recorded model commit together.
        with self._uow() as session:
            replace = getattr(store, "replace_collection", None)
            if replace is not None:
                replace(account_id, kb_id, dims, batches())
            else:  # Pinecone: the same ids are overwritten (an index has one dimension)
                if dims != old_dims:
                    store.delete_collection(account_id, kb_id)
                    store.create_collection(account_id, kb_id, dims)
                for records in batches():
                    store.upsert(records)
            # Chunks deleted while we embedded must not come back as vectors.
            existing = set(session.scalars(select(KnowledgeChunk.id).where(KnowledgeChunk.knowledge_base_id == kb_id)))
            gone = [cid for cid, _, _ in chunks if cid not in existing]
            if gone:
                store.delete(account_id, kb_id, gone)
            kb = session.get(KnowledgeBase, kb_id, populate_existing=True)
            if kb is None:
                raise NotFoundError("knowledge base", kb_id)
            kb.embedding_provider, kb.embedding_model, kb.embedding_dimensions = provider, model, dims
            kb.status = "active"
            kb.embeddings_updated_at = utcnow()
            session.flush()

    def _publish_reembed_usage(self, account_id: str, kb_id: str, provider: str, model: str, tokens: int) -> None:
        from airies.billing.schemas import UsageComponent, UsageEvent

        if tokens <= 0:
            return
        event = UsageEvent(
            idempotency_key=f"{kb_id}:reembed:{new_id('rmb')}:embedding_tokens",
            account_id=account_id,
            component=UsageComponent.EMBEDDING_TOKENS,
            quantity=int(tokens),
            provider=provider,
            model=model,
            metadata={"knowledge_base_id": kb_id, "reembed": True},
        )
        try:
            self._publish_usage([event])
        except Exception:  # the vectors are swapped already; metering must not turn that into an error
            log.exception("usage publish failed for the re-embed of %s", kb_id)

    # -- web scraping -----------------------------------------------------------------------------------------
    def create_web_scrape_job(
        self,
        account_id: str,
        kb_id: str,
        start_urls: list[str],
        *,
        max_depth: int | None = None,
        max_pages: int | None = None,
    ) -> KnowledgeScrapeJob:
        from airies.knowledge.crawler import validate_start_url

        if not start_urls:
            raise BadRequestError("start_urls must not be empty")
        for index, url in enumerate(start_urls):
            validate_start_url(url, self.settings, field=f"start_urls.{index}")
        depth = self.settings.kb_scrape_max_depth if max_depth is None else max_depth
        pages = self.settings.kb_scrape_max_pages if max_pages is None else max_pages
        if not 0 <= depth <= 10 or not 1 <= pages <= 1000:
            raise BadRequestError("max_depth must be 0-10 and max_pages 1-1000")
        with self._uow() as session:
            self.get_knowledge_base(account_id, kb_id, session)
            job = KnowledgeScrapeJob(
                id=new_id("kscr"),
                account_id=account_id,
                knowledge_base_id=kb_id,
                start_urls=list(start_urls),
                max_depth=depth,
                max_pages=pages,
                status="queued",
                pages_crawled=0,
                pages_failed=0,
                pages_skipped=0,
            )
            session.add(job)
            session.flush()
        return job

    def enqueue_scrape_job(self, job: KnowledgeScrapeJob) -> bool:
        """Send the job to the scrape queue; False when no queue is configured (the caller runs it inline)."""
        import json

        if not self.settings.kb_scrape_queue_url:
            return False
        if self._sqs is None:
            import boto3

            self._sqs = boto3.client(
                "sqs", region_name=self.settings.aws_region, endpoint_url=self.settings.aws_endpoint_url
            )
        self._sqs.send_message(
            QueueUrl=self.settings.kb_scrape_queue_url,
            MessageBody=json.dumps({"type": "scrape_job", "job_id": job.id, "account_id": job.account_id}),
        )
        return True

    def start_scrape_job(self, job: KnowledgeScrapeJob) -> None:
        """Queue the job, or (no queue: a plain local run) crawl it now, inside this request."""
        if not self.enqueue_scrape_job(job):
            self._pipeline().run_scrape_job(job.id)

    def list_scrape_jobs(self, account_id: str, kb_id: str) -> list[KnowledgeScrapeJob]:
        with self._uow() as session:
            self.get_knowledge_base(account_id, kb_id, session)
            return list(
                session.scalars(
                    select(KnowledgeScrapeJob)
                    .where(KnowledgeScrapeJob.account_id == account_id, KnowledgeScrapeJob.knowledge_base_id == kb_id)
                    .order_by(KnowledgeScrapeJob.id.desc())
                    .limit(100)
                )
            )

    def get_scrape_job(self, account_id: str, kb_id: str, job_id: str) -> KnowledgeScrapeJob:
        with self._uow() as session:
            job = session.scalar(
                select(KnowledgeScrapeJob)
                .where(
                    KnowledgeScrapeJob.id == job_id,
                    KnowledgeScrapeJob.account_id == account_id,
                    KnowledgeScrapeJob.knowledge_base_id == kb_id,
                )
                .execution_options(populate_existing=True)
            )
            if job is None:
                raise NotFoundError("scrape job", job_id)
            return job

    def run_scrape_job(self, job_id: str) -> KnowledgeScrapeJob | None:
        """Crawl and ingest: each fetched page becomes a document; a page that fails is counted, not fatal."""
        from airies.knowledge.crawler import Crawler

        with self.database.session() as session:
            job = session.get(KnowledgeScrapeJob, job_id)
            if job is None or job.status in ("completed", "failed"):
                return job  # redelivered message of a finished job: nothing to do
            job.status = "running"
            job.started_at = utcnow()
            account_id, kb_id = job.account_id, job.knowledge_base_id
            start_urls, depth, limit = list(job.start_urls), job.max_depth, job.max_pages
            done_urls = set(
                session.scalars(select(KnowledgeDocument.source_url).where(KnowledgeDocument.scrape_job_id == job_id))
            )
        crawler = Crawler(self.settings, fetcher=self._fetcher)
        crawled = failed = 0
        started = time.monotonic()
        try:
            for page in crawler.crawl(start_urls, max_depth=depth, max_pages=limit):
                if page.url in done_urls:  # a retried job does not ingest the same page twice
                    continue
                if page.error:
                    failed += 1
                    self._record_failed_page(account_id, kb_id, job_id, page.url, page.error_code, page.error)
                    continue
                try:
                    self.add_document_content(
                        account_id,
                        kb_id,
                        filename=(page.title or page.url)[:200],
                        content_type="text/html",
                        data=page.body,
                        source_type="url",
                        source_url=page.url,
                        scrape_job_id=job_id,
                    )
                    crawled += 1
                except NotFoundError:
                    raise
                except Exception as exc:  # one bad page never sinks the job
                    failed += 1
                    log.warning("scrape page %s failed: %s", page.url, exc)
                with self.database.session() as session:
                    session.execute(
                        update(KnowledgeScrapeJob)
                        .where(KnowledgeScrapeJob.id == job_id)
                        .values(pages_crawled=crawled, pages_failed=failed, pages_skipped=crawler.skipped)
                    )
        except NotFoundError:  # the knowledge base was deleted mid-crawl
            return None
        except Exception as exc:
            with self.database.session() as session:
                job = session.get(KnowledgeScrapeJob, job_id)
                if job is not None:
                    job.status, job.error, job.finished_at = "failed", str(exc)[:2000], utcnow()
            raise
        with self.database.session() as session:
            job = session.get(KnowledgeScrapeJob, job_id)
            if job is None:
                return None
            job.pages_crawled, job.pages_failed, job.pages_skipped = crawled, failed, crawler.skipped
            if crawled == 0 and failed:
                job.status, job.error = "failed", crawler.first_error or "no page could be fetched"
            else:
                job.status = "completed"
            job.finished_at = utcnow()
        log.info("scrape job %s: %d pages, %d failed in %.1fs", job_id, crawled, failed, time.monotonic() - started)
        return job

    def _record_failed_page(
        self, account_id: str, kb_id: str, job_id: str, url: str, code: str | None, reason: str
    ) -> None:
        with self.database.session() as session:
            kb = session.get(KnowledgeBase, kb_id)
            if kb is None:
                raise NotFoundError("knowledge base", kb_id)
            doc = self._new_document(
                kb,
                name=url[:300],
                content_type="text/html",
                source_type="url",
                size_bytes=None,
                source_url=url,
                scrape_job_id=job_id,
                status="failed",
            )
            doc.storage_key = None
            doc.error_code = (code or "fetch_failed")[:60]
            doc.error = reason[:2000]
            session.add(doc)


def build_knowledge_service(
    settings: Settings | None = None, database: Database | None = None, **kwargs: Any
) -> KnowledgeService:
    """The service wired from settings (the conversations capability and every handler use this)."""
    from airies.core.config import get_settings
    from airies.core.database import get_database

    settings = settings or get_settings()
    return KnowledgeService(database or get_database(settings), settings, **kwargs)
