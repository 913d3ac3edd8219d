"""Knowledge bases: ingestion of a 200-page PDF end to end beside bare pypdf, and query latency on 10,000 chunks.

1. Ingestion. A generated 200-page text PDF (~420 words a page) sits in (moto) S3. ``bare``: ``PdfReader`` +
   ``extract_text`` of every page, nothing else. ``pipeline``: ``KnowledgeService.handle_object_created`` for the
   object, i.e. what IngestionFunction does per S3 event: claim, download, extract, chunk, store chunk rows, embed
   through the OpenAI SDK against a local double (separate process, zero latency, seeded random vectors, 1536
   dims), upsert into the store, finalise. Each pipeline run is paired with a bare run just before it (the shared
   machine's load moves a lot); the figure is the median of the paired ratios; target <= 1.5x. The
   embedding and upsert requests are counted (batching: ~430 chunks -> 4 embedding requests, 4 upserts).
   Stores: ``embedded`` (SQLite platform DB, the default) and ``pinecone`` (official SDK against the local
   wire-level double: upserts of <= 100 vectors / 2 MB).
2. Query latency: 10,000 chunks (generated text, hashing embedder, 512 dims) in one knowledge base;
   ``query_knowledge_base`` end to end (query embedding + vector search + chunk rows), 300 queries after 20
   warm-ups, p50/p95 per store: embedded on SQLite, embedded on PostgreSQL 15, pgvector (PostgreSQL 16 from
   pgserver, when ``make kb-pgvector`` installed it), Pinecone double (the double's own brute-force numpy search in
   Python dominates that figure: it measures the SDK path, not Pinecone). Target p95 <= 50 ms for the
   in-database stores.
"""

from __future__ import annotations

import io
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks import harness

PAGES = 200
WORDS_PER_PAGE = 420
QUERY_CHUNKS = 10_000
QUERIES = 300
VOCABULARY = [
    "pump",
    "valve",
    "filter",
    "pressure",
    "warranty",
    "invoice",
    "refund",
    "delivery",
    "account",
    "password",
    "kettle",
    "heater",
    "thermostat",
    "battery",
    "schedule",
    "contract",
    "premium",
    "customer",
    "support",
    "manual",
    "install",
    "replace",
    "clean",
    "inspect",
    "monitor",
    "adjust",
    "calibrate",
    "sensor",
    "motor",
    "bearing",
    "seal",
    "gasket",
    "hose",
    "outlet",
    "inlet",
    "flow",
    "rate",
    "temperature",
    "humidity",
    "voltage",
    "current",
    "power",
    "cable",
    "switch",
    "display",
    "button",
    "menu",
    "settings",
    "network",
    "router",
    "signal",
    "update",
    "firmware",
    "reset",
    "restore",
    "backup",
    "report",
    "error",
    "code",
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "for",
    "with",
    "on",
    "is",
    "are",
    "be",
    "this",
    "that",
    "it",
    "as",
    "by",
    "from",
    "at",
    "or",
    "can",
    "will",
    "must",
    "should",
]


def _text(rng: random.Random, words: int) -> str:
    sentences, count = [], 0
    while count < words:
        n = rng.randint(8, 20)
        sentence = " ".join(rng.choice(VOCABULARY) for _ in range(n))
        sentences.append(sentence.capitalize() + ".")
        count += n
    paragraphs = [" ".join(sentences[i : i + 4]) for i in range(0, len(sentences), 4)]
    return "\n".join(paragraphs)


def _pdf() -> bytes:
    from tests.kb_support import make_pdf

    rng = random.Random(42)
    return make_pdf([_text(rng, WORDS_PER_PAGE) for _ in range(PAGES)])


def _bare(data: bytes) -> tuple[float, int]:
    from pypdf import PdfReader

    started = time.perf_counter()
    reader = PdfReader(io.BytesIO(data))
    chars = sum(len(page.extract_text() or "") for page in reader.pages)
    return time.perf_counter() - started, chars


