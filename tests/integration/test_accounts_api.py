from __future__ import annotations

from tests.conftest import signup


def test_signup_returns_key_once_and_it_authenticates(client):
    response = client.post("/api/v1/accounts", json={"name": "Acme", "email": "Ops@Acme.example"})
    assert response.status_code == 201
    body = response.json()
    key = body["api_key"]
    assert key.startswith("ak_live_") and len(key) > 40
    assert body["account"]["email"] == "ops@acme.example"
    me = client.get("/api/v1/accounts/me", headers={"Authorization": f"Bearer {key}"})
    assert me.status_code == 200 and me.json()["id"] == body["account"]["id"]
    listed = client.get("/api/v1/api-keys", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    assert len(listed) == 1
    assert key not in str(listed) and listed[0]["masked_key"].endswith(key[-4:])


def test_duplicate_email_is_conflict(client):
    client.post("/api/v1/accounts", json={"name": "A", "email": "same@example.com"})
    response = client.post("/api/v1/accounts", json={"name": "B", "email": "SAME@example.com"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "email_taken"


def test_missing_bad_and_revoked_keys_are_401(client):
    assert client.get("/api/v1/agents").status_code == 401
    assert client.get("/api/v1/agents", headers={"Authorization": "Bearer nope"}).status_code == 401
    headers = signup(client)
    created = client.post("/api/v1/api-keys", json={"name": "ci"}, headers=headers)
    assert created.status_code == 201
    second = {"Authorization": f"Bearer {created.json()['api_key']}"}
    assert client.get("/api/v1/agents", headers=second).status_code == 200
    assert client.delete(f"/api/v1/api-keys/{created.json()['id']}", headers=headers).status_code == 204
    response = client.get("/api/v1/agents", headers=second)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_foreign_key_id_is_404(client):
    a = signup(client)
    b = signup(client)
    key_id = client.get("/api/v1/api-keys", headers=a).json()["data"][0]["id"]
    assert client.delete(f"/api/v1/api-keys/{key_id}", headers=b).status_code == 404
    assert client.get("/api/v1/agents", headers=a).status_code == 200


def test_signup_disabled(client, app):
    app.state.settings.allow_public_signup = False
    response = client.post("/api/v1/accounts", json={"name": "A", "email": "x@example.com"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "signup_disabled"


def test_bad_signup_bodies(client):
    assert (
        client.post("/api/v1/accounts", content=b"{not json", headers={"content-type": "application/json"}).status_code
        == 400
    )
    assert client.post("/api/v1/accounts", json={"name": "A", "email": "not-an-email"}).status_code == 422
    assert client.post("/api/v1/accounts", json={"name": "A", "email": "a@b.co", "admin": True}).status_code == 422
    huge = {"name": "A" * 2_000_000, "email": "a@b.co"}
    response = client.post("/api/v1/accounts", json=huge)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_health_needs_no_key(client):
    response = client.get("/api/v1/health")
    assert response.status_code == 200
    assert response.json()["database"] in {"sqlite", "postgresql"}


def test_writes_are_committed_before_the_response_starts(app, database):
    """A client acting on a response (its new key, its new agent) must find the write committed: check the
    database from another connection at the moment the response's first byte goes out."""
    import asyncio
    import json

    from sqlalchemy import func, select

    from airies.accounts.models import Account

    body = json.dumps({"name": "Race Co", "email": "race@example.com"}).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/accounts",
        "raw_path": b"/api/v1/accounts",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    seen: dict[str, object] = {}

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            seen["status"] = message["status"]
            with database.engine.connect() as conn:  # a separate connection sees only committed rows
                seen["accounts"] = conn.execute(
                    select(func.count()).select_from(Account).where(Account.email == "race@example.com")
                ).scalar_one()

    asyncio.run(app(scope, receive, send))
    assert seen == {"status": 201, "accounts": 1}


def test_nul_characters_are_400_on_both_databases(client, auth):
    """PostgreSQL cannot store U+0000 in text and SQLite can: the API refuses it everywhere, before any work."""
    cases = [
        client.get("/api/v1/agents/a%00b", headers=auth),
        client.get("/api/v1/agents?q=a%00b", headers=auth),
        client.post("/api/v1/agents", json={"name": "a\u0000b", "system_prompt": "x"}, headers=auth),
        client.post(
            "/api/v1/agents", json={"name": "ok", "system_prompt": "x", "metadata": {"k": "\u0000"}}, headers=auth
        ),
        client.post("/api/v1/accounts", json={"name": "N\u0000", "email": "nul@example.com"}),
        client.post("/api/v1/api-keys", json={"name": "k\u0000"}, headers=auth),
    ]
    kb = client.post("/api/v1/knowledge-bases", json={"name": "Docs"}, headers=auth).json()["id"]
    # this route reads its body itself (JSON or multipart), outside FastAPI's parsing
    cases.append(
        client.post(
            f"/api/v1/knowledge-bases/{kb}/documents", json={"filename": "a.txt", "text": "a\u0000b"}, headers=auth
        )
    )
    for response in cases:
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_characters"
    assert client.get("/api/v1/agents", headers=auth).json()["data"] == []
    assert client.get(f"/api/v1/knowledge-bases/{kb}/documents", headers=auth).json()["data"] == []
    assert len(client.get("/api/v1/api-keys", headers=auth).json()["data"]) == 1
    assert client.post("/api/v1/accounts", json={"name": "N", "email": "nul@example.com"}).status_code == 201


def test_invalid_utf8_json_is_malformed_json(client, auth):
    response = client.post(
        "/api/v1/agents", content=b'{"name": "\xff\xfe"}', headers={**auth, "content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_json"
