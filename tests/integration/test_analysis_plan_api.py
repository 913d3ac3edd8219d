"""The agent's post-call analysis plan: defaults, a JSON Schema checked when the agent is saved, partial updates."""

from __future__ import annotations

from tests.integration.test_agents_api import BASE, _create

SCHEMA = {
    "type": "object",
    "properties": {"appointment_day": {"type": ["string", "null"]}, "urgent": {"type": "boolean"}},
    "required": ["appointment_day", "urgent"],
}


def test_the_default_plan_summarises_only(client, auth):
    plan = _create(client, auth)["config"]["analysis"]
    assert plan["summary"]["enabled"] is True and plan["summary"]["prompt"]
    assert plan["structured_data"] == {
        "enabled": False,
        "json_schema": None,
        "prompt": plan["structured_data"]["prompt"],
    }
    assert plan["success_evaluation"]["enabled"] is False and plan["success_evaluation"]["rubric"] == "pass_fail"


def test_a_valid_schema_is_kept_and_replaced_whole(client, auth):
    agent = _create(client, auth, analysis={"structured_data": {"enabled": True, "json_schema": SCHEMA}})
    assert agent["config"]["analysis"]["structured_data"]["json_schema"] == SCHEMA
    other = {"type": "object", "properties": {"name": {"type": "string"}}}
    updated = client.put(
        f"/api/v1/agents/{agent['id']}", json={"analysis": {"structured_data": {"json_schema": other}}}, headers=auth
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["config"]["analysis"]["structured_data"] == {
        **agent["config"]["analysis"]["structured_data"],
        "json_schema": other,
    }


def test_an_invalid_schema_is_refused_with_422_and_nothing_stored(client, auth):
    agent = _create(client, auth)
    for bad, why in (
        ({"type": "object", "properties": {"x": {"type": "strnig"}}}, "not a valid JSON Schema"),
        ({"type": "array", "items": {"type": "string"}}, "JSON Schema of an object"),
        ({"type": "object", "required": "x"}, "not a valid JSON Schema"),
    ):
        response = client.put(
            f"/api/v1/agents/{agent['id']}",
            json={"analysis": {"structured_data": {"enabled": True, "json_schema": bad}}},
            headers=auth,
        )
        assert response.status_code == 422, response.text
        detail = response.json()["error"]["details"][0]
        assert detail["field"].startswith("analysis.structured_data") and why in detail["message"]
    enabled_without = client.put(
        f"/api/v1/agents/{agent['id']}", json={"analysis": {"structured_data": {"enabled": True}}}, headers=auth
    )
    assert enabled_without.status_code == 422
    created = client.post(
        "/api/v1/agents",
        json={**BASE, "analysis": {"success_evaluation": {"enabled": True, "rubric": "stars"}}},
        headers=auth,
    )
    assert created.status_code == 422
    assert client.get(f"/api/v1/agents/{agent['id']}", headers=auth).json() == agent