class _EmbeddingsProcess:
    """The OpenAI embeddings double in its own process: its work never competes for this process's GIL."""

    def __enter__(self) -> str:
        root = Path(__file__).resolve().parents[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.doubles.openai_embeddings_server", "random"],
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def __exit__(self, *exc: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def _ingestion(repetitions: int) -> dict[str, Any]:
    import boto3
    from moto import mock_aws

    from airies.core.database import Database
    from airies.knowledge.service import build_knowledge_service
    from airies.migrations.runner import upgrade_head
    from tests.doubles.pinecone_server import PineconeDouble
    from tests.kb_support import BUCKET, RecordingPublisher, kb_settings, new_account

    data = _pdf()
    results: dict[str, Any] = {"pdf_bytes": len(data), "pages": PAGES}
    with tempfile.TemporaryDirectory() as tmp, mock_aws(), _EmbeddingsProcess() as base_url, PineconeDouble() as pc:
        tmp_path = Path(tmp)
        url = f"sqlite:///{tmp_path / 'bench.db'}"
        upgrade_head(url)
        database = Database(url)
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        settings = kb_settings(
            tmp_path,
            openai_api_key="sk-test",
            kb_embeddings_base_url=base_url,
            pinecone_api_key=pc.api_key,
            pinecone_index_host=pc.host,
            kb_max_pages=1000,
        )
        account = new_account(database)
        bare_runs: list[float] = []
        stores: dict[str, dict[str, Any]] = {}
        _bare(data)  # warm imports for both sides
        for store_name in ("embedded", "pinecone"):
            runs, stats, ratios = [], {}, []
            for _ in range(repetitions):
                bare_runs.append(_bare(data)[0])
                service = build_knowledge_service(settings, database, usage_publisher=RecordingPublisher())
                kb = service.create_knowledge_base(
                    account,
                    "bench",
                    embedding_provider="openai",
                    embedding_model="text-embedding-3-small",
                    vector_store=store_name,
                )
                doc, _ = service.upload_document(account, kb.id, filename="manual.pdf", content_type="application/pdf")
                key = f"accounts/{account}/{doc.storage_key}"
                etag = s3.put_object(Bucket=BUCKET, Key=key, Body=data)["ETag"].strip('"')
                started = time.perf_counter()
                outcome = service.handle_object_created(key, size=len(data), etag=etag)
                runs.append(time.perf_counter() - started)
                ratios.append(runs[-1] / bare_runs[-1])  # paired with the bare run just before: same machine load
                assert outcome == "ready", outcome
                ready = service.get_document(account, kb.id, doc.id)
                store = service.store(store_name)
                stats = {
                    "chunks": ready.chunk_count,
                    "tokens": ready.token_count,
                    "embedding_requests": service.counters.embed_requests,
                    "upsert_requests": store.stats.upsert_requests,
                }
                service.delete_knowledge_base(account, kb.id)
            stores[store_name] = {
                "median_s": round(statistics.median(runs), 3),
                "runs_s": [round(r, 3) for r in runs],
                "paired_ratios": [round(r, 2) for r in ratios],
                "ratio_to_bare": round(statistics.median(ratios), 2),  # median of paired ratios
                "best_ratio": round(min(runs) / min(bare_runs), 2),
                **stats,
            }
        results["bare_pypdf_median_s"] = round(statistics.median(bare_runs), 3)
        results["bare_pypdf_runs_s"] = [round(r, 3) for r in bare_runs]
        results["pipeline"] = stores
        database.dispose()
    return results


def _seed(service: Any, database: Any, account: str, store_name: str) -> str:
    from airies.knowledge.models import KnowledgeChunk, KnowledgeDocument

    rng = random.Random(7)
    kb = service.create_knowledge_base(account, f"q-{store_name}", vector_store=store_name)
    doc_id = f"kdoc_bench{uuid.uuid4().hex[:20]}"
    with database.session() as session:
        session.add(
            KnowledgeDocument(
                id=doc_id,
                account_id=account,
                knowledge_base_id=kb.id,
                name="generated",
                source_type="inline",
                content_type="text/plain",
                status="ready",
                page_count=0,
                chunk_count=QUERY_CHUNKS,
                token_count=0,
                attempts=0,
            )
        )
    texts = [_text(rng, 60) for _ in range(QUERY_CHUNKS)]
    for start in range(0, QUERY_CHUNKS, 1000):
        with database.session() as session:
            session.add_all(
                KnowledgeChunk(
                    id=f"{doc_id}-{i:05d}",
                    account_id=account,
                    knowledge_base_id=kb.id,
                    document_id=doc_id,
                    chunk_index=i,
                    text=texts[i],
                    token_count=80,
                    page=None,
                )
                for i in range(start, min(start + 1000, QUERY_CHUNKS))
            )
    for start in range(0, QUERY_CHUNKS, 1000):
        with database.session() as session:
            from sqlalchemy import select

            chunks = list(
                session.scalars(
                    select(KnowledgeChunk)
                    .where(KnowledgeChunk.document_id == doc_id, KnowledgeChunk.chunk_index >= start)
                    .where(KnowledgeChunk.chunk_index < start + 1000)
                    .order_by(KnowledgeChunk.chunk_index)
                )
            )
        service.store_embeddings(kb, chunks, service.generate_embeddings(kb, [c.text for c in chunks]))
    return kb.id


def _latency(service: Any, account: str, kb_id: str) -> dict[str, Any]:
    rng = random.Random(11)
    questions = [" ".join(rng.choice(VOCABULARY[:60]) for _ in range(rng.randint(4, 9))) for _ in range(QUERIES + 20)]
    for q in questions[:20]:
        service.query_knowledge_base(account, kb_id, q, top_k=5)
    times = []
    for q in questions[20:]:
        started = time.perf_counter()
        hits = service.query_knowledge_base(account, kb_id, q, top_k=5)
        times.append((time.perf_counter() - started) * 1000)
        assert hits
    return {
        "chunks": QUERY_CHUNKS,
        "queries": len(times),
        "p50_ms": round(harness.percentile(times, 50), 2),
        "p95_ms": round(harness.percentile(times, 95), 2),
        "max_ms": round(max(times), 2),
    }


def _query_latency() -> dict[str, Any]:
    from moto import mock_aws
    from sqlalchemy import create_engine, text

    from airies.core.database import Database
    from airies.knowledge.service import build_knowledge_service
    from airies.migrations.runner import upgrade_head
    from tests.doubles import pgvector_server
    from tests.doubles.pinecone_server import PineconeDouble
    from tests.kb_support import RecordingPublisher, kb_settings, new_account

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, mock_aws(), PineconeDouble() as pc:
        tmp_path = Path(tmp)
        settings = kb_settings(tmp_path, pinecone_api_key=pc.api_key, pinecone_index_host=pc.host)
        targets: list[tuple[str, str, str, Any]] = []
        sqlite_url = f"sqlite:///{tmp_path / 'q.db'}"
        targets.append(("embedded_sqlite", sqlite_url, "embedded", None))
        targets.append(("pinecone_double", sqlite_url, "pinecone", None))
        pg_name = f"airies_kb_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(harness_pg_admin(), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{pg_name}"'))
            targets.append(
                ("embedded_postgresql", harness_pg_admin().rsplit("/", 1)[0] + f"/{pg_name}", "embedded", None)
            )
        except Exception as exc:
            out["embedded_postgresql"] = {"skipped": f"PostgreSQL not reachable: {exc}"}
        vec_name = f"airies_kb_bench_{uuid.uuid4().hex[:8]}"
        try:
            vec_url = pgvector_server.create_database(vec_name)
        except Exception as exc:
            vec_url = None
            out["pgvector"] = {"skipped": f"pgserver failed: {exc}"}
        if vec_url:
            targets.append(("pgvector", vec_url, "pgvector", None))
        elif "pgvector" not in out:
            out["pgvector"] = {"skipped": "no pgvector server (make kb-pgvector)"}
        try:
            for label, url, store_name, _ in targets:
                upgrade_head(url)
                database = Database(url, pool_size=2)
                service = build_knowledge_service(settings, database, usage_publisher=RecordingPublisher())
                account = new_account(database)
                seeded = time.perf_counter()
                kb_id = _seed(service, database, account, store_name)
                figures = _latency(service, account, kb_id)
                figures["seed_s"] = round(time.perf_counter() - seeded, 1)
                out[label] = figures
                database.dispose()
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)'))
            admin.dispose()
            if vec_url:
                pgvector_server.drop_database(vec_name)
    return out


def harness_pg_admin() -> str:
    import os

    return os.environ.get("AIRIES_TEST_PG_URL", "postgresql+pg8000://postgres@127.0.0.1:5432/postgres")


def run(args: Any = None) -> dict[str, Any]:
    repetitions = getattr(args, "runs", None) or 5
    ingestion = _ingestion(repetitions)
    latency = _query_latency()
    targets = [
        harness.target(f"ingestion_{name}_vs_bare_pypdf", figures["ratio_to_bare"], 1.5, "x")
        for name, figures in ingestion["pipeline"].items()
        if name == "embedded"
    ]
    for label in ("embedded_sqlite", "embedded_postgresql", "pgvector"):
        if "p95_ms" in latency.get(label, {}):
            targets.append(harness.target(f"query_p95_{label}_10k", latency[label]["p95_ms"], 50.0, "ms"))
    return {"ingestion": ingestion, "query_latency": latency, "targets": targets}
