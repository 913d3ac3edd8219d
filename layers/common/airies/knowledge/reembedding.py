"""Re-embedding: every chunk of a knowledge base embedded again (a new model, or repaired vectors), and swapped in
only when all of it is done; the old vectors and model serve queries until then.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from typing import IO, Any, cast

from sqlalchemy import CursorResult, func, or_, select, update

from airies.billing.schemas import UsageComponent, UsageEvent
from airies.core.errors import ConflictError, NotFoundError
from airies.core.ids import new_id
from airies.core.models import utcnow
from airies.knowledge import bases
from airies.knowledge.context import KnowledgeContext
from airies.knowledge.embedders.base import Embedder
from airies.knowledge.models import KnowledgeBase, KnowledgeChunk, KnowledgeDocument
from airies.knowledge.vector_stores.base import VectorRecord, vector_records

log = logging.getLogger(__name__)

ChunkKey = tuple[str, str, int]  # (chunk id, document id, chunk index)


def update_embeddings(
    ctx: KnowledgeContext,
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
    with ctx.unit_of_work() as session:
        kb = bases.get_knowledge_base(ctx, account_id, kb_id, session)
        provider, model, dims = bases.embedding_choice(
            ctx,
            embedding_provider or kb.embedding_provider,
            embedding_model or (kb.embedding_model if not embedding_provider else None),
            embedding_dimensions or (kb.embedding_dimensions if not (embedding_provider or embedding_model) else None),
        )
        store_name, old_dims = kb.vector_store, kb.embedding_dimensions
    embedder = ctx.embedder(provider, model, dims)  # 501 now if the provider is not configured
    worker = ctx.pipeline()  # commit the request's unit of work; the stages below commit on their own
    _claim_reembed(worker, account_id, kb_id)
    with tempfile.TemporaryFile(prefix="airies-reembed-") as spool:
        try:
            chunks, tokens = _embed_all(worker, account_id, kb_id, embedder, spool)
            _swap_vectors(worker, account_id, kb_id, store_name, old_dims, (provider, model, dims), chunks, spool)
        except BaseException:
            _end_reembed(worker, account_id, kb_id)  # the old model (and, but for Pinecone, vectors) stay
            raise
    _publish_reembed_usage(worker, account_id, kb_id, provider, model, tokens)
    return bases.get_knowledge_base(ctx, account_id, kb_id)


def _claim_reembed(ctx: KnowledgeContext, account_id: str, kb_id: str) -> None:
    cutoff = ctx.lease_cutoff()
    with ctx.database.session() as session:
        claimed = cast(
            CursorResult[Any],
            session.execute(
                update(KnowledgeBase)
                .where(
                    KnowledgeBase.id == kb_id,
                    KnowledgeBase.account_id == account_id,
                    or_(KnowledgeBase.status != "reembedding", KnowledgeBase.updated_at < cutoff),
                )
                .values(status="reembedding", updated_at=utcnow())
            ),
        ).rowcount
    if not claimed:
        raise ConflictError("the knowledge base is already being re-embedded", code="reembedding")
    # Ingestion claims its document, then looks at the knowledge base; we claim the knowledge base, then look at
    # its documents: whichever looks second sees the other, so no document is embedded with the old model
    # after the swap.
    with ctx.database.session() as session:
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
        _end_reembed(ctx, account_id, kb_id)
        raise ConflictError(
            f"{busy} document(s) of this knowledge base are being ingested; re-embed when they are ready",
            code="ingestion_in_progress",
        )


def _end_reembed(ctx: KnowledgeContext, account_id: str, kb_id: str) -> None:
    with ctx.database.session() as session:
        session.execute(
            update(KnowledgeBase)
            .where(
                KnowledgeBase.id == kb_id,
                KnowledgeBase.account_id == account_id,
                KnowledgeBase.status == "reembedding",
            )
            .values(status="active", updated_at=utcnow())
        )


def _embed_all(
    ctx: KnowledgeContext, account_id: str, kb_id: str, embedder: Embedder, spool: IO[bytes]
) -> tuple[list[ChunkKey], int]:
    """Embed every chunk of the knowledge base into ``spool`` (float32 rows in chunk-id order); returns the
    (id, document id, chunk index) of each row and the tokens embedded. Nothing in the store changes."""
    import numpy as np  # lazy, as in embedders.base.normalise_rows: numpy stays off cold starts that never embed

    batch = max(1, ctx.settings.kb_embed_batch_chunks)
    chunks: list[ChunkKey] = []
    tokens = 0
    last = ""
    while True:
        with ctx.database.session() as session:
            rows = session.execute(
                select(KnowledgeChunk.id, KnowledgeChunk.document_id, KnowledgeChunk.chunk_index, KnowledgeChunk.text)
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
        result = ctx.embed(embedder, [row.text for row in rows])
        tokens += result.tokens
        spool.write(np.ascontiguousarray(result.vectors, dtype="<f4").tobytes())
        chunks.extend((row.id, row.document_id, row.chunk_index) for row in rows)
        last = rows[-1].id


def _swap_vectors(
    ctx: KnowledgeContext,
    account_id: str,
    kb_id: str,
    store_name: str,
    old_dims: int,
    choice: tuple[str, str, int],
    chunks: list[ChunkKey],
    spool: IO[bytes],
) -> None:
    provider, model, dims = choice
    size = max(1, ctx.settings.kb_embed_batch_chunks)

    def batches() -> Iterator[list[VectorRecord]]:
        import numpy as np  # lazy, as in embedders.base.normalise_rows: numpy stays off cold starts that never embed

        spool.seek(0)
        for start in range(0, len(chunks), size):
            part = chunks[start : start + size]
            vectors = np.frombuffer(spool.read(len(part) * dims * 4), dtype="<f4").reshape(len(part), dims)
            yield vector_records(account_id, kb_id, part, vectors)

    store = ctx.store(store_name, account_id)
    # The embedded store writes through this unit of work: its vectors and the recorded model commit together.
    with ctx.unit_of_work() as session:
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


def _publish_reembed_usage(
    ctx: KnowledgeContext, account_id: str, kb_id: str, provider: str, model: str, tokens: int
) -> None:
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
        ctx.publish_usage([event])
    except Exception:  # the vectors are swapped already; metering must not turn that into an error
        log.exception("usage publish failed for the re-embed of %s", kb_id)
