"""pgvector: the migration creates the extension, table and HNSW indexes where the extension exists, and the
pgvector store serves a knowledge base end to end. Runs on PostgreSQL 16 + pgvector from ``pgserver``
(``make kb-pgvector``, which ``make test`` runs); without that server these tests fail, they never skip."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from sqlalchemy import text

from airies.core.database import Database
from airies.core.errors import NotAvailableError, NotFoundError
from airies.knowledge.service import build_knowledge_service
from airies.knowledge.vector_stores.base import VectorRecord
from airies.knowledge.vector_stores.pgvector import PgVectorStore
from airies.migrations.runner import upgrade_head
from tests.doubles import pgvector_server
from tests.kb_support import (
    BUCKET,
    RecordingPublisher,
    deliver,
    ingestion_pipeline,
    kb_settings,
    make_pdf,
    moto_bucket,
    new_account,
)


@pytest.fixture(scope="module")
def pgvector_database():
    if pgvector_server.pgvector_url() is None:
        pytest.fail("no PostgreSQL with pgvector: run `make kb-pgvector` (pgserver under /tmp; `make test` does it)")
    name = f"airies_kb_{uuid.uuid4().hex[:8]}"
    url = pgvector_server.create_database(name)
    upgrade_head(url)
    database = Database(url, pool_size=3)
    yield database
    database.dispose()
    pgvector_server.drop_database(name)


def test_migration_created_extension_table_and_hnsw_indexes(pgvector_database):
    with pgvector_database.engine.connect() as conn:
        assert conn.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar()
        indexes = dict(
            conn.execute(text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'kb_pgvectors'")).all()
        )
    assert "ix_kb_pgvectors_kb" in indexes
    for dims in (384, 512, 1536):
        definition = indexes[f"ix_kb_pgvectors_hnsw_{dims}"]
        assert "hnsw" in definition and "vector_cosine_ops" in definition and f"dimensions = {dims}" in definition


def test_store_scopes_by_account_and_knowledge_base(pgvector_database):
    store = PgVectorStore(pgvector_database)
    rng = np.random.default_rng(3)
    values = rng.standard_normal((50, 512)).astype(np.float32)
    values /= np.linalg.norm(values, axis=1, keepdims=True)
    store.upsert([VectorRecord(f"d1-{i:05d}", values[i], "acc_a", "kb_1", "d1", i) for i in range(50)])
    store.upsert([VectorRecord("other-0", values[7], "acc_b", "kb_1", "dx", 0)])  # same kb id, other account
    store.upsert([VectorRecord("d1-00007", values[7], "acc_a", "kb_1", "d1", 7)])  # re-upsert: no duplicate
    matches = store.query("acc_a", "kb_1", values[7], 5)
    assert matches[0].id == "d1-00007" and matches[0].score == pytest.approx(1.0, abs=1e-5)
    assert all(m.id != "other-0" for m in store.query("acc_a", "kb_1", values[7], 60))
    assert store.count("acc_a", "kb_1") == 50
    store.delete("acc_a", "kb_1", ["d1-00000", "d1-00001"])
    assert store.count("acc_a", "kb_1") == 48
    store.delete_collection("acc_a", "kb_1")
    assert store.count("acc_a", "kb_1") == 0 and store.count("acc_b", "kb_1") == 1


def test_knowledge_base_on_pgvector_end_to_end(pgvector_database, tmp_path):
    with moto_bucket():
        service = build_knowledge_service(
            kb_settings(tmp_path), pgvector_database, usage_publisher=RecordingPublisher()
        )
        alice, bob = new_account(pgvector_database), new_account(pgvector_database)
        kb = service.create_knowledge_base(alice, "pg", vector_store="pgvector")
        text_a = "The boiler must be serviced every autumn.\n\nThe thermostat battery lasts two years."
        doc = service.add_document_content(
            alice, kb.id, filename="home.txt", content_type="text/plain", data=text_a.encode()
        )
        assert doc.status == "ready"
        assert "thermostat" in service.query_knowledge_base(alice, kb.id, "thermostat battery", top_k=1)[0].text
        with pytest.raises(NotFoundError):
            service.query_knowledge_base(bob, kb.id, "boiler")
        service.update_embeddings(alice, kb.id, embedding_dimensions=384)
        assert "boiler" in service.query_knowledge_base(alice, kb.id, "when to service the boiler", top_k=1)[0].text
        service.delete_knowledge_base(alice, kb.id)
        assert service.store("pgvector").count(alice, kb.id) == 0


def test_pgvector_store_refuses_sqlite(tmp_path):
    with pytest.raises(NotAvailableError):
        PgVectorStore(Database(f"sqlite:///{tmp_path}/x.db"))


def test_pgvector_store_matches_what_the_server_has(database):
    """Not SQLite: 501. On PostgreSQL the store is available exactly when the server ships the extension (the
    machine's PostgreSQL 15 has none: 501, it never pretends; a server with it gets the schema)."""
    if database.dialect != "postgresql":
        with pytest.raises(NotAvailableError):
            PgVectorStore(database)
        return
    with database.engine.connect() as conn:
        available = conn.execute(text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).first()
    store = PgVectorStore(database)
    if available is None:
        with pytest.raises(NotAvailableError, match="no pgvector extension"):
            store.count("acc", "kb")
    else:
        assert store.count("acc", "kb") == 0
        with database.engine.connect() as conn:
            assert conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")).first() is not None


def test_s3_notification_to_pgvector_through_the_ingestion_function(pgvector_database, tmp_path):
    """The whole path under moto on PostgreSQL with pgvector: S3 ObjectCreated -> SQS -> IngestionFunction ->
    chunks in the platform tables and vectors in ``kb_pgvectors``; a redelivery never duplicates them."""
    text_a = (
        "Warranty\n\nEvery kettle carries a five year warranty against limescale damage.\n\n"
        "Returns\n\nUnused kettles may be returned within thirty days for a full refund.\n\n"
        "Descaling\n\nDescale the kettle every month with a spoon of citric acid dissolved in warm water."
    )
    with ingestion_pipeline(pgvector_database, kb_settings(tmp_path)) as p:
        service = p["service"]
        account = new_account(pgvector_database)
        kb = service.create_knowledge_base(
            account, "pg pipeline", vector_store="pgvector", chunk_size=32, chunk_overlap=0
        )
        doc, _ = service.upload_document(account, kb.id, filename="policy.txt", content_type="text/plain")
        p["s3"].put_object(Bucket=BUCKET, Key=f"accounts/{account}/{doc.storage_key}", Body=text_a.encode())
        messages, result = deliver(p)
        assert result == {"batchItemFailures": []}
        ready = service.get_document(account, kb.id, doc.id)
        assert ready.status == "ready", ready.error
        store = service.store("pgvector")
        assert ready.chunk_count >= 2 and store.count(account, kb.id) == ready.chunk_count
        _, again = deliver(p, messages + messages)
        assert again == {"batchItemFailures": []} and store.count(account, kb.id) == ready.chunk_count
        top = service.query_knowledge_base(account, kb.id, "how long is the warranty", top_k=1)[0]
        assert "five year warranty" in top.text and top.document_id == doc.id


def test_failed_reembed_on_pgvector_keeps_the_old_vectors(pgvector_database, tmp_path):
    """The new vectors replace the old ones in one transaction: a store failure mid-swap rolls it all back."""
    with moto_bucket():
        settings = kb_settings(tmp_path, kb_embed_batch_chunks=1)
        service = build_knowledge_service(settings, pgvector_database, usage_publisher=RecordingPublisher())
        account = new_account(pgvector_database)
        kb = service.create_knowledge_base(account, "pg", vector_store="pgvector", chunk_size=32, chunk_overlap=0)
        body = "\n\n".join(
            f"Section {i} explains the {w} setting in detail: when to change it, what it does and why it matters."
            for i, w in enumerate(["fan", "pump", "valve"])
        )
        service.add_document_content(account, kb.id, filename="s.txt", content_type="text/plain", data=body.encode())
        store = service.store("pgvector")
        before = store.count(account, kb.id)
        assert before == 3
        # The store refuses the second new vector (after the old ones were deleted and the first new one written).
        with pgvector_database.engine.begin() as conn:
            conn.execute(
                text("ALTER TABLE kb_pgvectors ADD CONSTRAINT test_no_256 CHECK (dimensions <> 256 OR chunk_index < 1)")
            )
        try:
            with pytest.raises(Exception, match="test_no_256"):
                service.update_embeddings(account, kb.id, embedding_dimensions=256)
        finally:
            with pgvector_database.engine.begin() as conn:
                conn.execute(text("ALTER TABLE kb_pgvectors DROP CONSTRAINT test_no_256"))
        kb = service.get_knowledge_base(account, kb.id)
        assert (kb.status, kb.embedding_dimensions) == ("active", 512)
        assert store.count(account, kb.id) == before
        assert "pump" in service.query_knowledge_base(account, kb.id, "pump setting", top_k=1)[0].text


def test_pdf_with_control_characters_on_pgvector_leaves_no_orphan_vectors(pgvector_database, tmp_path):
    """pypdf extracts NUL from PDFs without a Unicode map; PostgreSQL refused the chunk rows after the vectors were
    in ``kb_pgvectors``. Now the text is cleaned, and a chunk insert that still fails (here a CHECK the test adds)
    ends the document failed and removes its vectors."""
    page = " ".join(["Clause 7\x00 limits the\x01 liability\x1b of the landlord to\x7f direct damage."] * 30)
    with ingestion_pipeline(pgvector_database, kb_settings(tmp_path)) as p:
        service = p["service"]
        account = new_account(pgvector_database)
        kb = service.create_knowledge_base(account, "Lease", vector_store="pgvector", chunk_size=64, chunk_overlap=0)
        store = service.store("pgvector")
        doc, _ = service.upload_document(account, kb.id, filename="lease.pdf", content_type="application/pdf")
        key = f"accounts/{account}/{doc.storage_key}"
        p["s3"].put_object(Bucket=BUCKET, Key=key, Body=make_pdf([page, page]), ContentType="application/pdf")
        _, result = deliver(p)
        assert result == {"batchItemFailures": []}
        ready = service.get_document(account, kb.id, doc.id)
        assert ready.status == "ready", ready.error
        assert ready.chunk_count > 2 and store.count(account, kb.id) == ready.chunk_count
        assert (
            "Clause 7 limits the liability of the landlord"
            in service.get_document_chunks(account, kb.id, doc.id)[0].text
        )

        other, _ = service.upload_document(account, kb.id, filename="annex.pdf", content_type="application/pdf")
        with pgvector_database.engine.begin() as conn:
            conn.execute(
                text(
                    "ALTER TABLE knowledge_chunks ADD CONSTRAINT test_no_annex CHECK (page IS NULL OR page < 2) NOT VALID"
                )
            )
        try:
            p["s3"].put_object(
                Bucket=BUCKET, Key=f"accounts/{account}/{other.storage_key}", Body=make_pdf([page, page]),
                ContentType="application/pdf",
            )  # fmt: skip
            _, result = deliver(p)
        finally:
            with pgvector_database.engine.begin() as conn:
                conn.execute(text("ALTER TABLE knowledge_chunks DROP CONSTRAINT test_no_annex"))
        assert result == {"batchItemFailures": []}  # permanent: acknowledged, not retried for hours
        failed = service.get_document(account, kb.id, other.id)
        assert (failed.status, failed.error_code) == ("failed", "processing_failed")
        assert "23514" in failed.error and "test_no_annex" in failed.error
        assert store.count(account, kb.id) == ready.chunk_count  # only the ready document's vectors
