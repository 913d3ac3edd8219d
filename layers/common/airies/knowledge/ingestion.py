"""Ingestion: a document's bytes -> extracted pages -> chunks -> embeddings -> vectors, and its outcome.

Pipeline of one document (the same stages inline and under Step Functions):
``prepare_document`` (claim, download, extract, chunk, store chunk rows) -> ``embed_chunk_range`` per batch
(embed + upsert vectors) -> ``finalise_document`` (counts, status ready, usage). ``process_document`` runs them in
one process, streamed. Any ``DocumentRejected`` ends the document as ``failed`` with a code and a reason
(``failure_reason`` names the code of any other error); nothing else is lost.

Idempotency: chunk and vector ids are ``{document_id}-{index:05d}``, a document is claimed with a conditional
UPDATE (a second delivery while it is processing is skipped), and a document already ``ready`` from the same
object version (S3 ETag) is skipped. A redelivered or duplicated event therefore never duplicates chunks, and a
re-ingested document leaves no orphan vector: its previous version's vectors that the new one lacks are deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote_plus

from sqlalchemy import CursorResult, delete, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError

from airies.billing.schemas import UsageComponent, UsageEvent
from airies.core.errors import (
    AiriesError,
    ConflictError,
    NotAvailableError,
    NotFoundError,
    PaymentRequiredError,
    ProviderError,
    is_transient,
    sqlstate,
)
from airies.core.models import utcnow
from airies.knowledge import extraction as dp
from airies.knowledge.bases import check_kb_size, refresh_counts
from airies.knowledge.chunking import Chunk, iter_chunks
from airies.knowledge.context import KnowledgeContext
from airies.knowledge.models import KnowledgeBase, KnowledgeChunk, KnowledgeDocument
from airies.knowledge.tasks import IngestionExecution
from airies.knowledge.vector_stores.base import vector_records

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

KEY_PATTERN = re.compile(r"^accounts/(?P<account>[^/]+)/knowledge/(?P<kb>[^/]+)/(?P<doc>[^/]+)/(?P<name>.+)$")


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


def chunk_id(document_id: str, index: int) -> str:
    return f"{document_id}-{index:05d}"


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


def handle_object_created(ctx: KnowledgeContext, key: str, *, size: int | None = None, etag: str | None = None) -> str:
    """One S3 ObjectCreated record: ingest inline, or start the state machine for a large document.

    Returns what happened (``processed``, ``failed``, ``started``, ``skipped:<reason>``); raises only for
    transient faults, so the SQS message is retried.
    """
    key = unquote_plus(key)  # S3 event keys arrive URL-encoded
    match = KEY_PATTERN.match(key)
    if match is None:
        return "skipped:not_a_document_key"
    doc_id = match["doc"]
    with ctx.database.session() as session:
        doc = session.get(KnowledgeDocument, doc_id)
        if doc is None or doc.account_id != match["account"] or doc.knowledge_base_id != match["kb"]:
            return "skipped:unknown_document"
        if doc.status == "ready" and etag and doc.processed_etag == etag:
            ctx.counters.documents_skipped += 1
            return "skipped:already_processed"
        if doc.status == "pending_upload":
            doc.status = "uploaded"
        if size is not None:
            doc.size_bytes = size
    if size is not None and size > ctx.settings.kb_max_document_bytes:
        fail_document(
            ctx, doc_id, "too_large", f"the document is {size} bytes; the limit is {ctx.settings.kb_max_document_bytes}"
        )
        return "failed"
    if size is not None:  # a presigned upload may have declared no size (or a smaller one): check what came
        try:
            with ctx.database.session() as session:
                check_kb_size(ctx, session, match["account"], match["kb"], size, replacing=doc_id)
        except PaymentRequiredError as exc:
            fail_document(ctx, doc_id, exc.code, exc.message)
            return "failed"
    arn = ctx.settings.kb_ingestion_state_machine_arn
    if arn and size is not None and size > ctx.settings.kb_large_document_bytes:
        return _start_state_machine(ctx, arn, doc_id, etag)
    status = process_document(ctx, doc_id, etag=etag)
    return status


def _start_state_machine(ctx: KnowledgeContext, arn: str, doc_id: str, etag: str | None) -> str:
    if ctx.sfn is None:
        import boto3  # only where a document is large enough for the state machine

        ctx.sfn = boto3.client(
            "stepfunctions", region_name=ctx.settings.aws_region, endpoint_url=ctx.settings.aws_endpoint_url
        )
    # The execution name is the dedup key: a duplicate event for the same object version cannot start a second run.
    name = re.sub(r"[^A-Za-z0-9_-]", "", f"{doc_id}-{(etag or 'noetag')[:32]}")[:80]
    try:
        ctx.sfn.start_execution(
            stateMachineArn=arn,
            name=name,
            input=json.dumps(IngestionExecution(document_id=doc_id, etag=etag).model_dump()),
        )
    except ctx.sfn.exceptions.ExecutionAlreadyExists:
        return "skipped:execution_exists"
    return "started"


def process_document(
    ctx: KnowledgeContext, document_id: str, *, etag: str | None = None, data: bytes | None = None
) -> str:
    """The whole pipeline in this process, streamed: chunks are embedded and upserted (one worker thread)
    while later pages are still being extracted. Returns the final status (or ``skipped:<reason>``)."""
    begun = _begin(ctx, document_id, etag)
    if isinstance(begun, PreparedDocument):
        return f"skipped:{begun.reason}"
    doc, kb = begun
    batch_size = max(1, ctx.settings.kb_stream_batch_chunks)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kb-embed")
    futures: list[Future[None]] = []
    chunks: list[Chunk] = []
    try:
        try:
            if data is None:
                data = _download(ctx, doc)
            pages, paged, page_count = _open_pages(ctx, doc, data)
            batch: list[Chunk] = []
            for chunk in iter_chunks(pages, kb.chunk_size, kb.chunk_overlap, paged=paged):
                chunks.append(chunk)
                batch.append(chunk)
                if len(batch) >= batch_size:
                    futures.append(executor.submit(_embed_and_upsert, ctx, kb, doc, batch))
                    batch = []
            if batch:
                futures.append(executor.submit(_embed_and_upsert, ctx, kb, doc, batch))
            if not chunks:
                raise dp.no_text(doc.content_type)
            old_ids = _replace_chunks(ctx, doc, chunks, page_count, hashlib.sha256(data).hexdigest())
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:  # let in-flight batches finish before the document's fate is written
                future.cancel()
            wait(futures)
            raise
        finally:
            executor.shutdown(wait=True)
        _drop_stale_vectors(ctx, kb, doc, old_ids, chunks)
        finalise_document(ctx, document_id, etag=etag)
    except dp.DocumentRejected as exc:
        fail_document(ctx, document_id, exc.code, exc.reason, vector_ids=_vector_ids(doc, chunks))
        return "failed"
    except Exception as exc:
        return _after_error(ctx, doc, chunks, exc)
    return "ready"


def _vector_ids(doc: KnowledgeDocument, chunks: Sequence[Chunk]) -> list[str]:
    return [chunk_id(doc.id, c.index) for c in chunks]


def _after_error(ctx: KnowledgeContext, doc: KnowledgeDocument, chunks: Sequence[Chunk], exc: Exception) -> str:
    """An attempt that raised. Its vectors go either way. A permanent error (bad data, a bug, a configuration
    no retry can fix) ends the document ``failed`` with the reason and returns "failed" (the message is
    acknowledged); a transient one releases the document and re-raises, so the message is redelivered, until
    ``kb_max_attempts`` attempts have failed: then the document ends failed too."""
    code, reason = failure_reason(exc)
    vector_ids = _vector_ids(doc, chunks)
    if is_transient(exc):
        attempts = doc.attempts  # counted by the claim of this attempt
        if attempts < ctx.settings.kb_max_attempts:
            log.warning("document %s: attempt %d failed, will be retried: %s", doc.id, attempts, reason)
            _release(ctx, doc.id, f"attempt {attempts} failed and will be retried: {reason}", vector_ids)
            raise exc
        code, reason = "processing_failed", f"gave up after {attempts} attempts: {reason}"
    else:
        log.warning("document %s failed: %s", doc.id, reason, exc_info=exc)
    fail_document(ctx, doc.id, code, reason, vector_ids=vector_ids)
    return "failed"


def _begin(
    ctx: KnowledgeContext, document_id: str, etag: str | None
) -> PreparedDocument | tuple[KnowledgeDocument, KnowledgeBase]:
    """Skip what is done or in flight; otherwise claim the document. Returns a skip or (document, kb)."""
    with ctx.database.session() as session:
        doc = session.get(KnowledgeDocument, document_id)
        if doc is None:
            return PreparedDocument(document_id, skipped=True, reason="unknown_document")
        if doc.status == "ready" and etag and doc.processed_etag == etag:
            ctx.counters.documents_skipped += 1
            return PreparedDocument(document_id, skipped=True, reason="already_processed")
    claimed = _claim(ctx, document_id)
    if claimed is None:
        ctx.counters.documents_skipped += 1
        return PreparedDocument(document_id, skipped=True, reason="in_progress")
    if claimed.attempts > ctx.settings.kb_max_attempts:
        # Every earlier attempt stopped without recording an outcome (the function timed out or ran out of
        # memory): another one would too. End it here, while a delivery is left to say so.
        fail_document(
            ctx,
            document_id,
            "processing_failed",
            f"gave up after {claimed.attempts - 1} attempts that did not finish (time-out or out of memory)",
        )
        return PreparedDocument(document_id, skipped=True, reason="failed:processing_failed")
    with ctx.database.session() as session:
        kb = session.get(KnowledgeBase, claimed.knowledge_base_id)
    if kb is None:
        return PreparedDocument(document_id, skipped=True, reason="unknown_knowledge_base")
    if kb.status == "reembedding" and kb.updated_at >= ctx.lease_cutoff():
        # Its model is changing: vectors of the old one would be lost in the swap. Transient: the message is
        # redelivered (and the document claimed again) after the visibility timeout; waiting is no attempt.
        _release(ctx, document_id, failed_attempt=False)
        raise ConflictError(
            "the knowledge base is being re-embedded; the document is ingested after it", code="reembedding"
        )
    return claimed, kb


def _open_pages(ctx: KnowledgeContext, doc: KnowledgeDocument, data: bytes) -> tuple[Iterator[str], bool, int]:
    """(page texts, paged?, page count); PDFs are read page by page, other formats (no pages) at once."""
    if len(data) > ctx.settings.kb_max_document_bytes:
        raise dp.DocumentRejected(
            "too_large", f"the document is {len(data)} bytes; the limit is {ctx.settings.kb_max_document_bytes}"
        )
    if doc.content_type == dp.PDF:
        if not data.strip():
            raise dp.DocumentRejected("empty_document", "the document is empty")
        reader = dp.open_pdf(data, max_pages=ctx.settings.kb_max_pages)
        return dp.iter_pdf_pages(reader), True, len(reader.pages)  # a one-page PDF cites page 1 too
    extracted = dp.extract(
        data,
        doc.content_type,
        max_pages=ctx.settings.kb_max_pages,
        max_decompressed_bytes=ctx.settings.kb_max_decompressed_bytes,
    )
    return iter(extracted.pages), False, extracted.page_count


def _embed_and_upsert(
    ctx: KnowledgeContext, kb: KnowledgeBase, doc: KnowledgeDocument, chunks: Sequence[Chunk]
) -> None:
    vectors = generate_embeddings(ctx, kb, [c.text for c in chunks])
    keys = [(chunk_id(doc.id, c.index), doc.id, c.index) for c in chunks]
    ctx.store(kb.vector_store, doc.account_id).upsert(
        vector_records(doc.account_id, doc.knowledge_base_id, keys, vectors)
    )


def _drop_stale_vectors(
    ctx: KnowledgeContext, kb: KnowledgeBase, doc: KnowledgeDocument, old_ids: Sequence[str], chunks: Sequence[Chunk]
) -> None:
    """Vectors of the previous version's chunks that the new version no longer has."""
    new_ids = {chunk_id(doc.id, c.index) for c in chunks}
    stale = [i for i in old_ids if i not in new_ids]
    if stale:
        ctx.store(kb.vector_store, doc.account_id).delete(doc.account_id, doc.knowledge_base_id, stale)


