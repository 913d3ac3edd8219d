"""Knowledge bases: create (embedding model and vector store chosen once), read, update, delete; their counts and
their size against the account's tier.

Tenancy: every read is filtered by account; a foreign id is a 404.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from airies.billing.usage import UsageService
from airies.core.errors import BadRequestError, NotFoundError
from airies.core.ids import new_id
from airies.knowledge.context import KnowledgeContext
from airies.knowledge.embedders import EMBEDDERS, check_model
from airies.knowledge.embedders.openai import MODEL_DIMENSIONS
from airies.knowledge.models import KnowledgeBase, KnowledgeChunk, KnowledgeDocument, KnowledgeScrapeJob
from airies.knowledge.vector_stores import VECTOR_STORES


def create_knowledge_base(
    ctx: KnowledgeContext,
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
    provider, model, dims = embedding_choice(ctx, embedding_provider, embedding_model, embedding_dimensions)
    store_name = vector_store or ctx.settings.kb_vector_store
    if store_name not in VECTOR_STORES:
        raise BadRequestError(f"vector_store must be one of {', '.join(VECTOR_STORES)}")
    size = chunk_size or ctx.settings.kb_chunk_tokens
    overlap = ctx.settings.kb_chunk_overlap_tokens if chunk_overlap is None else chunk_overlap
    _check_chunking(size, overlap)
    ctx.embedder(provider, model, dims)  # fail now (501) if the provider is not configured
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
    with ctx.unit_of_work() as session:
        session.add(kb)
        session.flush()
    ctx.store(store_name, account_id).create_collection(account_id, kb.id, dims)
    return kb


def _check_chunking(size: int, overlap: int) -> None:
    if not 32 <= size <= 2000 or not 0 <= overlap <= size // 2:
        raise BadRequestError("chunk_size must be 32-2000 tokens and chunk_overlap at most half of it")


def embedding_choice(
    ctx: KnowledgeContext, provider: str | None, model: str | None, dims: int | None
) -> tuple[str, str, int]:
    """(provider, model, dimensions) from what was asked, the configured defaults and the provider's defaults;
    422 for a model the provider does not have."""
    settings = ctx.settings
    provider = provider or settings.kb_embedding_provider
    kind = EMBEDDERS.get(provider)
    if kind is None:
        raise BadRequestError(f"embedding_provider must be one of {', '.join(EMBEDDERS)}")
    if provider == settings.kb_embedding_provider:
        model = model or settings.kb_embedding_model
        dims = dims or settings.kb_embedding_dimensions
    if provider == "openai" and model and not dims:
        dims = MODEL_DIMENSIONS.get(model)
    choice = (provider, model or kind.default_model, int(dims or kind.default_dimensions))
    check_model(*choice)
    return choice


def list_knowledge_bases(
    ctx: KnowledgeContext, account_id: str, *, limit: int = 20, cursor: str | None = None
) -> tuple[list[KnowledgeBase], str | None]:
    with ctx.unit_of_work() as session:
        query = select(KnowledgeBase).where(KnowledgeBase.account_id == account_id)
        if cursor:
            query = query.where(KnowledgeBase.id < cursor)
        rows = list(session.scalars(query.order_by(KnowledgeBase.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more else None)


def get_knowledge_base(
    ctx: KnowledgeContext, account_id: str, kb_id: str, session: Session | None = None
) -> KnowledgeBase:
    if session is None:
        with ctx.unit_of_work() as own:
            return get_knowledge_base(ctx, account_id, kb_id, own)
    kb = session.scalar(
        select(KnowledgeBase)
        .where(KnowledgeBase.id == kb_id, KnowledgeBase.account_id == account_id)
        .execution_options(populate_existing=True)  # the pipeline may have changed it in another session
    )
    if kb is None:
        raise NotFoundError("knowledge base", kb_id)
    return kb


def update_knowledge_base(ctx: KnowledgeContext, account_id: str, kb_id: str, patch: dict[str, Any]) -> KnowledgeBase:
    allowed = {"name", "description", "chunk_size", "chunk_overlap"}
    unknown = set(patch) - allowed
    if unknown:
        raise BadRequestError(
            f"cannot update {', '.join(sorted(unknown))}; change the embedding model with POST /reembed"
        )
    with ctx.unit_of_work() as session:
        kb = get_knowledge_base(ctx, account_id, kb_id, session)
        for key, value in patch.items():
            if value is not None or key == "description":
                setattr(kb, key, value)
        _check_chunking(kb.chunk_size, kb.chunk_overlap)
        session.flush()
        return kb


def delete_knowledge_base(ctx: KnowledgeContext, account_id: str, kb_id: str) -> None:
    with ctx.unit_of_work() as session:
        kb = get_knowledge_base(ctx, account_id, kb_id, session)
        store_name = kb.vector_store
        session.execute(delete(KnowledgeChunk).where(KnowledgeChunk.knowledge_base_id == kb_id))
        session.execute(delete(KnowledgeDocument).where(KnowledgeDocument.knowledge_base_id == kb_id))
        session.execute(delete(KnowledgeScrapeJob).where(KnowledgeScrapeJob.knowledge_base_id == kb_id))
        session.delete(kb)
        session.flush()
    ctx.store(store_name, account_id).delete_collection(account_id, kb_id)
    ctx.storage.delete_prefix(account_id, f"knowledge/{kb_id}/")


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


def _content_bytes(session: Session, kb_id: str, *, excluding: str | None = None) -> int:
    """Bytes a knowledge base holds: its documents' sizes, failed ones aside (their content is not kept)."""
    query = select(func.coalesce(func.sum(KnowledgeDocument.size_bytes), 0)).where(
        KnowledgeDocument.knowledge_base_id == kb_id, KnowledgeDocument.status != "failed"
    )
    if excluding is not None:
        query = query.where(KnowledgeDocument.id != excluding)
    return int(session.scalar(query) or 0)


def check_kb_size(
    ctx: KnowledgeContext,
    session: Session,
    account_id: str,
    kb_id: str,
    adding: int | None,
    *,
    replacing: str | None = None,
) -> None:
    """402 ``kb_size_limit`` when the knowledge base would exceed its tier's size with ``adding`` bytes
    (``replacing``: the document whose current size the new content replaces)."""
    if adding is None:
        return
    total = _content_bytes(session, kb_id, excluding=replacing) + adding
    UsageService(ctx.database).check_kb_size(account_id, total_bytes=total, session=session)
