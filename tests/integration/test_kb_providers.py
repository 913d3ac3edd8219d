"""Pinecone and OpenAI embeddings through their official SDKs against local wire-level servers (real sockets)."""

from __future__ import annotations

import numpy as np
import pytest

from airies.core.errors import ProviderError
from airies.knowledge.embedders.openai import OpenAIEmbedder
from airies.knowledge.service import build_knowledge_service
from airies.knowledge.vector_stores.base import VectorRecord
from airies.knowledge.vector_stores.pinecone import PineconeVectorStore, upsert_batch_size
from tests.doubles.openai_embeddings_server import OpenAIEmbeddingsDouble
from tests.doubles.pinecone_server import PineconeDouble
from tests.kb_support import RecordingPublisher, kb_settings, moto_bucket, new_account


def _records(n: int, dims: int, account: str = "acc_a", kb: str = "kb_a", doc: str = "doc_1") -> list[VectorRecord]:
    rng = np.random.default_rng(7)
    values = rng.standard_normal((n, dims)).astype(np.float32)
    values /= np.linalg.norm(values, axis=1, keepdims=True)
    return [VectorRecord(f"{doc}-{i:05d}", values[i], account, kb, doc, i) for i in range(n)]


def test_pinecone_store_batches_upserts_and_scopes_queries():
    with PineconeDouble() as server:
        store = PineconeVectorStore(api_key=server.api_key, index_host=server.host)
        records = _records(250, 64)
        store.upsert(records)
        assert server.requests["/vectors/upsert"] == 3  # 100 + 100 + 50
        assert max(len(b["vectors"]) for r, b in server.bodies if r == "/vectors/upsert") <= 100
        first = next(b for r, b in server.bodies if r == "/vectors/upsert")
        assert first["namespace"] == "kb_a"
        assert first["vectors"][0]["metadata"] == {
            "account_id": "acc_a",
            "knowledge_base_id": "kb_a",
            "document_id": "doc_1",
            "chunk_index": 0,
        }
        # Another account writes into a namespace with the same name: never returned to acc_a.
        store.upsert([VectorRecord("evil-0", records[5].values, "acc_b", "kb_a", "doc_x", 0)])
        matches = store.query("acc_a", "kb_a", records[5].values, 3)
        assert matches[0].id == records[5].id and matches[0].score == pytest.approx(1.0, abs=1e-5)
        assert all(m.id != "evil-0" for m in store.query("acc_a", "kb_a", records[5].values, 10))
        query_body = [b for r, b in server.bodies if r == "/query"][-1]
        assert query_body["filter"] == {"account_id": {"$eq": "acc_a"}, "knowledge_base_id": {"$eq": "kb_a"}}
        assert store.count("acc_a", "kb_a") == 251  # the namespace count, as Pinecone reports it
        store.delete("acc_a", "kb_a", [r.id for r in records[:10]])
        assert store.count("acc_a", "kb_a") == 241
        store.delete_collection("acc_a", "kb_a")
        assert store.count("acc_a", "kb_a") == 0


