"""pgvector inside PostgreSQL: the store for deployments without Pinecone (Aurora and RDS ship the extension).

One table ``kb_pgvectors`` holds every knowledge base's vectors (untyped ``vector`` column plus a
``dimensions`` column); an HNSW cosine index per common dimension is a partial expression index
(``embedding::vector(D)`` where ``dimensions = D``), so knowledge bases with different models share the
table. The migration runs ``PGVECTOR_DDL`` only where the extension is available; ``ensure_schema``
runs the same idempotent DDL for a database that gained the extension later.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from sqlalchemy import Connection, text

from airies.core.database import Database
from airies.core.errors import NotAvailableError
from airies.knowledge.vector_stores.base import StoreStats, VectorMatch, VectorRecord

if TYPE_CHECKING:
    import numpy as np

HNSW_DIMENSIONS = (384, 512, 1536)  # pgvector's HNSW indexes at most 2,000 dims; others are scanned exactly

PGVECTOR_DDL = [
    "CREATE EXTENSION IF NOT EXISTS vector",
    """CREATE TABLE IF NOT EXISTS kb_pgvectors (
        id VARCHAR(40) PRIMARY KEY,
        account_id VARCHAR(40) NOT NULL,
        knowledge_base_id VARCHAR(40) NOT NULL,
        document_id VARCHAR(40) NOT NULL,
        chunk_index INTEGER NOT NULL,
        dimensions INTEGER NOT NULL,
        embedding vector NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS ix_kb_pgvectors_kb ON kb_pgvectors (knowledge_base_id, account_id)",
    *(
        f"CREATE INDEX IF NOT EXISTS ix_kb_pgvectors_hnsw_{d} ON kb_pgvectors "
        f"USING hnsw ((embedding::vector({d})) vector_cosine_ops) WHERE dimensions = {d}"
        for d in HNSW_DIMENSIONS
    ),
]

AVAILABLE_SQL = "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"
INSTALLED_SQL = "SELECT 1 FROM pg_extension WHERE extname = 'vector'"


def _literal(vector: np.ndarray) -> str:
    import numpy as np  # lazy, as in embedders.base.normalise_rows: numpy stays off cold starts that never embed

    return "[" + ",".join(f"{x:.7g}" for x in np.asarray(vector, dtype=np.float32)) + "]"


