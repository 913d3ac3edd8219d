"""The whole ingestion path under moto: S3 ObjectCreated -> SQS -> IngestionFunction -> chunks + vectors.

Runs on SQLite and PostgreSQL (the ``database`` fixture).
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from airies.core.errors import NotFoundError
from airies.knowledge.models import KnowledgeChunk, KnowledgeDocument, KnowledgeVector
from tests.kb_support import (
    BUCKET,
    deliver,
    drain,
    ingestion_pipeline,
    kb_settings,
    make_docx,
    make_pdf,
    new_account,
)

FAQ = (
    "Refund policy\n\nRefunds are issued to the original card within 14 days of the return being received.\n\n"
    "Opening hours\n\nOur support line is open Monday to Friday from 8am to 6pm Central European Time.\n\n"
    "Shipping\n\nParcels to Germany arrive within three business days; international orders take up to ten days."
)


@pytest.fixture
def pipeline(database, tmp_path):
    with ingestion_pipeline(database, kb_settings(tmp_path)) as pieces:
        yield pieces


def _deliver(p, messages=None):
    return deliver(p, messages)


def _counts(database, doc_id):
    with database.session() as session:
        chunks = session.scalar(
            select(func.count()).select_from(KnowledgeChunk).where(KnowledgeChunk.document_id == doc_id)
        )
        vectors = session.scalar(
            select(func.count()).select_from(KnowledgeVector).where(KnowledgeVector.document_id == doc_id)
        )
    return chunks, vectors


def test_upload_notification_ingests_and_redelivery_never_duplicates(pipeline):
    p = pipeline
    service, database = p["service"], p["database"]
    account = new_account(database)
    kb = service.create_knowledge_base(account, "Support")
    doc, presigned = service.upload_document(account, kb.id, filename="faq v2.pdf", content_type="application/pdf")
    assert doc.status == "pending_upload"
    assert presigned.fields["Content-Type"] == "application/pdf"

    pdf = make_pdf(FAQ.split("\n\n"))
    # The browser's upload lands at the presigned key: S3 notifies the queue (the key arrives URL-encoded).
    p["s3"].put_object(
        Bucket=BUCKET, Key=f"accounts/{account}/{doc.storage_key}", Body=pdf, ContentType="application/pdf"
    )
    messages, result = _deliver(p)
    bodies = [json.loads(m["Body"]) for m in messages]
    assert any(b.get("Event") == "s3:TestEvent" for b in bodies)  # moto, like S3, sends it first
    assert any("%2F" in r["s3"]["object"]["key"] for b in bodies for r in b.get("Records", []))
    assert result == {"batchItemFailures": []}

    ready = service.get_document(account, kb.id, doc.id)
    assert ready.status == "ready", ready.error
    assert ready.page_count == 6 and ready.chunk_count >= 1 and ready.token_count > 0
    chunks, vectors = _counts(database, doc.id)
    assert chunks == vectors == ready.chunk_count

    # Redelivery of the same messages, and a duplicate of the event: same chunks, same vectors, same usage keys.
    _, again = _deliver(p, messages)
    _, twice = _deliver(p, messages + messages)
    assert again == twice == {"batchItemFailures": []}
    assert _counts(database, doc.id) == (chunks, vectors)
    assert service.get_knowledge_base(account, kb.id).chunk_count == ready.chunk_count
    keys = [e.idempotency_key for e in p["publisher"].events]
    assert len(set(keys)) == 2  # kb_pages + embedding_tokens, once per document version
    pages = [e for e in p["publisher"].events if e.component == "kb_pages"]
    assert pages[0].quantity == 6 and pages[0].account_id == account

    hits = service.query_knowledge_base(account, kb.id, "when is the support line open?", top_k=3)
    assert "Monday to Friday" in hits[0].text
    assert hits[0].document_name == "faq v2.pdf" and hits[0].page is not None


def test_new_version_of_an_object_replaces_its_chunks(pipeline):
    p = pipeline
    service, database = p["service"], p["database"]
    account = new_account(database)
    kb = service.create_knowledge_base(account, "Docs", chunk_size=40, chunk_overlap=0)
    doc, _ = service.upload_document(account, kb.id, filename="notes.txt", content_type="text/plain")
    key = f"accounts/{account}/{doc.storage_key}"
    p["s3"].put_object(Bucket=BUCKET, Key=key, Body=(FAQ + "\n\n" + FAQ).encode(), ContentType="text/plain")
    _deliver(p)
    first = service.get_document(account, kb.id, doc.id).chunk_count
    p["s3"].put_object(Bucket=BUCKET, Key=key, Body=b"Only one short line about parking.", ContentType="text/plain")
    _deliver(p)
    doc = service.get_document(account, kb.id, doc.id)
    assert first > 1 and doc.chunk_count == 1
    assert _counts(database, doc.id) == (1, 1)
    assert service.get_knowledge_base(account, kb.id).chunk_count == 1
    assert "parking" in service.query_knowledge_base(account, kb.id, "parking", top_k=5)[0].text


def test_bad_documents_fail_with_reasons_and_the_batch_moves_on(pipeline):
    p = pipeline
    service, database = p["service"], p["database"]
    account = new_account(database)
    kb = service.create_knowledge_base(account, "Mixed")
    uploads = {
        "corrupt.pdf": ("application/pdf", b"%PDF-1.4\n this is not really a pdf \n%%EOF"),
        "empty.txt": ("text/plain", b"   \n  "),
        "bomb.docx": ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", None),
        "good.docx": (
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            make_docx(FAQ.split("\n\n")),
        ),
        "scan.pdf": ("application/pdf", make_pdf(["", ""])),
    }
    import io
    import zipfile

    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", b"\0" * (120 * 1024 * 1024))
    uploads["bomb.docx"] = (uploads["bomb.docx"][0], bomb.getvalue())
    docs = {}
    for name, (content_type, data) in uploads.items():
        doc, _ = service.upload_document(account, kb.id, filename=name, content_type=content_type)
        p["s3"].put_object(
            Bucket=BUCKET, Key=f"accounts/{account}/{doc.storage_key}", Body=data, ContentType=content_type
        )
        docs[name] = doc.id
    _, result = _deliver(p)
    assert result == {"batchItemFailures": []}
    status = {name: service.get_document(account, kb.id, doc_id) for name, doc_id in docs.items()}
    assert status["good.docx"].status == "ready"
    assert (status["corrupt.pdf"].status, status["corrupt.pdf"].error_code) == ("failed", "corrupt_pdf")
    assert (status["empty.txt"].status, status["empty.txt"].error_code) == ("failed", "empty_document")
    assert (status["bomb.docx"].status, status["bomb.docx"].error_code) == ("failed", "zip_bomb")
    assert (status["scan.pdf"].status, status["scan.pdf"].error_code) == ("failed", "no_text")
    assert "OCR" in status["scan.pdf"].error
    assert service.get_knowledge_base(account, kb.id).document_count == 1


def test_transient_failure_reports_only_that_message(pipeline, monkeypatch):
    p = pipeline
    service, database = p["service"], p["database"]
    account = new_account(database)
    kb = service.create_knowledge_base(account, "Flaky")
    good, _ = service.upload_document(account, kb.id, filename="a.txt", content_type="text/plain")
    flaky, _ = service.upload_document(account, kb.id, filename="b.txt", content_type="text/plain")
    for doc in (good, flaky):
        p["s3"].put_object(Bucket=BUCKET, Key=f"accounts/{account}/{doc.storage_key}", Body=FAQ.encode())
    messages = [m for m in drain(p["sqs"], p["queue_url"]) if "Records" in json.loads(m["Body"])]

    from airies.core.errors import ProviderError

    embedder = service.embedder(kb.embedding_provider, kb.embedding_model, kb.embedding_dimensions)
    real_embed = embedder.embed
    calls = {"n": 0}

    class Flaky:
        def __getattr__(self, name):
            return getattr(embedder, name)

        def embed(self, texts):
            calls["n"] += 1
            if calls["n"] == 2:
                raise ProviderError("embeddings overloaded", provider="test", retryable=True, upstream_status=503)
            return real_embed(texts)

    service._embedders[(kb.embedding_provider, kb.embedding_model, kb.embedding_dimensions)] = Flaky()
    _, result = _deliver(p, messages)
    assert result == {"batchItemFailures": [{"itemIdentifier": messages[1]["MessageId"]}]}
    second = service.get_document(account, kb.id, flaky.id)
    assert second.status == "uploaded"  # released for the retry, not stuck in "processing"
    _, retry = _deliver(p, [messages[1]])
    assert retry == {"batchItemFailures": []}
    assert service.get_document(account, kb.id, flaky.id).status == "ready"


def test_delete_document_and_knowledge_base_remove_vectors_and_objects(pipeline):
    p = pipeline
    service, database = p["service"], p["database"]
    account = new_account(database)
    kb = service.create_knowledge_base(account, "Temp")
    doc_a = service.add_document_content(
        account, kb.id, filename="a.md", content_type="text/markdown", data=FAQ.encode()
    )
    doc_b = service.add_document_content(
        account, kb.id, filename="b.txt", content_type="text/plain", data=b"Parking is free for visitors."
    )
    assert doc_a.status == doc_b.status == "ready"
    objects = p["s3"].list_objects_v2(Bucket=BUCKET, Prefix=f"accounts/{account}/knowledge/{kb.id}/")["KeyCount"]
    assert objects == 2

    service.delete_document(account, kb.id, doc_a.id)
    assert _counts(database, doc_a.id) == (0, 0)
    assert p["s3"].list_objects_v2(Bucket=BUCKET, Prefix=f"accounts/{account}/knowledge/{kb.id}/")["KeyCount"] == 1
    assert all(hit.document_id == doc_b.id for hit in service.query_knowledge_base(account, kb.id, "refund policy"))
    assert service.get_knowledge_base(account, kb.id).document_count == 1

    service.delete_knowledge_base(account, kb.id)
    with database.session() as session:
        assert (
            session.scalar(
                select(func.count()).select_from(KnowledgeVector).where(KnowledgeVector.knowledge_base_id == kb.id)
            )
            == 0
        )
        assert (
            session.scalar(
                select(func.count()).select_from(KnowledgeDocument).where(KnowledgeDocument.knowledge_base_id == kb.id)
            )
            == 0
        )
    assert p["s3"].list_objects_v2(Bucket=BUCKET, Prefix=f"accounts/{account}/")["KeyCount"] == 0
    with pytest.raises(NotFoundError):
        service.get_knowledge_base(account, kb.id)


def test_tenancy_no_query_returns_another_accounts_chunks(pipeline):
    p = pipeline
    service, database = p["service"], p["database"]
    alice, bob = new_account(database), new_account(database)
    kb_a = service.create_knowledge_base(alice, "Alice")
    kb_b = service.create_knowledge_base(bob, "Bob")
    service.add_document_content(
        alice, kb_a.id, filename="secret.txt", content_type="text/plain", data=b"The vault code is 4711."
    )
    service.add_document_content(
        bob, kb_b.id, filename="public.txt", content_type="text/plain", data=b"The lobby opens at nine."
    )
    with pytest.raises(NotFoundError):
        service.query_knowledge_base(bob, kb_a.id, "vault code")
    with pytest.raises(NotFoundError):
        service.get_document_chunks(bob, kb_a.id, "x")
    # Even naming Alice's knowledge base in an agent's list returns nothing of hers.
    hits = service.retrieve_for_agent(bob, [kb_a.id, kb_b.id], "vault code lobby")
    assert hits and all(h.knowledge_base_id == kb_b.id for h in hits)
    assert service.retrieve_for_agent(bob, [kb_a.id], "vault code") == []
    # The store itself filters by account, whatever id is asked for.
    store = service.store("embedded")
    vector = (
        service.embedder(kb_a.embedding_provider, kb_a.embedding_model, kb_a.embedding_dimensions)
        .embed(["vault"])
        .vectors[0]
    )
    assert store.query(bob, kb_a.id, vector, 5) == []


def test_unavailable_embedder_fails_the_document_and_acknowledges_the_message(database, tmp_path, monkeypatch):
    """A configuration problem (the ingestion function has no OpenAI key) is permanent: redelivery cannot fix it,
    so the document ends ``failed`` with the reason and the message is acknowledged (never dead-lettered)."""
    from airies.knowledge.service import build_knowledge_service

    monkeypatch.delenv("AIRIES_OPENAI_API_KEY", raising=False)
    with ingestion_pipeline(database, kb_settings(tmp_path)) as p:
        account = new_account(database)
        # The API had a key when the knowledge base was made (building the client makes no request).
        api = build_knowledge_service(kb_settings(tmp_path, openai_api_key="sk-api-only"), database)
        kb = api.create_knowledge_base(account, "OpenAI KB", embedding_provider="openai")
        doc, _ = api.upload_document(account, kb.id, filename="faq.txt", content_type="text/plain")
        p["s3"].put_object(Bucket=BUCKET, Key=f"accounts/{account}/{doc.storage_key}", Body=FAQ.encode())
        _, result = deliver(p)
        assert result == {"batchItemFailures": []}
        failed = p["service"].get_document(account, kb.id, doc.id)
        assert (failed.status, failed.error_code) == ("failed", "not_available")
        assert "OpenAI" in failed.error and failed.processing_started_at is None
        assert _counts(database, doc.id)[1] == 0
        assert p["sqs"].receive_message(QueueUrl=p["dlq_url"]).get("Messages") is None


def test_upload_past_the_tier_size_fails_the_document(pipeline):
    """A presigned upload that declared no size is checked when its object arrives: over the tier's knowledge-base
    size (free: 10 MB) the document fails with ``kb_size_limit`` and the message is acknowledged."""
    p = pipeline
    service, database = p["service"], p["database"]
    account = new_account(database)
    kb = service.create_knowledge_base(account, "Big")
    reserved, _ = service.upload_document(
        account, kb.id, filename="big.pdf", content_type="application/pdf", size_bytes=10 * 1024 * 1024 - 100
    )
    small, _ = service.upload_document(account, kb.id, filename="notes.txt", content_type="text/plain")
    p["s3"].put_object(Bucket=BUCKET, Key=f"accounts/{account}/{small.storage_key}", Body=FAQ.encode())
    _, result = deliver(p)
    assert result == {"batchItemFailures": []}
    failed = service.get_document(account, kb.id, small.id)
    assert (failed.status, failed.error_code) == ("failed", "kb_size_limit")
    assert "10 MB" in failed.error
    assert service.get_document(account, kb.id, reserved.id).status == "pending_upload"


class _Scripted:
    """An embedder double: the real (hashing) embedder of a model, with a hook run before each of its calls."""

    def __init__(self, inner, hook):
        self.inner, self.hook, self.calls = inner, hook, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def embed(self, texts):
        self.calls += 1
        self.hook(self.calls)
        return self.inner.embed(texts)


def _scripted_factory(settings, dims, hook):
    from airies.knowledge.embedders import build_embedder

    def factory(provider, model, dimensions):
        inner = build_embedder(provider, model, dimensions, settings)
        return _Scripted(inner, hook) if dimensions == dims else inner

    return factory


SECTIONS = "\n\n".join(
    f"Section {i} explains the {w} setting: when to change it, what it does and why it matters to the owner."
    for i, w in enumerate(["fan", "pump", "valve", "heater"])
)


def test_failed_reembed_keeps_the_old_vectors_and_model(database, tmp_path):
    from airies.core.errors import ProviderError

    def fail_second(call):
        if call == 2:
            raise ProviderError("embeddings overloaded", provider="test", retryable=True, upstream_status=503)

    settings = kb_settings(tmp_path, kb_embed_batch_chunks=1)
    with ingestion_pipeline(database, settings, embedder_factory=_scripted_factory(settings, 256, fail_second)) as p:
        service = p["service"]
        account = new_account(database)
        kb = service.create_knowledge_base(account, "Manual", chunk_size=32, chunk_overlap=0)
        service.add_document_content(
            account, kb.id, filename="m.txt", content_type="text/plain", data=SECTIONS.encode()
        )
        store = service.store("embedded")
        before = store.count(account, kb.id)
        assert before == 4
        with pytest.raises(ProviderError):
            service.update_embeddings(account, kb.id, embedding_dimensions=256)
        kb = service.get_knowledge_base(account, kb.id)
        assert (kb.status, kb.embedding_dimensions, kb.embeddings_updated_at) == ("active", 512, None)
        assert store.count(account, kb.id) == before
        assert "pump" in service.query_knowledge_base(account, kb.id, "pump setting", top_k=1)[0].text
        assert not [e for e in p["publisher"].events if e.metadata.get("reembed")]


def test_reembed_is_exclusive_defers_ingestion_and_meters_tokens(database, tmp_path):
    from airies.core.errors import ConflictError

    seen = {}

    def during_reembed(call):
        if call != 1:
            return
        for what, attempt in {
            "reembed": lambda: service.update_embeddings(account, kb.id, embedding_dimensions=256),
            "inline": lambda: service.add_document_content(
                account, kb.id, filename="x.txt", content_type="text/plain", data=b"Pressure is 2 bar."
            ),
            "queued": lambda: service.process_document(waiting.id),
        }.items():
            try:
                attempt()
            except ConflictError as exc:
                seen[what] = exc.code
        seen["status"] = service.get_knowledge_base(account, kb.id).status  # committed: other sessions see it
        seen["waiting"] = service.get_document(account, kb.id, waiting.id).status

    settings = kb_settings(tmp_path, kb_embed_batch_chunks=2)
    with ingestion_pipeline(database, settings, embedder_factory=_scripted_factory(settings, 256, during_reembed)) as p:
        service = p["service"]
        account = new_account(database)
        kb = service.create_knowledge_base(account, "Manual", chunk_size=32, chunk_overlap=0)
        service.add_document_content(
            account, kb.id, filename="m.txt", content_type="text/plain", data=SECTIONS.encode()
        )
        waiting, _ = service.upload_document(account, kb.id, filename="later.txt", content_type="text/plain")
        service.storage.upload_bytes(account, waiting.storage_key, b"The boiler pressure should read 1.5 bar.")
        done = service.update_embeddings(account, kb.id, embedding_dimensions=256)
        assert seen == {
            "reembed": "reembedding",
            "inline": "reembedding",
            "queued": "reembedding",
            "status": "reembedding",
            "waiting": "uploaded",  # released for the redelivery, not stuck in "processing"
        }
        assert (done.status, done.embedding_dimensions) == ("active", 256) and done.embeddings_updated_at
        assert service.store("embedded").count(account, kb.id) == 4
        assert service.process_document(waiting.id) == "ready"  # after the re-embed: with the new model
        assert "1.5 bar" in service.query_knowledge_base(account, kb.id, "boiler pressure", top_k=1)[0].text
        metered = [e for e in p["publisher"].events if e.metadata.get("reembed")]
        assert len(metered) == 1 and metered[0].component == "embedding_tokens"
        assert metered[0].quantity > 0 and metered[0].model == "hashing-v1"


def _store_count(service, account, kb):
    return service.store(kb.vector_store, account).count(account, kb.id)


# What pypdf extracts from a LaTeX PDF without a Unicode map: raw glyph codes, NUL among them.
CONTROL_TEXT = (
    "Theorem 3\x00 states that the pump\x01s flow rate doubles when the valve\x1b is open.\n"
    "The proof uses \x0e\x0flemma 2 and the \x7fbound on pressure\x85 from section 4.\x00\x00"
)


def test_pdf_with_control_characters_is_ingested_clean(pipeline):
    """PostgreSQL refuses NUL in text: the chunks of such a PDF used to fail to store (the message retried for
    hours, the vectors stayed behind without chunks); SQLite stored them and served them to the API and prompts.
    Now the text is cleaned for every format before it is chunked, on both databases."""
    p = pipeline
    service, database = p["service"], p["database"]
    account = new_account(database)
    kb = service.create_knowledge_base(account, "Paper")
    pages = [" ".join([CONTROL_TEXT] * 12) for _ in range(3)]
    doc, _ = service.upload_document(account, kb.id, filename="paper.pdf", content_type="application/pdf")
    p["s3"].put_object(
        Bucket=BUCKET, Key=f"accounts/{account}/{doc.storage_key}", Body=make_pdf(pages), ContentType="application/pdf"
    )
    _, result = deliver(p)
    assert result == {"batchItemFailures": []}
    ready = service.get_document(account, kb.id, doc.id)
    assert ready.status == "ready", (ready.error_code, ready.error)
    chunks = service.get_document_chunks(account, kb.id, doc.id)
    assert len(chunks) > 1 and _counts(database, doc.id) == (len(chunks), len(chunks))
    text = " ".join(c.text for c in chunks)
    assert not [ch for ch in text if (ord(ch) < 32 and ch != "\n") or 0x7F <= ord(ch) <= 0x9F]
    assert "Theorem 3 states that the pumps flow rate" in text
    hits = service.query_knowledge_base(account, kb.id, "pump flow rate valve", top_k=3)
    assert len(hits) == 3 and all(h.document_id == doc.id for h in hits)


def test_permanent_error_fails_the_document_with_its_reason_and_leaves_no_vectors(database, tmp_path):
    """An error no retry can fix (here the embedder breaks on the third batch, after two were upserted) ends the
    document ``failed`` with the reason at once: the message is acknowledged, and the vectors already written go."""

    def break_third(call):
        if call == 3:
            raise ValueError("the embedder returned 2 vectors for 1 text")

    settings = kb_settings(tmp_path, kb_stream_batch_chunks=1)
    with ingestion_pipeline(database, settings, embedder_factory=_scripted_factory(settings, 512, break_third)) as p:
        service = p["service"]
        account = new_account(database)
        kb = service.create_knowledge_base(account, "Manual", chunk_size=32, chunk_overlap=0)
        doc, _ = service.upload_document(account, kb.id, filename="m.txt", content_type="text/plain")
        p["s3"].put_object(Bucket=BUCKET, Key=f"accounts/{account}/{doc.storage_key}", Body=SECTIONS.encode())
        _, result = deliver(p)
        assert result == {"batchItemFailures": []}
        failed = service.get_document(account, kb.id, doc.id)
        assert (failed.status, failed.error_code) == ("failed", "processing_failed")
        assert "ValueError: the embedder returned 2 vectors" in failed.error and failed.chunk_count == 0
        assert _counts(database, doc.id) == (0, 0) and _store_count(service, account, kb) == 0


def test_transient_errors_are_retried_without_leftovers_then_the_document_fails(database, tmp_path):
    """A transient fault (a 503 from the embedder on the second batch) releases the document for the redelivery
    with the reason, removing what the attempt wrote; after ``kb_max_attempts`` the document ends failed and the
    message is acknowledged instead of waiting for the dead-letter queue."""
    from airies.core.errors import ProviderError

    class Overloaded(_Scripted):
        def embed(self, texts):  # the batch with the third section fails, every time
            if any("valve" in text for text in texts):
                raise ProviderError("embeddings overloaded", provider="test", retryable=True, upstream_status=503)
            return self.inner.embed(texts)

    settings = kb_settings(tmp_path, kb_stream_batch_chunks=2, kb_max_attempts=3)
    with ingestion_pipeline(database, settings) as p:
        service = p["service"]
        account = new_account(database)
        kb = service.create_knowledge_base(account, "Manual", chunk_size=32, chunk_overlap=0)
        model = (kb.embedding_provider, kb.embedding_model, kb.embedding_dimensions)
        service._embedders[model] = Overloaded(service.embedder(*model), None)
        doc, _ = service.upload_document(account, kb.id, filename="m.txt", content_type="text/plain")
        p["s3"].put_object(Bucket=BUCKET, Key=f"accounts/{account}/{doc.storage_key}", Body=SECTIONS.encode())
        other = service.create_knowledge_base(account, "Other")
        short, _ = service.upload_document(account, other.id, filename="s.txt", content_type="text/plain")
        p["s3"].put_object(Bucket=BUCKET, Key=f"accounts/{account}/{short.storage_key}", Body=b"One short line.")
        messages = [m for m in drain(p["sqs"], p["queue_url"]) if "Records" in json.loads(m["Body"])]
        for attempt in (1, 2):
            _, result = deliver(p, messages)  # the short document is ready, then skipped
            assert result == {"batchItemFailures": [{"itemIdentifier": messages[0]["MessageId"]}]}
            waiting = service.get_document(account, kb.id, doc.id)
            assert waiting.status == "uploaded" and f"attempt {attempt} failed and will be retried" in waiting.error
            assert _counts(database, doc.id) == (0, 0) and _store_count(service, account, kb) == 0
        _, result = deliver(p, messages)
        assert result == {"batchItemFailures": []}
        failed = service.get_document(account, kb.id, doc.id)
        assert (failed.status, failed.error_code) == ("failed", "processing_failed")
        assert "gave up after 3 attempts" in failed.error and "overloaded" in failed.error
        assert _counts(database, doc.id) == (0, 0) and _store_count(service, account, kb) == 0


def test_attempts_that_never_finished_end_the_document_failed(pipeline):
    """A document whose every attempt died without an outcome (time-out, out of memory) is not tried forever: the
    delivery after ``kb_max_attempts`` such claims ends it failed."""
    from datetime import timedelta

    from airies.core.models import utcnow

    p = pipeline
    service, database = p["service"], p["database"]
    account = new_account(database)
    kb = service.create_knowledge_base(account, "Manual")
    doc, _ = service.upload_document(account, kb.id, filename="m.txt", content_type="text/plain")
    stale = utcnow() - timedelta(seconds=p["settings"].kb_processing_lease_s + 60)
    with database.session() as session:
        row = session.get(KnowledgeDocument, doc.id)
        row.status, row.processing_started_at, row.attempts = "processing", stale, p["settings"].kb_max_attempts
    p["s3"].put_object(Bucket=BUCKET, Key=f"accounts/{account}/{doc.storage_key}", Body=FAQ.encode())
    _, result = deliver(p)
    assert result == {"batchItemFailures": []}
    failed = service.get_document(account, kb.id, doc.id)
    assert (failed.status, failed.error_code) == ("failed", "processing_failed") and "did not finish" in failed.error


def test_single_page_pdf_chunks_cite_page_one(pipeline):
    p = pipeline
    service, database = p["service"], p["database"]
    account = new_account(database)
    kb = service.create_knowledge_base(account, "Flyer")
    one = service.add_document_content(
        account, kb.id, filename="flyer.pdf", content_type="application/pdf", data=make_pdf([FAQ])
    )
    two = service.add_document_content(
        account, kb.id, filename="two.pdf", content_type="application/pdf", data=make_pdf(["Page one.", "Page two."])
    )
    text = service.add_document_content(account, kb.id, filename="n.txt", content_type="text/plain", data=b"A note.")
    assert [c.page for c in service.get_document_chunks(account, kb.id, one.id)] == [1]
    assert [c.page for c in service.get_document_chunks(account, kb.id, two.id)] == [1]
    assert [c.page for c in service.get_document_chunks(account, kb.id, text.id)] == [None]  # formats without pages
    assert service.query_knowledge_base(account, kb.id, "support line open", top_k=1)[0].page == 1


def test_state_machine_failure_removes_the_chunks_and_vectors_it_wrote(database, tmp_path):
    """The large-document path: Prepare stores chunk rows, the Map embeds some batches, then a batch fails for good
    and MarkFailed runs the ``fail`` task: the document ends failed holding no chunk and no vector."""
    from tests.kb_support import FakeLambdaContext, load_function

    settings = kb_settings(tmp_path, kb_embed_batch_chunks=1)
    with ingestion_pipeline(database, settings) as p:
        service = p["service"]
        tasks = load_function("tasks")
        tasks.service.set(service)
        try:
            account = new_account(database)
            kb = service.create_knowledge_base(account, "Manual", chunk_size=32, chunk_overlap=0)
            doc, _ = service.upload_document(account, kb.id, filename="m.txt", content_type="text/plain")
            service.storage.upload_bytes(account, doc.storage_key, SECTIONS.encode())
            prepared = tasks.handler({"task": "prepare", "document_id": doc.id, "etag": None}, FakeLambdaContext())
            assert len(prepared["batches"]) == 4
            for batch in prepared["batches"][:2]:
                tasks.handler({"task": "embed", **batch}, FakeLambdaContext())
            assert _counts(database, doc.id) == (4, 2)
            error = {"Error": "States.TaskFailed", "Cause": json.dumps({"errorMessage": "embeddings unavailable"})}
            tasks.handler({"task": "fail", "document_id": doc.id, "error": error}, FakeLambdaContext())
        finally:
            tasks.service.set(None)
        failed = service.get_document(account, kb.id, doc.id)
        assert (failed.status, failed.error_code) == ("failed", "processing_failed")
        assert "embeddings unavailable" in failed.error
        assert _counts(database, doc.id) == (0, 0) and _store_count(service, account, kb) == 0
