"""An agent's tools in its config: saved when valid, refused with the field's problem (and nothing stored) when not."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from airies.core.config import Settings

ALLOWED = "127.0.0.1:8931"
BASE = {"name": "Orders", "system_prompt": "You check orders.", "first_message": "Hi!"}
TOOL = {
    "name": "check_order",
    "description": "Look up an order by its number",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
    "server": {"url": f"http://{ALLOWED}/tools", "timeout_ms": 2000, "headers": {"X-Api-Key": "k"}},
    "messages": {"request_start": "One moment while I check.", "request_failed": "Sorry, I could not check that."},
}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(stage="local", data_dir=tmp_path, allow_public_signup=True, url_guard_allowed_hosts=ALLOWED)


def _tool(**overrides):
    tool = copy.deepcopy(TOOL)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(tool.get(key), dict):
            tool[key] = {**tool[key], **value}
        else:
            tool[key] = value
    return tool


def test_tools_are_saved_and_returned(client, auth):
    body = {
        **BASE,
        "tools": [_tool(**{"async": True})],
        "builtin_tools": {
            "transfer_call": {"enabled": True, "destinations": ["+15551234567", "sip:desk@pbx.example.com"]}
        },
    }
    response = client.post("/api/v1/agents", json=body, headers=auth)
    assert response.status_code == 201, response.text
    config = response.json()["config"]
    assert config["tools"][0]["async"] is True and config["tools"][0]["server"]["timeout_ms"] == 2000
    assert config["builtin_tools"]["transfer_call"]["destinations"] == ["+15551234567", "sip:desk@pbx.example.com"]
    assert config["builtin_tools"]["query_knowledge_base"] == {"enabled": False}
    agent_id = response.json()["id"]
    assert client.post(f"/api/v1/agents/{agent_id}/deploy", headers=auth).status_code in (200, 201)
    updated = client.put(f"/api/v1/agents/{agent_id}", json={"tools": []}, headers=auth)
    assert updated.status_code == 200 and updated.json()["config"]["tools"] == []


@pytest.mark.parametrize(
    ("tool", "field", "code"),
    [
        (_tool(parameters={"type": "object", "properties": {"a": {"type": "nope"}}}), "tools.0.parameters", None),
        (_tool(parameters={"type": "string"}), "tools.0.parameters", None),
        (_tool(name="end_call"), "tools.0.name", None),
        (_tool(name="has space"), "tools.0.name", None),
        (_tool(server={"timeout_ms": 60_000}), "tools.0.server.timeout_ms", None),
        (_tool(server={"timeout_ms": 10}), "tools.0.server.timeout_ms", None),
        (_tool(server={"headers": {"Airies-Signature": "forged"}}), "tools.0.server.headers", None),
        (_tool(server={"url": "http://127.0.0.1:9999/t"}), "tools.0.server.url", "blocked_address"),
        (_tool(server={"url": "http://169.254.169.254/latest"}), "tools.0.server.url", "blocked_address"),
        (_tool(server={"url": "ftp://example.com/t"}), "tools.0.server.url", "invalid_url"),
        (_tool(server={"url": "http://user:pw@example.com/t"}), "tools.0.server.url", "credentials_not_allowed"),
    ],
)
def test_bad_tool_is_refused_with_its_field(client, auth, tool, field, code):
    response = client.post("/api/v1/agents", json={**BASE, "tools": [tool]}, headers=auth)
    assert response.status_code == 422, response.text
    detail = response.json()["error"]["details"][0]
    assert detail["field"] == field, detail
    if code:
        assert detail["code"] == code
    assert client.get("/api/v1/agents", headers=auth).json()["data"] == []
    validated = client.post("/api/v1/agents/validate", json={**BASE, "tools": [tool]}, headers=auth).json()
    assert not validated["valid"] and validated["problems"][0]["field"] == field


def test_duplicate_names_and_builtin_rules(client, auth):
    twice = client.post("/api/v1/agents", json={**BASE, "tools": [_tool(), _tool()]}, headers=auth)
    assert twice.status_code == 422 and twice.json()["error"]["details"][0]["field"] == "tools"
    no_destination = {**BASE, "builtin_tools": {"transfer_call": {"enabled": True}}}
    refused = client.post("/api/v1/agents", json=no_destination, headers=auth)
    assert refused.status_code == 422 and refused.json()["error"]["details"][0]["field"].startswith(
        "builtin_tools.transfer_call"
    )
    bad_number = {**BASE, "builtin_tools": {"transfer_call": {"enabled": True, "destinations": ["555-1234"]}}}
    assert client.post("/api/v1/agents", json=bad_number, headers=auth).status_code == 422
    no_kb = {**BASE, "builtin_tools": {"query_knowledge_base": {"enabled": True}}}
    response = client.post("/api/v1/agents", json=no_kb, headers=auth)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "builtin_tools.query_knowledge_base.enabled"
    assert client.get("/api/v1/agents", headers=auth).json()["data"] == []


def test_an_update_with_a_bad_tool_changes_nothing(client, auth):
    agent = client.post("/api/v1/agents", json={**BASE, "tools": [_tool()]}, headers=auth).json()
    bad = client.put(
        f"/api/v1/agents/{agent['id']}", json={"tools": [_tool(server={"url": "http://10.0.0.5/t"})]}, headers=auth
    )
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "tools.0.server.url"
    assert client.get(f"/api/v1/agents/{agent['id']}", headers=auth).json() == agent
