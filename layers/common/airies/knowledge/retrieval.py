"""Retrieval: a query embedded once per model, the top chunks across knowledge bases, fast enough for a voice turn.

Tenancy: only the account's knowledge bases are searched, every vector query is scoped by account and knowledge
base inside the store, and only chunks of ready documents are served.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from airies.core.errors import BadRequestError, NotFoundError
from airies.core.observability import provider_span
from airies.knowledge.context import KnowledgeContext
from airies.knowledge.models import KnowledgeBase, KnowledgeChunk, KnowledgeDocument

if TYPE_CHECKING:
    import numpy as np


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


def query_knowledge_base(
    ctx: KnowledgeContext, account_id: str, kb_id: str, query: str, top_k: int = 5, threshold: float = 0.0
) -> list[RetrievedChunk]:
    return search_similar_content(ctx, account_id, [kb_id], query, top_k=top_k, threshold=threshold, strict=True)


def search_similar_content(
    ctx: KnowledgeContext,
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
    with ctx.unit_of_work():  # one session for the lookups, the (embedded) vector search and the chunk rows
        return _search(ctx, account_id, knowledge_base_ids, query, top_k, threshold, strict)


def _search(
    ctx: KnowledgeContext,
    account_id: str,
    knowledge_base_ids: Sequence[str],
    query: str,
    top_k: int,
    threshold: float,
    strict: bool,
) -> list[RetrievedChunk]:
    with ctx.unit_of_work() as session:
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
            with provider_span("embeddings", kb.embedding_provider):
                query_vectors[key] = ctx.embedder(*key).embed([query]).vectors[0]
        with provider_span("vector_store", kb.vector_store):
            found = ctx.store(kb.vector_store, account_id).query(account_id, kb.id, query_vectors[key], top_k)
        for match in found:
            if match.score >= threshold:
                matches.append((match.score, kb.id, match))
    matches.sort(key=lambda item: -item[0])
    matches = matches[:top_k]
    if not matches:
        return []
    ids = [m.id for _, _, m in matches]
    with ctx.unit_of_work() as session:
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
    ctx: KnowledgeContext, account_id: str, knowledge_base_ids: Sequence[str], query: str, top_k: int = 3
) -> list[RetrievedChunk]:
    """For a voice turn: never raises for a deleted knowledge base or an empty query, just returns less."""
    if not knowledge_base_ids or not query or not query.strip():
        return []
    return search_similar_content(
        ctx, account_id, knowledge_base_ids, query, top_k=top_k, threshold=ctx.settings.kb_agent_min_score
    )


async def aretrieve_for_agent(
    ctx: KnowledgeContext, account_id: str, knowledge_base_ids: Sequence[str], query: str, top_k: int = 3
) -> list[RetrievedChunk]:
    """``retrieve_for_agent`` for the event loop of a voice turn (database and HTTP work in a thread)."""
    return await asyncio.to_thread(retrieve_for_agent, ctx, account_id, knowledge_base_ids, query, top_k)
