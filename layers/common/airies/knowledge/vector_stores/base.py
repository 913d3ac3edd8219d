"""The vector-store interface: one collection per knowledge base, every call scoped by account AND knowledge base.

Implementations: ``embedded`` (exact search over vectors in the platform database, numpy), ``pinecone``
(official SDK, one namespace per knowledge base) and ``pgvector`` (PostgreSQL ``vector`` + HNSW).
A query never returns a vector of another account or knowledge base, whatever the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class VectorRecord:
    id: str  # the chunk id: stable, so re-upserting the same chunk overwrites instead of duplicating
    values: np.ndarray  # 1-d float32, L2-normalised
    account_id: str
    knowledge_base_id: str
    document_id: str
    chunk_index: int


@dataclass(frozen=True)
class VectorMatch:
    id: str
    score: float  # cosine similarity in [-1, 1]
    document_id: str
    chunk_index: int


@dataclass
class StoreStats:
    upsert_requests: int = 0
    upserted: int = 0
    query_requests: int = 0
    delete_requests: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class VectorStore(Protocol):
    name: str
    stats: StoreStats

    def create_collection(self, account_id: str, knowledge_base_id: str, dimensions: int) -> None: ...

    def delete_collection(self, account_id: str, knowledge_base_id: str) -> None: ...

    def upsert(self, records: list[VectorRecord]) -> None:
        """Insert or overwrite by id; all records of one call belong to one account and knowledge base."""
        ...

    def query(self, account_id: str, knowledge_base_id: str, vector: np.ndarray, top_k: int) -> list[VectorMatch]: ...

    def delete(self, account_id: str, knowledge_base_id: str, ids: list[str]) -> None: ...

    def count(self, account_id: str, knowledge_base_id: str) -> int: ...


def vector_records(
    account_id: str, kb_id: str, keys: Sequence[tuple[str, str, int]], vectors: np.ndarray
) -> list[VectorRecord]:
    """Store records of one knowledge base: ``keys`` are (chunk id, document id, chunk index), row n of ``vectors``
    belongs to ``keys[n]``."""
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
