"""Knowledge-base REST routes (FastAPI TestClient) under moto S3, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json

import pytest

from tests.conftest import signup
from tests.kb_support import BUCKET, make_pdf, moto_bucket

FAQ = (
    "Returns\n\nYou can return any item within 30 days with the receipt.\n\n"
    "Delivery\n\nStandard delivery takes two to four working days.\n\n"
    "Payments\n\nWe accept Visa, Mastercard and PayPal; invoices are sent by email."
)


@pytest.fixture
def kb_client(client, settings):
    settings.kb_documents_bucket = BUCKET
    settings.kb_scrape_allowed_private_hosts = "127.0.0.1"
    with moto_bucket() as s3:
        client.s3 = s3
        yield client


def _kb(client, auth, **extra):
    response = client.post("/api/v1/knowledge-bases", json={"name": "Help center", **extra}, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()


def test_crud_documents_query_and_delete(kb_client, auth):
    client = kb_client
    kb = _kb(client, auth, description="FAQ")
    assert kb["embedding_provider"] == "hashing" and kb["lexical_only"] is True and kb["vector_store"] == "embedded"
    listed = client.get("/api/v1/knowledge-bases", headers=auth).json()
    assert [k["id"] for k in listed["data"]] == [kb["id"]]
    updated = client.put(f"/api/v1/knowledge-bases/{kb['id']}", json={"name": "Help"}, headers=auth)
    assert updated.status_code == 200 and updated.json()["name"] == "Help"

    created = client.post(
        f"/api/v1/knowledge-bases/{kb['id']}/documents",
        json={"filename": "faq.md", "content_type": "text/markdown", "text": FAQ},
        headers=auth,
    )
    assert created.status_code == 201, created.text
    doc = created.json()["document"]
    assert doc["status"] == "ready" and doc["chunk_count"] >= 1 and created.json()["upload"] is None

    pdf = make_pdf(["Opening hours are 9 to 17 on weekdays.", "Closed on public holidays."])
    multipart = client.post(
        f"/api/v1/knowledge-bases/{kb['id']}/documents",
        files={"file": ("hours.pdf", pdf, "application/pdf")},
        headers=auth,
    )
    assert multipart.status_code == 201, multipart.text
    assert multipart.json()["document"]["page_count"] == 2

    b64 = client.post(
        f"/api/v1/knowledge-bases/{kb['id']}/documents",
        json={"filename": "note.txt", "content_base64": base64.b64encode(b"Parking is in the basement.").decode()},
        headers=auth,
    )
    assert b64.status_code == 201 and b64.json()["document"]["content_type"] == "text/plain"

    query = client.post(
        f"/api/v1/knowledge-bases/{kb['id']}/query",
        json={"query": "how long does delivery take?", "top_k": 2},
        headers=auth,
    )
    assert query.status_code == 200
    top = query.json()["data"][0]
    assert "two to four working days" in top["text"] and top["document_name"] == "faq.md" and top["score"] > 0

    docs = client.get(f"/api/v1/knowledge-bases/{kb['id']}/documents", headers=auth).json()["data"]
    assert len(docs) == 3
    chunks = client.get(f"/api/v1/knowledge-bases/{kb['id']}/documents/{doc['id']}/chunks", headers=auth).json()["data"]
    assert chunks[0]["chunk_index"] == 0 and "30 days" in chunks[0]["text"]
    assert client.get(f"/api/v1/knowledge-bases/{kb['id']}", headers=auth).json()["document_count"] == 3

    assert client.delete(f"/api/v1/knowledge-bases/{kb['id']}/documents/{doc['id']}", headers=auth).status_code == 204
    assert client.get(f"/api/v1/knowledge-bases/{kb['id']}/documents/{doc['id']}", headers=auth).status_code == 404
    assert client.delete(f"/api/v1/knowledge-bases/{kb['id']}", headers=auth).status_code == 204
    assert client.get(f"/api/v1/knowledge-bases/{kb['id']}", headers=auth).status_code == 404
    assert client.s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0


def test_presigned_upload_is_returned_for_large_files(kb_client, auth):
    client = kb_client
    kb = _kb(client, auth)
    response = client.post(
        f"/api/v1/knowledge-bases/{kb['id']}/documents",
        json={"filename": "big manual.pdf", "content_type": "application/pdf", "size_bytes": 8_000_000},
        headers=auth,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["document"]["status"] == "pending_upload"
    upload = body["upload"]
    assert upload["fields"]["key"].endswith("/big_manual.pdf") and upload["fields"]["Content-Type"] == "application/pdf"
    assert upload["max_bytes"] == 50 * 1024 * 1024


def test_bad_input_is_rejected_with_clear_errors(kb_client, auth):
    client = kb_client
    kb = _kb(client, auth)
    url = f"/api/v1/knowledge-bases/{kb['id']}/documents"
    image = client.post(
        url, json={"filename": "cat.png", "content_type": "image/png", "content_base64": "iVBORw0KGgo="}, headers=auth
    )
    assert image.status_code == 415 and "not supported" in image.json()["error"]["message"]
    big = client.post(
        url, json={"filename": "x.pdf", "content_type": "application/pdf", "size_bytes": 10**9}, headers=auth
    )
    assert big.status_code == 413
    junk = client.post(url, json={"filename": "x.txt", "content_base64": "!!!"}, headers=auth)
    assert junk.status_code == 400
    encrypted = client.post(url, files={"file": ("locked.pdf", _encrypted_pdf(), "application/pdf")}, headers=auth)
    assert encrypted.status_code == 201
    doc = encrypted.json()["document"]
    assert (doc["status"], doc["error_code"]) == ("failed", "encrypted_pdf") and "password" in doc["error"]
    assert client.post(f"/api/v1/knowledge-bases/{kb['id']}/query", json={"query": ""}, headers=auth).status_code == 422
    assert client.post("/api/v1/knowledge-bases", json={"name": "x", "chunk_size": 5}, headers=auth).status_code == 422
    assert (
        client.post(
            "/api/v1/knowledge-bases", json={"name": "x", "embedding_provider": "openai"}, headers=auth
        ).status_code
        == 501
    )


def _encrypted_pdf() -> bytes:
    import io

    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    writer.append(PdfReader(io.BytesIO(make_pdf(["Top secret numbers."]))))
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_reembed_switches_the_model_and_keeps_answers(kb_client, auth):
    client = kb_client
    kb = _kb(client, auth)
    client.post(
        f"/api/v1/knowledge-bases/{kb['id']}/documents", json={"filename": "faq.txt", "text": FAQ}, headers=auth
    )
    response = client.post(
        f"/api/v1/knowledge-bases/{kb['id']}/reembed",
        json={"embedding_provider": "hashing", "embedding_dimensions": 256},
        headers=auth,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["embedding_dimensions"] == 256 and body["status"] == "active" and body["embeddings_updated_at"]
    top = client.post(
        f"/api/v1/knowledge-bases/{kb['id']}/query", json={"query": "which cards do you accept"}, headers=auth
    )
    assert "Mastercard" in top.json()["data"][0]["text"]


def test_foreign_ids_are_404(kb_client, auth):
    client = kb_client
    kb = _kb(client, auth)
    other = signup(client)
    for method, path, body in [
        ("get", f"/api/v1/knowledge-bases/{kb['id']}", None),
        ("put", f"/api/v1/knowledge-bases/{kb['id']}", {"name": "mine"}),
        ("delete", f"/api/v1/knowledge-bases/{kb['id']}", None),
        ("post", f"/api/v1/knowledge-bases/{kb['id']}/query", {"query": "x"}),
        ("post", f"/api/v1/knowledge-bases/{kb['id']}/documents", {"filename": "a.txt", "text": "hello"}),
        ("get", f"/api/v1/knowledge-bases/{kb['id']}/documents", None),
        ("get", f"/api/v1/knowledge-bases/{kb['id']}/scrape-jobs", None),
        ("post", f"/api/v1/knowledge-bases/{kb['id']}/reembed", {}),
    ]:
        kwargs = {"json": body} if body is not None else {}
        response = getattr(client, method)(path, headers=other, **kwargs)
        assert response.status_code == 404, (method, path, response.text)
    assert client.get("/api/v1/knowledge-bases", headers=other).json()["data"] == []
    assert client.get("/api/v1/knowledge-bases").status_code == 401


def test_agent_validator_sees_knowledge_bases(kb_client, auth):
    client = kb_client
    kb = _kb(client, auth)
    response = client.post(
        "/api/v1/agents/validate", json={"name": "A", "knowledge_base_ids": [kb["id"], "kb_missing"]}, headers=auth
    )
    problems = [p for p in response.json()["problems"] if p["code"] == "unknown_knowledge_base"]
    assert [p["field"] for p in problems] == ["knowledge_base_ids.1"]


def test_ingestion_usage_reaches_billing_once(kb_client, auth, database):
    from sqlalchemy import select

    from airies.billing.models import UsageEventRecord

    client = kb_client
    kb = _kb(client, auth)
    pdf = make_pdf(["Page one.", "Page two.", "Page three."])
    created = client.post(
        f"/api/v1/knowledge-bases/{kb['id']}/documents",
        files={"file": ("three.pdf", pdf, "application/pdf")},
        headers=auth,
    )
    doc = created.json()["document"]
    assert doc["status"] == "ready"
    with database.session() as session:
        rows = list(
            session.scalars(select(UsageEventRecord).where(UsageEventRecord.idempotency_key.like(f"{doc['id']}:%")))
        )
    by_component = {row.component: row for row in rows}
    assert set(by_component) == {"kb_pages", "embedding_tokens"}
    assert by_component["kb_pages"].quantity_micro == 3 * 1_000_000
    assert by_component["embedding_tokens"].provider == "hashing"


def test_update_document_replaces_its_chunks(kb_client, auth):
    client = kb_client
    kb = _kb(client, auth, chunk_size=40, chunk_overlap=0)
    url = f"/api/v1/knowledge-bases/{kb['id']}/documents"
    doc = client.post(url, json={"filename": "policy.txt", "text": FAQ + "\n\n" + FAQ}, headers=auth).json()["document"]
    assert doc["chunk_count"] > 1
    updated = client.put(f"{url}/{doc['id']}", json={"text": "Parking is free on Sundays."}, headers=auth)
    assert updated.status_code == 200, updated.text
    body = updated.json()
    assert (body["id"], body["name"], body["status"], body["chunk_count"]) == (doc["id"], "policy.txt", "ready", 1)
    hits = client.post(
        f"/api/v1/knowledge-bases/{kb['id']}/query", json={"query": "delivery", "top_k": 5}, headers=auth
    )
    assert [h["text"] for h in hits.json()["data"]] in ([], ["Parking is free on Sundays."])
    assert client.get(f"/api/v1/knowledge-bases/{kb['id']}", headers=auth).json()["chunk_count"] == 1
    assert client.put(f"{url}/{doc['id']}", json={}, headers=auth).status_code == 400
    other = signup(client)
    assert client.put(f"{url}/{doc['id']}", json={"text": "x"}, headers=other).status_code == 404


def test_embedding_model_is_validated_per_provider(kb_client, auth):
    client = kb_client
    for body, field in [
        ({"embedding_provider": "hashing", "embedding_model": "zzz"}, "embedding_model"),
        ({"embedding_provider": "openai", "embedding_model": "text-embedding-4-huge"}, "embedding_model"),
        ({"embedding_provider": "minilm", "embedding_dimensions": 512}, "embedding_dimensions"),
        (
            {"embedding_provider": "openai", "embedding_model": "text-embedding-ada-002", "embedding_dimensions": 256},
            "embedding_dimensions",
        ),
    ]:
        response = client.post("/api/v1/knowledge-bases", json={"name": "x", **body}, headers=auth)
        assert response.status_code == 422, (body, response.text)
        error = response.json()["error"]
        assert error["code"] == "validation_failed" and error["details"][0]["field"] == field
    assert client.get("/api/v1/knowledge-bases", headers=auth).json()["data"] == []
    kb = _kb(client, auth, embedding_provider="hashing", embedding_model="hashing-v1", embedding_dimensions=256)
    bad = client.post(f"/api/v1/knowledge-bases/{kb['id']}/reembed", json={"embedding_model": "zzz"}, headers=auth)
    assert (
        bad.status_code == 422
        and client.get(f"/api/v1/knowledge-bases/{kb['id']}", headers=auth).json()["embedding_model"] == "hashing-v1"
    )


def test_tier_size_limit_answers_402_and_changes_nothing(kb_client, auth, settings):
    """The free tier allows 10 MB of knowledge-base content: a declared upload, inline content or a replacement
    that would pass it answers 402 ``kb_size_limit`` and leaves the knowledge base as it was."""
    client = kb_client
    kb = _kb(client, auth)
    base = f"/api/v1/knowledge-bases/{kb['id']}/documents"
    too_big = client.post(
        base,
        json={"filename": "huge.pdf", "content_type": "application/pdf", "size_bytes": 11 * 1024 * 1024},
        headers=auth,
    )
    assert too_big.status_code == 402, too_big.text
    assert too_big.json()["error"]["code"] == "kb_size_limit"
    assert client.get(base, headers=auth).json()["data"] == []

    reserved = client.post(
        base,
        json={"filename": "big.pdf", "content_type": "application/pdf", "size_bytes": 10 * 1024 * 1024 - 1000},
        headers=auth,
    )
    assert reserved.status_code == 201, reserved.text
    small = client.post(base, json={"filename": "a.txt", "text": "Short note."}, headers=auth)
    assert small.status_code == 201 and small.json()["document"]["status"] == "ready"
    inline = client.post(base, json={"filename": "b.txt", "text": "x " * 1000}, headers=auth)
    assert inline.status_code == 402 and inline.json()["error"]["code"] == "kb_size_limit"
    doc_id = small.json()["document"]["id"]
    replaced = client.put(f"{base}/{doc_id}", json={"text": "y " * 1000}, headers=auth)
    assert replaced.status_code == 402 and replaced.json()["error"]["code"] == "kb_size_limit"
    listed = client.get(base, headers=auth).json()["data"]
    assert sorted(d["name"] for d in listed) == ["a.txt", "big.pdf"]
    kept = client.get(f"{base}/{doc_id}", headers=auth).json()
    assert kept["size_bytes"] == len("Short note.") and kept["status"] == "ready"
    chunks = client.get(f"{base}/{doc_id}/chunks", headers=auth).json()["data"]
    assert chunks[0]["text"] == "Short note."


def test_inline_pdf_with_control_characters_is_ready_and_clean(kb_client, auth):
    """NUL and other control characters that pypdf extracts used to answer 500 on PostgreSQL (and reach the chunks
    API and prompts on SQLite)."""
    client = kb_client
    kb = _kb(client, auth)
    text = "Returns\x00 are accepted\x01 within 30 days\x1b of delivery.\x7f Keep the receipt\x9f."
    created = client.post(
        f"/api/v1/knowledge-bases/{kb['id']}/documents",
        files={"file": ("returns.pdf", make_pdf([text, text]), "application/pdf")},
        headers=auth,
    )
    assert created.status_code == 201, created.text
    doc = created.json()["document"]
    assert doc["status"] == "ready", doc
    chunks = client.get(f"/api/v1/knowledge-bases/{kb['id']}/documents/{doc['id']}/chunks", headers=auth).json()
    assert chunks["data"][0]["text"].startswith("Returns are accepted within 30 days of delivery. Keep the receipt.")
    assert "\\u00" not in json.dumps(chunks)  # no control character left to escape


def test_text_cannot_replace_a_pdf_without_changing_its_type(kb_client, auth):
    """``PUT`` with ``text`` on a PDF document used to turn a ready document into ``failed corrupt_pdf``: now it is
    refused (415) and the document keeps serving; naming a text content_type changes the type explicitly."""
    client = kb_client
    kb = _kb(client, auth)
    base = f"/api/v1/knowledge-bases/{kb['id']}/documents"
    pdf = make_pdf(["Opening hours are 9 to 17 on weekdays."])
    doc = client.post(base, files={"file": ("hours.pdf", pdf, "application/pdf")}, headers=auth).json()["document"]
    assert doc["status"] == "ready"
    for body in (
        {"text": "Opening hours are 8 to 18."},
        {"text": "Opening hours are 8 to 18.", "content_type": "application/pdf"},
        {"content_base64": base64.b64encode(b"not a pdf at all").decode()},
    ):
        refused = client.put(f"{base}/{doc['id']}", json=body, headers=auth)
        assert refused.status_code == 415, refused.text
        error = refused.json()["error"]
        assert error["code"] == "content_type_mismatch" and "application/pdf" in error["message"]
    kept = client.get(f"{base}/{doc['id']}", headers=auth).json()
    assert (kept["status"], kept["content_type"], kept["size_bytes"]) == ("ready", "application/pdf", len(pdf))
    hits = client.post(f"/api/v1/knowledge-bases/{kb['id']}/query", json={"query": "opening hours"}, headers=auth)
    assert [h["document_id"] for h in hits.json()["data"]] == [doc["id"]]

    changed = client.put(
        f"{base}/{doc['id']}", json={"text": "Opening hours are 8 to 18.", "content_type": "text/plain"}, headers=auth
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["status"], changed.json()["content_type"]) == ("ready", "text/plain")
    newer = make_pdf(["Opening hours are 7 to 19."])
    back = client.put(f"{base}/{doc['id']}", files={"file": ("hours.pdf", newer, "application/pdf")}, headers=auth)
    assert (back.status_code, back.json()["content_type"], back.json()["page_count"]) == (200, "application/pdf", 1)