def _claim(ctx: KnowledgeContext, document_id: str) -> KnowledgeDocument | None:
    cutoff = ctx.lease_cutoff()
    with ctx.database.session() as session:
        claimed = cast(
            CursorResult[Any],
            session.execute(
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
            ),
        ).rowcount
        if not claimed:
            return None
        return session.get(KnowledgeDocument, document_id)


def _release(
    ctx: KnowledgeContext,
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
    _settle(ctx, document_id, values, vector_ids if failed_attempt else None, only_processing=True)


def _settle(
    ctx: KnowledgeContext,
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
    with ctx.database.session() as session:
        doc = session.get(KnowledgeDocument, document_id)
        if doc is None:
            return
        account_id, kb_id = doc.account_id, doc.knowledge_base_id
        kb = session.get(KnowledgeBase, kb_id)
        store_name = kb.vector_store if kb is not None else None
        chunk_ids = set(session.scalars(select(KnowledgeChunk.id).where(KnowledgeChunk.document_id == document_id)))
    if vector_ids is not None and store_name is not None and (chunk_ids or vector_ids):
        try:
            ctx.store(store_name, account_id).delete(account_id, kb_id, sorted(chunk_ids | set(vector_ids)))
        except Exception:
            log.exception("could not remove the vectors of document %s", document_id)
    with ctx.database.session() as session:
        query = update(KnowledgeDocument).where(KnowledgeDocument.id == document_id)
        if only_processing:
            query = query.where(KnowledgeDocument.status == "processing")
        if vector_ids is not None:
            values = {**values, "chunk_count": 0, "token_count": 0}
        if not cast(CursorResult[Any], session.execute(query.values(**values, updated_at=utcnow()))).rowcount:
            return
        if vector_ids is not None:
            session.execute(delete(KnowledgeChunk).where(KnowledgeChunk.document_id == document_id))
        kb = session.get(KnowledgeBase, kb_id)
        if kb is not None:
            refresh_counts(session, kb)


def prepare_document(
    ctx: KnowledgeContext, document_id: str, *, etag: str | None = None, data: bytes | None = None
) -> PreparedDocument:
    """State-machine stage 1: claim, download, extract and chunk; chunk rows are stored, vectors come in
    ``embed_chunk_range`` (one Map iteration per batch)."""
    begun = _begin(ctx, document_id, etag)
    if isinstance(begun, PreparedDocument):
        return begun
    doc, kb = begun
    try:
        if data is None:
            data = _download(ctx, doc)
        pages, paged, page_count = _open_pages(ctx, doc, data)
        chunks = list(iter_chunks(pages, kb.chunk_size, kb.chunk_overlap, paged=paged))
        if not chunks:
            raise dp.no_text(doc.content_type)
    except dp.DocumentRejected as exc:
        fail_document(ctx, document_id, exc.code, exc.reason)
        return PreparedDocument(document_id, skipped=True, reason=f"failed:{exc.code}")
    old_ids = _replace_chunks(ctx, doc, chunks, page_count, hashlib.sha256(data).hexdigest())
    _drop_stale_vectors(ctx, kb, doc, old_ids, chunks)
    size = max(1, ctx.settings.kb_embed_batch_chunks)
    batches = [
        {"document_id": document_id, "start": start, "end": min(start + size, len(chunks))}
        for start in range(0, len(chunks), size)
    ]
    return PreparedDocument(document_id, chunk_count=len(chunks), batches=batches)


def _download(ctx: KnowledgeContext, doc: KnowledgeDocument) -> bytes:
    if doc.storage_key is None:  # a web page that failed: nothing was stored
        raise dp.DocumentRejected("missing_object", "the document has no stored content")
    try:
        return ctx.storage.download(doc.account_id, doc.storage_key)
    except NotFoundError as exc:
        raise dp.DocumentRejected("missing_object", "the uploaded object is gone from storage") from exc


def _replace_chunks(
    ctx: KnowledgeContext, doc: KnowledgeDocument, chunks: Sequence[Chunk], pages: int, sha: str
) -> list[str]:
    with ctx.database.session() as session:
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


def generate_embeddings(ctx: KnowledgeContext, kb: KnowledgeBase, texts: list[str]) -> np.ndarray:
    embedder = ctx.embedder(kb.embedding_provider, kb.embedding_model, kb.embedding_dimensions)
    return ctx.embed(embedder, texts).vectors


def store_embeddings(
    ctx: KnowledgeContext, kb: KnowledgeBase, chunks: Sequence[KnowledgeChunk], vectors: np.ndarray
) -> None:
    keys = [(c.id, c.document_id, c.chunk_index) for c in chunks]
    ctx.store(kb.vector_store, kb.account_id).upsert(vector_records(kb.account_id, kb.id, keys, vectors))


def embed_chunk_range(ctx: KnowledgeContext, document_id: str, start: int, end: int) -> int:
    """Embed chunks [start, end) of a document and upsert their vectors (idempotent: ids are stable)."""
    with ctx.database.session() as session:
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
    vectors = generate_embeddings(ctx, kb, [c.text for c in chunks])
    store_embeddings(ctx, kb, chunks, vectors)
    return len(chunks)


def finalise_document(ctx: KnowledgeContext, document_id: str, *, etag: str | None = None) -> None:
    with ctx.database.session() as session:
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
    ctx.counters.documents_processed += 1
    try:
        ctx.publish_usage(events)
    except Exception:  # metering must never lose the document; keys make a later replay safe
        log.exception("usage publish failed for document %s", document_id)


def fail_document(
    ctx: KnowledgeContext, document_id: str, code: str, reason: str, *, vector_ids: Sequence[str] = ()
) -> None:
    """End a document ``failed`` with a code and a reason. A failed document holds nothing a query could reach:
    its chunk rows and its vectors (also ``vector_ids``: upserted by the attempt that failed) are removed."""
    _settle(
        ctx,
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
    ctx.counters.documents_failed += 1