class PgVectorStore:
    name = "pgvector"

    def __init__(self, database: Database, *, ef_search: int = 100) -> None:
        if database.dialect != "postgresql":
            raise NotAvailableError("the pgvector store needs PostgreSQL")
        self._db = database
        self._ef_search = int(ef_search)
        self.stats = StoreStats()
        self._ready = False

    def ensure_schema(self) -> None:
        if self._ready:
            return
        with self._db.engine.begin() as conn:
            installed = conn.execute(text(INSTALLED_SQL)).first() is not None
            if not installed and conn.execute(text(AVAILABLE_SQL)).first() is None:
                raise NotAvailableError("the PostgreSQL server has no pgvector extension")
            for statement in PGVECTOR_DDL:
                conn.execute(text(statement))
        self._ready = True

    def create_collection(self, account_id: str, knowledge_base_id: str, dimensions: int) -> None:
        self.ensure_schema()

    def delete_collection(self, account_id: str, knowledge_base_id: str) -> None:
        self.ensure_schema()
        with self._db.engine.begin() as conn:
            self._delete_all(conn, account_id, knowledge_base_id)

    def _delete_all(self, conn: Connection, account_id: str, knowledge_base_id: str) -> None:
        conn.execute(
            text("DELETE FROM kb_pgvectors WHERE account_id = :a AND knowledge_base_id = :k"),
            {"a": account_id, "k": knowledge_base_id},
        )
        self.stats.delete_requests += 1

    def replace_collection(
        self, account_id: str, knowledge_base_id: str, dimensions: int, batches: Iterable[list[VectorRecord]]
    ) -> None:
        """Every vector of a knowledge base replaced by ``batches`` in one transaction (the re-embed): a failure
        leaves the old vectors; queries see the old set until the commit, then the new one."""
        self.ensure_schema()
        with self._db.engine.begin() as conn:
            self._delete_all(conn, account_id, knowledge_base_id)
            for records in batches:
                self._insert(conn, records)

    def upsert(self, records: list[VectorRecord]) -> None:
        if not records:
            return
        self.ensure_schema()
        with self._db.engine.begin() as conn:
            self._insert(conn, records)

    def _insert(self, conn: Connection, records: list[VectorRecord]) -> None:
        for start in range(0, len(records), 200):
            batch = records[start : start + 200]
            params: dict[str, object] = {}
            rows = []
            for i, r in enumerate(batch):
                rows.append(f"(:id{i}, :a{i}, :k{i}, :d{i}, :c{i}, :n{i}, CAST(:v{i} AS vector))")
                params.update(
                    {
                        f"id{i}": r.id,
                        f"a{i}": r.account_id,
                        f"k{i}": r.knowledge_base_id,
                        f"d{i}": r.document_id,
                        f"c{i}": r.chunk_index,
                        f"n{i}": int(r.values.shape[0]),
                        f"v{i}": _literal(r.values),
                    }
                )
            conn.execute(
                text(
                    "INSERT INTO kb_pgvectors (id, account_id, knowledge_base_id, document_id, chunk_index,"
                    " dimensions, embedding) VALUES " + ", ".join(rows) + " ON CONFLICT (id) DO UPDATE SET"
                    " account_id = EXCLUDED.account_id, knowledge_base_id = EXCLUDED.knowledge_base_id,"
                    " document_id = EXCLUDED.document_id, chunk_index = EXCLUDED.chunk_index,"
                    " dimensions = EXCLUDED.dimensions, embedding = EXCLUDED.embedding"
                ),
                params,
            )
            self.stats.upsert_requests += 1
            self.stats.upserted += len(batch)

    def query(self, account_id: str, knowledge_base_id: str, vector: np.ndarray, top_k: int) -> list[VectorMatch]:
        self.ensure_schema()
        self.stats.query_requests += 1
        dims = int(vector.shape[0])  # an int, inlined so the planner can match the partial index
        distance = f"(embedding::vector({dims}) <=> CAST(:q AS vector({dims})))"
        with self._db.engine.begin() as conn:
            conn.execute(text(f"SET LOCAL hnsw.ef_search = {self._ef_search}"))
            rows = conn.execute(
                text(
                    f"SELECT id, document_id, chunk_index, 1 - {distance} AS score FROM kb_pgvectors"
                    f" WHERE account_id = :a AND knowledge_base_id = :k AND dimensions = {dims}"
                    f" ORDER BY {distance} LIMIT :n"
                ),
                {"q": _literal(vector), "a": account_id, "k": knowledge_base_id, "n": int(top_k)},
            ).all()
        return [
            VectorMatch(id=r.id, score=float(r.score), document_id=r.document_id, chunk_index=int(r.chunk_index))
            for r in rows
        ]

    def delete(self, account_id: str, knowledge_base_id: str, ids: list[str]) -> None:
        if not ids:
            return
        self.ensure_schema()
        with self._db.engine.begin() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                params = {f"i{n}": value for n, value in enumerate(chunk)}
                placeholders = ", ".join(f":i{n}" for n in range(len(chunk)))
                conn.execute(
                    text(
                        f"DELETE FROM kb_pgvectors WHERE account_id = :a AND knowledge_base_id = :k AND id IN ({placeholders})"
                    ),
                    {"a": account_id, "k": knowledge_base_id, **params},
                )
        self.stats.delete_requests += 1

    def count(self, account_id: str, knowledge_base_id: str) -> int:
        self.ensure_schema()
        with self._db.engine.begin() as conn:
            return int(
                conn.execute(
                    text("SELECT count(*) FROM kb_pgvectors WHERE account_id = :a AND knowledge_base_id = :k"),
                    {"a": account_id, "k": knowledge_base_id},
                ).scalar_one()
            )
