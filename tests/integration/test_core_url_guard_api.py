"""Tenant-supplied hosts through the URL guard at the API: Pinecone index hosts (saved, then used), on both databases."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler

import pytest
from sqlalchemy import select

from airies.accounts.provider_keys import ProviderKeyService
from airies.llm.models import ProviderKey
from tests.doubles._wire import LocalHttpServer
from tests.doubles.pinecone_control_server import PineconeControlDouble
from tests.doubles.pinecone_server import PineconeDouble
from tests.kb_support import BUCKET, moto_bucket

PINECONE_KEY = "pc-account-key-0001"


@pytest.fixture
def control_plane(monkeypatch):
    """Pinecone's control plane (the key check), where a refused host must never send the key either."""
    with PineconeControlDouble(api_key=PINECONE_KEY) as double:
        monkeypatch.setenv("PINECONE_CONTROLLER_HOST", double.url)
        yield double


class NotPinecone(LocalHttpServer):
    """Answers every request with an HTML page holding a secret, as an internal service or metadata endpoint would."""

    SECRET = "internal-credential-7f3a9c"

    def __init__(self, status: int = 200, content_type: str = "text/html") -> None:
        self.status = status
        self.content_type = content_type
        self.requests: list[tuple[str, str, str | None]] = []

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        handler.rfile.read(int(handler.headers.get("content-length") or 0))
        self.requests.append((handler.command, handler.path, handler.headers.get("api-key")))
        if self.content_type == "application/json":
            body = json.dumps({"error": {"code": "INTERNAL", "message": f"token={self.SECRET}"}}).encode()
        else:
            body = f"<html><body>token={self.SECRET}</body></html>".encode()
        handler.send_response(self.status)
        handler.send_header("content-type", self.content_type)
        handler.send_header("content-length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


@pytest.fixture
def kb_client(client, settings):
    settings.kb_documents_bucket = BUCKET
    with moto_bucket():
        yield client


def _account_id(client, auth) -> str:
    return client.get("/api/v1/accounts/me", headers=auth).json()["id"]


def _stored_keys(database) -> list[str]:
    with database.session() as session:
        return list(session.scalars(select(ProviderKey.provider)))


@pytest.mark.parametrize(
    ("index_host", "address_class"),
    [
        ("169.254.169.254", "metadata"),
        ("http://169.254.169.254", "metadata"),
        ("http://127.0.0.1:{port}", "loopback"),
        ("localhost:{port}", "loopback"),  # a name that resolves to loopback
        ("10.0.0.7", "private"),
        ("100.64.1.1", "shared"),
        ("0.0.0.0", "unspecified"),
    ],
)
def test_pinecone_index_host_on_a_non_public_address_is_refused_and_nothing_is_stored(
    client, auth, database, control_plane, index_host, address_class
):
    with NotPinecone() as target:
        port = target.url.rsplit(":", 1)[1]
        body = {"api_key": PINECONE_KEY, "index_host": index_host.format(port=port)}
        response = client.put("/api/v1/provider-keys/pinecone", json=body, headers=auth)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "url_not_allowed" and address_class.replace("_", "-") in error["message"]
        assert error["details"][0]["field"] == "index_host"
        assert target.requests == []
    assert control_plane.requests == []  # refused before the key went anywhere
    assert _stored_keys(database) == []
    assert client.get("/api/v1/provider-keys", headers=auth).json()["data"] == []


def test_pinecone_index_host_must_be_https_outside_local(client, auth, settings, database, control_plane):
    settings.stage = "prod"
    body = {"api_key": PINECONE_KEY, "index_host": "http://idx-abc.svc.example.pinecone.io"}
    response = client.put("/api/v1/provider-keys/pinecone", json=body, headers=auth)
    assert response.status_code == 422 and response.json()["error"]["details"][0]["code"] == "scheme_not_allowed"
    assert _stored_keys(database) == [] and control_plane.requests == []


def test_allow_listed_index_host_is_accepted(client, auth, settings, database, control_plane):
    with PineconeDouble(api_key=PINECONE_KEY) as pinecone:
        settings.url_guard_allowed_hosts = pinecone.url.removeprefix("http://")
        body = {"api_key": PINECONE_KEY, "index_host": pinecone.host}
        response = client.put("/api/v1/provider-keys/pinecone", json=body, headers=auth)
        assert response.status_code == 200, response.text
        assert _stored_keys(database) == ["pinecone"]


def test_a_stored_index_host_is_checked_again_before_use(kb_client, auth, settings, database):
    """A host stored before the guard existed (or whose DNS changed since) is refused when a knowledge base uses it."""
    client = kb_client
    with PineconeDouble(api_key=PINECONE_KEY) as pinecone:
        account_id = _account_id(client, auth)
        with database.session() as session:
            ProviderKeyService(session, settings).store(
                account_id, "pinecone", PINECONE_KEY, {"index_host": pinecone.host}
            )
        body = {"name": "Pinecone KB", "vector_store": "pinecone"}
        refused = client.post("/api/v1/knowledge-bases", json=body, headers=auth)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"] == "url_not_allowed"
        assert sum(pinecone.requests.values()) == 0  # the key never reached the address
        assert client.get("/api/v1/knowledge-bases", headers=auth).json()["data"] == []

        settings.url_guard_allowed_hosts = pinecone.url.removeprefix("http://")  # the operator allows it
        created = client.post("/api/v1/knowledge-bases", json=body, headers=auth)
        assert created.status_code == 201, created.text
        assert pinecone.requests["/describe_index_stats"] == 1


@pytest.mark.parametrize(
    ("status", "content_type"), [(200, "text/html"), (404, "text/html"), (500, "application/json")]
)
def test_an_upstream_that_is_not_pinecone_is_reported_without_its_answer(
    kb_client, auth, settings, database, status, content_type
):
    client = kb_client
    with NotPinecone(status, content_type) as target:
        settings.url_guard_allowed_hosts = target.url.removeprefix("http://")
        account_id = _account_id(client, auth)
        with database.session() as session:
            ProviderKeyService(session, settings).store(
                account_id, "pinecone", PINECONE_KEY, {"index_host": target.url}
            )
        response = client.post(
            "/api/v1/knowledge-bases", json={"name": "Pinecone KB", "vector_store": "pinecone"}, headers=auth
        )
        assert target.requests, "the allow-listed host was asked"
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "provider_error" and "describe_index_stats" in error["message"]
    for upstream_text in (NotPinecone.SECRET, "<html", "JSON", "parse", "malformed"):
        assert upstream_text not in response.text