def test_pinecone_batch_size_respects_the_request_limit():
    assert upsert_batch_size(384) == 100
    assert upsert_batch_size(3072) * (3072 * 22 + 400) <= 2_000_000
    with PineconeDouble() as server:
        store = PineconeVectorStore(api_key=server.api_key, index_host=server.host)
        store.upsert(_records(120, 3072))  # 2 MB per request would be exceeded at 100 vectors of 3072 dims
        size = upsert_batch_size(3072)
        assert server.requests["/vectors/upsert"] == -(-120 // size)


def test_pinecone_errors_become_provider_errors():
    with PineconeDouble() as server:
        store = PineconeVectorStore(api_key="wrong", index_host=server.host)
        with pytest.raises(ProviderError) as info:
            store.query("a", "k", np.ones(4, dtype=np.float32), 3)
        assert info.value.provider == "pinecone" and info.value.upstream_status == 401


def test_openai_embedder_batches_and_retries():
    with OpenAIEmbeddingsDouble() as server:
        embedder = OpenAIEmbedder(api_key="sk-test", base_url=server.base_url, max_retries=2)
        texts = [f"document chunk number {i} about topic {i % 7}" for i in range(600)]
        server.fail_next(500)
        server.fail_next(429)
        result = embedder.embed(texts)
        assert result.vectors.shape == (600, 1536)
        assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
        assert result.requests == 3  # 256 + 256 + 88 inputs
        assert len(server.requests) == 5  # + the two retried failures
        assert [len(r["input"]) for r in server.requests[2:]] == [256, 256, 88]
        assert server.requests[0]["encoding_format"] == "base64"
        assert result.tokens > 0
        again = embedder.embed(texts[:1]).vectors[0]
        assert np.allclose(again, result.vectors[0], atol=1e-6)


def test_openai_embedder_gives_up_with_a_provider_error():
    with OpenAIEmbeddingsDouble() as server:
        embedder = OpenAIEmbedder(api_key="sk-test", base_url=server.base_url, max_retries=1)
        server.fail_next(503)
        server.fail_next(503)
        with pytest.raises(ProviderError) as info:
            embedder.embed(["hello"])
        assert info.value.retryable and info.value.upstream_status == 503
        bad = OpenAIEmbedder(api_key="sk-wrong", base_url=server.base_url, max_retries=0)
        with pytest.raises(ProviderError) as info:
            bad.embed(["hello"])
        assert not info.value.retryable and info.value.upstream_status == 401


def test_knowledge_base_on_pinecone_with_openai_embeddings(database, tmp_path):
    with PineconeDouble() as pinecone, OpenAIEmbeddingsDouble() as openai_server, moto_bucket():
        settings = kb_settings(
            tmp_path,
            openai_api_key="sk-test",
            kb_embeddings_base_url=openai_server.base_url,
            pinecone_api_key=pinecone.api_key,
            pinecone_index_host=pinecone.host,
        )
        service = build_knowledge_service(settings, database, usage_publisher=RecordingPublisher())
        account = new_account(database)
        kb = service.create_knowledge_base(
            account,
            "Pinecone KB",
            embedding_provider="openai",
            embedding_model="text-embedding-3-small",
            embedding_dimensions=256,
            vector_store="pinecone",
        )
        assert (kb.embedding_model, kb.embedding_dimensions) == ("text-embedding-3-small", 256)
        text = "\n\n".join(
            [
                "Our warehouse in Leipzig ships every weekday before noon.",
                "Gift cards never expire and can be used online or in store.",
                "The loyalty programme gives one point per euro spent.",
            ]
        )
        doc = service.add_document_content(
            account, kb.id, filename="policies.txt", content_type="text/plain", data=text.encode()
        )
        assert doc.status == "ready"
        assert all(r["dimensions"] == 256 for r in openai_server.requests)
        hits = service.query_knowledge_base(account, kb.id, "do gift cards expire?", top_k=1)
        assert "Gift cards" in hits[0].text
        assert set(pinecone.namespaces) == {kb.id}
        service.delete_document(account, kb.id, doc.id)
        assert not pinecone.namespaces.get(kb.id)


def _pinecone_kb_roundtrip(service, account):
    kb = service.create_knowledge_base(account, "Pinecone KB", vector_store="pinecone")
    doc = service.add_document_content(
        account, kb.id, filename="p.txt", content_type="text/plain", data=b"Gift cards never expire."
    )
    assert doc.status == "ready", doc.error
    return kb, service.query_knowledge_base(account, kb.id, "do gift cards expire?", top_k=1)


def test_pinecone_platform_key_comes_from_the_provider_keys_secret_on_aws(database, tmp_path, monkeypatch):
    """On AWS the platform's Pinecone key is read like the other platform keys: from the provider-keys secret."""
    import json

    import boto3

    monkeypatch.delenv("AIRIES_PINECONE_API_KEY", raising=False)
    with PineconeDouble() as pinecone, moto_bucket():
        boto3.client("secretsmanager", region_name="us-east-1").create_secret(
            Name="airies/kb-provider-keys", SecretString=json.dumps({"pinecone_api_key": pinecone.api_key})
        )
        settings = kb_settings(
            tmp_path,
            stage="prod",
            provider_keys_secret_name="airies/kb-provider-keys",
            pinecone_index_host=pinecone.host,
        )
        assert settings.pinecone_api_key is None
        service = build_knowledge_service(settings, database, usage_publisher=RecordingPublisher())
        kb, hits = _pinecone_kb_roundtrip(service, new_account(database))
        assert "Gift cards" in hits[0].text and set(pinecone.namespaces) == {kb.id}


def test_pinecone_uses_the_accounts_own_key_when_it_stored_one(database, tmp_path, monkeypatch):
    from airies.accounts.provider_keys import ProviderKeyService

    monkeypatch.delenv("AIRIES_PINECONE_API_KEY", raising=False)
    with PineconeDouble(api_key="pc-account-key") as pinecone, moto_bucket():
        settings = kb_settings(tmp_path, pinecone_api_key="pc-platform-key", pinecone_index_host=pinecone.host)
        service = build_knowledge_service(settings, database, usage_publisher=RecordingPublisher())
        own, other = new_account(database), new_account(database)
        with database.session() as session:
            ProviderKeyService(session, settings).store(own, "pinecone", "pc-account-key")
        kb, hits = _pinecone_kb_roundtrip(service, own)
        assert "Gift cards" in hits[0].text and set(pinecone.namespaces) == {kb.id}
        # An account without a key of its own gets the platform's, which this index does not accept.
        with pytest.raises(ProviderError) as info:
            _pinecone_kb_roundtrip(service, other)
        assert info.value.upstream_status == 401 and set(pinecone.namespaces) == {kb.id}


def test_failed_ingestion_leaves_no_vectors_in_pinecone(database, tmp_path):
    """Vectors upserted before an attempt fails (here the embedder breaks on the second batch) are deleted from the
    Pinecone namespace: none is left without its chunk row to take a top_k slot."""
    from airies.knowledge.embedders import build_embedder

    class BreaksOnSecondBatch:
        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def embed(self, texts):
            self.calls += 1
            if self.calls == 2:
                raise TypeError("unexpected embedding payload")
            return self.inner.embed(texts)

    with PineconeDouble() as pinecone, moto_bucket():
        settings = kb_settings(
            tmp_path, pinecone_api_key=pinecone.api_key, pinecone_index_host=pinecone.host, kb_stream_batch_chunks=1
        )
        service = build_knowledge_service(
            settings,
            database,
            usage_publisher=RecordingPublisher(),
            embedder_factory=lambda p, m, d: BreaksOnSecondBatch(build_embedder(p, m, d, settings)),
        )
        account = new_account(database)
        kb = service.create_knowledge_base(
            account, "Pinecone KB", vector_store="pinecone", chunk_size=32, chunk_overlap=0
        )
        text = "\n\n".join(
            f"Paragraph {i} says the depot in town {i} opens at {i} in the morning for parcels." for i in range(4)
        )
        doc = service.add_document_content(
            account, kb.id, filename="depots.txt", content_type="text/plain", data=text.encode()
        )
        assert (doc.status, doc.error_code) == ("failed", "processing_failed") and "TypeError" in doc.error
        assert pinecone.requests["/vectors/upsert"] >= 1  # the first batch was written before the failure
        assert not pinecone.namespaces.get(kb.id)
