"""Exact search over vectors kept in the platform database (SQLite or PostgreSQL), numpy for the maths.

Vectors live in ``kb_vectors`` as float32 blobs. A query reads a knowledge base's matrix once per
container and keeps it while the collection's ``revision`` (a random token rewritten by every write)
is unchanged, so a warm query costs one primary-key lookup plus a matrix-vector product: ~1 ms for
10,000 chunks of 512 dims. Right for local runs and small/medium knowledge bases; use pgvector or
Pinecone past a few hundred thousand chunks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, delete, func, insert, select, update
from sqlalchemy.orm import Session

from airies.core.ids import new_id
from airies.knowledge.models import KnowledgeVector, KnowledgeVectorCollection
from airies.knowledge.vector_stores.base import StoreStats, VectorMatch, VectorRecord

if TYPE_CHECKING:
    import numpy as np

SessionScope = Callable[[], AbstractContextManager[Session]]


@dataclass
class _Matrix:
    revision: str
    ids: list[str]
    document_ids: list[str]
    chunk_indexes: np.ndarray
    matrix: np.ndarray


# Container-wide cache: (database url, account, knowledge base) -> matrix at a revision.
_CACHE: dict[tuple[str, str, str], _Matrix] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_MAX_ENTRIES = 64


class EmbeddedVectorStore:
    name = "embedded"

    def __init__(self, session_scope: SessionScope, cache_key: str) -> None:
        self._scope = session_scope
        self._cache_key = cache_key
        self.stats = StoreStats()

    def _touch(self, session: Session, account_id: str, knowledge_base_id: str, dimensions: int | None) -> None:
        revision = new_id("rev")
        updated = cast(
            CursorResult[Any],
            session.execute(
                update(KnowledgeVectorCollection)
                .where(
                    KnowledgeVectorCollection.knowledge_base_id == knowledge_base_id,
                    KnowledgeVectorCollection.account_id == account_id,
                )
                .values(revision=revision)
            ),
        ).rowcount
        if not updated:
            session.add(
                KnowledgeVectorCollection(
                    knowledge_base_id=knowledge_base_id,
                    account_id=account_id,
                    dimensions=dimensions or 0,
                    revision=revision,
                )
            )
            session.flush()

    def create_collection(self, account_id: str, knowledge_base_id: str, dimensions: int) -> None:
        with self._scope() as session:
            self._touch(session, account_id, knowledge_base_id, dimensions)

    def delete_collection(self, account_id: str, knowledge_base_id: str) -> None:
        with self._scope() as session:
            session.execute(
                delete(KnowledgeVector).where(
                    KnowledgeVector.account_id == account_id, KnowledgeVector.knowledge_base_id == knowledge_base_id
                )
            )
            session.execute(
                delete(KnowledgeVectorCollection).where(
                    KnowledgeVectorCollection.account_id == account_id,
                    KnowledgeVectorCollection.knowledge_base_id == knowledge_base_id,
                )
            )
        self.stats.delete_requests += 1
        with _CACHE_LOCK:
            _CACHE.pop((self._cache_key, account_id, knowledge_base_id), None)

    def replace_collection(
        self, account_id: str, knowledge_base_id: str, dimensions: int, batches: Iterable[list[VectorRecord]]
    ) -> None:
        """Every vector of a knowledge base replaced by ``batches``, in one unit of work: when the caller's scope is
        a transaction (the re-embed), a failure anywhere leaves the old vectors as they were."""
        with self._scope():
            self.delete_collection(account_id, knowledge_base_id)
            self.create_collection(account_id, knowledge_base_id, dimensions)
            for records in batches:
                self.upsert(records)

    def upsert(self, records: list[VectorRecord]) -> None:
        import numpy as np  # lazy, as in embedders.base.normalise_rows: numpy stays off cold starts that never embed

        if not records:
            return
        account_id, kb_id = records[0].account_id, records[0].knowledge_base_id
        if any(r.account_id != account_id or r.knowledge_base_id != kb_id for r in records):
            raise ValueError("one upsert call must target one account and knowledge base")
        ids = [r.id for r in records]
        with self._scope() as session:
            # Delete-then-insert is an upsert that works the same on SQLite and PostgreSQL.
            for start in range(0, len(ids), 500):
                session.execute(delete(KnowledgeVector).where(KnowledgeVector.id.in_(ids[start : start + 500])))
            # Core executemany: no ORM objects for what is written once and read as a matrix.
            session.execute(
                insert(KnowledgeVector),
                [
                    {
                        "id": r.id,
                        "account_id": r.account_id,
                        "knowledge_base_id": r.knowledge_base_id,
                        "document_id": r.document_id,
                        "chunk_index": r.chunk_index,
                        "dimensions": int(r.values.shape[0]),
                        "embedding": np.asarray(r.values, dtype="<f4").tobytes(),
                    }
                    for r in records
                ],
            )
            self._touch(session, account_id, kb_id, int(records[0].values.shape[0]))
        self.stats.upsert_requests += 1
        self.stats.upserted += len(records)

    def delete(self, account_id: str, knowledge_base_id: str, ids: list[str]) -> None:
        if not ids:
            return
        with self._scope() as session:
            for start in range(0, len(ids), 500):
                session.execute(
                    delete(KnowledgeVector).where(
                        KnowledgeVector.account_id == account_id,
                        KnowledgeVector.knowledge_base_id == knowledge_base_id,
                        KnowledgeVector.id.in_(ids[start : start + 500]),
                    )
                )
            self._touch(session, account_id, knowledge_base_id, None)
        self.stats.delete_requests += 1

    def count(self, account_id: str, knowledge_base_id: str) -> int:
        with self._scope() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(KnowledgeVector)
                    .where(
                        KnowledgeVector.account_id == account_id,
                        KnowledgeVector.knowledge_base_id == knowledge_base_id,
                    )
                )
                or 0
            )

    def _matrix(self, session: Session, account_id: str, knowledge_base_id: str) -> _Matrix | None:
        import numpy as np  # lazy, as in embedders.base.normalise_rows: numpy stays off cold starts that never embed

        revision = session.scalar(
            select(KnowledgeVectorCollection.revision).where(
                KnowledgeVectorCollection.knowledge_base_id == knowledge_base_id,
                KnowledgeVectorCollection.account_id == account_id,
            )
        )
        if revision is None:
            return None
        key = (self._cache_key, account_id, knowledge_base_id)
        cached = _CACHE.get(key)
        if cached is not None and cached.revision == revision:
            return cached
        rows = session.execute(
            select(
                KnowledgeVector.id, KnowledgeVector.document_id, KnowledgeVector.chunk_index, KnowledgeVector.embedding
            )
            .where(KnowledgeVector.account_id == account_id, KnowledgeVector.knowledge_base_id == knowledge_base_id)
            .order_by(KnowledgeVector.id)
        ).all()
        if rows:
            matrix = np.vstack([np.frombuffer(row.embedding, dtype="<f4") for row in rows])
        else:
            matrix = np.zeros((0, 1), dtype=np.float32)
        entry = _Matrix(
            revision=revision,
            ids=[row.id for row in rows],
            document_ids=[row.document_id for row in rows],
            chunk_indexes=np.asarray([row.chunk_index for row in rows], dtype=np.int64),
            matrix=matrix,
        )
        with _CACHE_LOCK:
            if len(_CACHE) >= _CACHE_MAX_ENTRIES:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = entry
        return entry

    def query(self, account_id: str, knowledge_base_id: str, vector: np.ndarray, top_k: int) -> list[VectorMatch]:
        import numpy as np  # lazy, as in embedders.base.normalise_rows: numpy stays off cold starts that never embed

        self.stats.query_requests += 1
        with self._scope() as session:
            entry = self._matrix(session, account_id, knowledge_base_id)
        if entry is None or not entry.ids or top_k <= 0:
            return []
        if entry.matrix.shape[1] != vector.shape[0]:
            raise ValueError(
                f"query vector has {vector.shape[0]} dims, the collection {entry.matrix.shape[1]}: re-embed the knowledge base"
            )
        scores = entry.matrix @ vector.astype(np.float32, copy=False)
        k = min(top_k, len(entry.ids))
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [
            VectorMatch(
                id=entry.ids[i],
                score=float(scores[i]),
                document_id=entry.document_ids[i],
                chunk_index=int(entry.chunk_indexes[i]),
            )
            for i in best
        ]
