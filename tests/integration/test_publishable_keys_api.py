"""Publishable keys and the widget's API, on both databases: key lifecycle with tenancy, CORS only for the key's
origins, only its agents, a per-visitor hourly limit, and nothing else readable with a publishable key."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from tests.conftest import signup
from tests.integration.test_conv_api import deployed_agent, engines, live_sessions  # noqa: F401

pytestmark = pytest.mark.db
SHOP = "https://shop.example.com"


def create_key(client, auth, agent_ids: list[str], **overrides) -> dict:  # type: ignore[no-untyped-def]
    body = {"name": "site", "agent_ids": agent_ids, "allowed_origins": [SHOP + ":443/"], **overrides}
    response = client.post("/api/v1/publishable-keys", json=body, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()


def widget_start(client, key: str, agent_id: str, origin: str | None = SHOP):  # type: ignore[no-untyped-def]
    headers = {"origin": origin} if origin else {}
    return client.post(f"/api/v1/widget/{key}/conversations", json={"agent_id": agent_id}, headers=headers)


def test_key_lifecycle_and_tenancy(client, auth, engines) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    agent_id = deployed_agent(client, auth)
    key = create_key(client, auth, [agent_id], visitor_conversations_per_hour=3)
    assert key["key"].startswith("pk_live_") and key["active"] is True
    assert key["allowed_origins"] == [SHOP]  # normalised as browsers send Origin
    assert [k["id"] for k in client.get("/api/v1/publishable-keys", headers=auth).json()["data"]] == [key["id"]]

    other = signup(client)
    assert client.get("/api/v1/publishable-keys", headers=other).json()["data"] == []
    assert client.delete(f"/api/v1/publishable-keys/{key['id']}", headers=other).status_code == 404
    foreign = client.post(
        "/api/v1/publishable-keys", json={"agent_ids": [agent_id], "allowed_origins": [SHOP]}, headers=other
    )
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "not_found"

    assert client.delete(f"/api/v1/publishable-keys/{key['id']}", headers=auth).status_code == 204
    listed = client.get("/api/v1/publishable-keys", headers=auth).json()["data"]
    assert listed[0]["active"] is False and listed[0]["revoked_at"]
    revoked = widget_start(client, key["key"], agent_id)
    assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "invalid_publishable_key"


@pytest.mark.parametrize(
    "body",
    [
        {"agent_ids": [], "allowed_origins": [SHOP]},
        {"agent_ids": ["agt_x"], "allowed_origins": ["*"]},
        {"agent_ids": ["agt_x"], "allowed_origins": ["https://*.example.com"]},
        {"agent_ids": ["agt_x"], "allowed_origins": ["https://shop.example.com/path"]},
        {"agent_ids": ["agt_x"], "allowed_origins": ["ftp://shop.example.com"]},
        {"agent_ids": ["agt_x"], "allowed_origins": ["https://user:pw@shop.example.com"]},
        {"agent_ids": ["agt_x"], "allowed_origins": ["https://shop.example.com:99999"]},
        {"agent_ids": ["agt_x"], "allowed_origins": [SHOP], "visitor_conversations_per_hour": 0},
        {"agent_ids": ["agt_x"], "allowed_origins": [SHOP], "extra": 1},
    ],
)
def test_bad_keys_are_refused_and_nothing_is_stored(client, auth, body: dict) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/api/v1/publishable-keys", json=body, headers=auth)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"]
    assert client.get("/api/v1/publishable-keys", headers=auth).json()["data"] == []


def test_widget_starts_conversations_only_for_its_origins_and_agents(client, auth, engines) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    agent_id = deployed_agent(client, auth)
    unlisted_agent = deployed_agent(client, auth)
    key = create_key(client, auth, [agent_id])["key"]

    preflight = client.options(
        f"/api/v1/widget/{key}/conversations",
        headers={
            "origin": SHOP,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == SHOP
    assert "POST" in preflight.headers["access-control-allow-methods"]
    stranger = client.options(f"/api/v1/widget/{key}/conversations", headers={"origin": "https://evil.example"})
    assert stranger.status_code == 403 and "access-control-allow-origin" not in stranger.headers

    started = widget_start(client, key, agent_id)
    assert started.status_code == 201, started.text
    assert started.headers["access-control-allow-origin"] == SHOP
    payload = started.json()
    assert set(payload) == {"conversation_id", "ws_url", "token", "token_expires_at", "protocol_version"}
    assert payload["token"] in payload["ws_url"]
    stored = client.get(f"/api/v1/conversations/{payload['conversation_id']}", headers=auth).json()
    assert stored["agent_id"] == agent_id and stored["metadata"]["source"] == "widget"

    for origin in ("https://evil.example", "http://shop.example.com", None):
        refused = widget_start(client, key, agent_id, origin)
        assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
    other_agent = widget_start(client, key, unlisted_agent)
    assert other_agent.status_code == 403 and other_agent.json()["error"]["code"] == "agent_not_allowed"
    assert other_agent.headers["access-control-allow-origin"] == SHOP  # the widget may read why
    assert widget_start(client, "pk_live_unknown", agent_id).status_code == 401
    assert widget_start(client, "ak_live_secret_keys_are_not_widget_keys", agent_id).status_code == 401
    bad = client.post(f"/api/v1/widget/{key}/conversations", content=b"{", headers={"origin": SHOP})
    assert bad.status_code == 400 and bad.headers["access-control-allow-origin"] == SHOP


def test_each_visitor_is_limited_per_hour(app, client, auth, engines) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    agent_id = deployed_agent(client, auth)
    key = create_key(client, auth, [agent_id], visitor_conversations_per_hour=2)["key"]
    # The account's own concurrency limit is not what is tested here: end each call as it starts.
    for _ in range(2):
        started = widget_start(client, key, agent_id)
        assert started.status_code == 201, started.text
        cid = started.json()["conversation_id"]
        assert client.put(f"/api/v1/conversations/{cid}", json={"status": "ended"}, headers=auth).status_code == 200
    limited = widget_start(client, key, agent_id)
    assert limited.status_code == 429 and limited.json()["error"]["details"]["limit"] == 2
    assert 3500 <= int(limited.headers["retry-after"]) <= 3600
    assert limited.headers["access-control-allow-origin"] == SHOP
    with TestClient(app, client=("198.51.100.7", 40000)) as elsewhere:  # another visitor is not limited
        assert widget_start(elsewhere, key, agent_id).status_code == 201


def test_a_publishable_key_reads_nothing(app, client, auth, engines) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    agent_id = deployed_agent(client, auth)
    key = create_key(client, auth, [agent_id])["key"]
    checked = 0
    for template, operations in app.openapi()["paths"].items():  # every documented route, public ones too
        if template.startswith("/api/v1/widget/"):
            continue
        path = re.sub(r"\{[^}]+\}", agent_id, template)
        for method in operations:
            response = client.request(method, path, json={}, headers={"Authorization": f"Bearer {key}", "origin": SHOP})
            assert response.status_code == 403, (method, template, response.status_code, response.text)
            assert response.json()["error"]["code"] == "publishable_key_not_allowed"
            assert "access-control-allow-origin" not in response.headers
            checked += 1
    assert checked > 60  # every authenticated route of the API
