from __future__ import annotations

import copy

from tests.conftest import signup

BASE = {
    "name": "Front desk",
    "description": "Answers the phone",
    "system_prompt": "You are the receptionist of a dental practice.",
    "first_message": "Hello, how can I help?",
}


def _create(client, headers, **overrides):
    body = {**copy.deepcopy(BASE), **overrides}
    response = client.post("/api/v1/agents", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def test_create_get_and_defaults(client, auth):
    agent = _create(client, auth)
    assert agent["id"].startswith("agt_")
    assert agent["status"] == "draft" and agent["current_version"] is None
    assert agent["config"]["llm"] == {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "temperature": 0.7,
        "max_tokens": 300,
        "fallbacks": [],
    }
    fetched = client.get(f"/api/v1/agents/{agent['id']}", headers=auth).json()
    assert fetched == agent


def test_partial_update_merges_nested_fields(client, auth):
    agent = _create(client, auth)
    response = client.put(
        f"/api/v1/agents/{agent['id']}", json={"llm": {"temperature": 0.2}, "name": "Renamed"}, headers=auth
    )
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["name"] == "Renamed"
    assert updated["config"]["llm"]["temperature"] == 0.2
    assert updated["config"]["llm"]["model"] == "gpt-4o-mini"  # untouched sibling kept
    assert updated["config"]["system_prompt"] == BASE["system_prompt"]


def test_invalid_update_changes_nothing(client, auth):
    agent = _create(client, auth)
    bad = client.put(f"/api/v1/agents/{agent['id']}", json={"llm": {"temperature": 7}}, headers=auth)
    assert bad.status_code == 422
    assert bad.json()["error"]["details"][0]["field"] == "llm.temperature"
    unknown_model = client.put(f"/api/v1/agents/{agent['id']}", json={"llm": {"model": "gpt-99"}}, headers=auth)
    assert unknown_model.status_code == 422
    assert unknown_model.json()["error"]["details"][0]["code"] == "unknown_model"
    assert client.get(f"/api/v1/agents/{agent['id']}", headers=auth).json() == agent


def test_bad_bodies_give_json_4xx(client, auth):
    raw = client.post("/api/v1/agents", content=b'{"name": ', headers={**auth, "content-type": "application/json"})
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "malformed_json"
    wrong_type = client.post("/api/v1/agents", json={**BASE, "max_duration_seconds": "long"}, headers=auth)
    assert wrong_type.status_code == 422
    unknown = client.post("/api/v1/agents", json={**BASE, "colour": "blue"}, headers=auth)
    assert unknown.status_code == 422 and unknown.json()["error"]["details"][0]["field"] == "colour"
    not_object = client.post("/api/v1/agents", json=[1, 2], headers=auth)
    assert not_object.status_code == 422
    huge = client.post("/api/v1/agents", json={**BASE, "system_prompt": "x" * 1_200_000}, headers=auth)
    assert huge.status_code == 413
    assert client.get("/api/v1/agents", headers=auth).json()["data"] == []


def test_validate_reports_problems_per_field(client, auth):
    config = {
        **BASE,
        "llm": {"provider": "nope", "model": "x"},
        "voice": {"provider": "elevenlabs", "voice_id": "missing-voice"},
        "transcriber": {"provider": "deepgram", "model": "nova-0"},
        "knowledge_base_ids": ["kb_unknown"],
        "max_duration_seconds": 5,
    }
    result = client.post("/api/v1/agents/validate", json=config, headers=auth).json()
    assert result["valid"] is False
    assert {p["field"] for p in result["problems"]} == {"max_duration_seconds"}  # structural errors first
    del config["max_duration_seconds"]
    result = client.post("/api/v1/agents/validate", json=config, headers=auth).json()
    codes = {(p["field"], p["code"], p["severity"]) for p in result["problems"]}
    assert codes == {
        ("llm.provider", "unknown_provider", "error"),
        ("voice.voice_id", "unknown_voice", "error"),
        ("transcriber.model", "unknown_model", "error"),
        ("knowledge_base_ids.0", "unknown_knowledge_base", "error"),
        # no key for these known vendors here: warnings, not errors
        ("voice.provider", "no_api_key", "warning"),
        ("transcriber.provider", "no_api_key", "warning"),
    }
    ok = client.post("/api/v1/agents/validate", json=BASE, headers=auth).json()
    assert ok["valid"] is True and {p["severity"] for p in ok["problems"]} == {"warning"}


def test_prompt_longer_than_context_is_rejected(database):
    from airies.agents.config import AgentConfig
    from airies.agents.service import AgentValidator
    from airies.llm import catalog

    small = catalog.LLMModel("acme", "tiny-8k", "fast", 8192, 0.1, 0.1, 0.1)
    with database.session() as session:
        validator = AgentValidator(session, llm_model=lambda p, m: small if (p, m) == ("acme", "tiny-8k") else None)
        fits = AgentConfig(**{**BASE, "llm": {"provider": "acme", "model": "tiny-8k"}, "system_prompt": "word " * 6000})
        assert validator.semantic_problems("acc_x", fits) == []
        too_long = fits.model_copy(update={"system_prompt": "word " * 7000})
        problems = validator.semantic_problems("acc_x", too_long)
        assert [(p["field"], p["code"]) for p in problems] == [("system_prompt", "prompt_too_long")]


def test_deploy_publishes_immutable_versions(client, auth):
    agent = _create(client, auth)
    v1 = client.post(f"/api/v1/agents/{agent['id']}/deploy", headers=auth)
    assert v1.status_code == 201 and v1.json()["version"] == 1
    client.put(f"/api/v1/agents/{agent['id']}", json={"first_message": "Hi there!"}, headers=auth)
    current = client.get(f"/api/v1/agents/{agent['id']}", headers=auth).json()
    assert current["status"] == "deployed" and current["current_version"] == 1
    assert current["has_undeployed_changes"] is True
    v2 = client.post(f"/api/v1/agents/{agent['id']}/deploy", headers=auth).json()
    assert v2["version"] == 2 and v2["config"]["first_message"] == "Hi there!"
    versions = client.get(f"/api/v1/agents/{agent['id']}/versions", headers=auth).json()["data"]
    assert [v["version"] for v in versions] == [2, 1]
    assert versions[1]["config"]["first_message"] == BASE["first_message"]  # v1 unchanged
    assert client.get(f"/api/v1/agents/{agent['id']}", headers=auth).json()["has_undeployed_changes"] is False


def test_list_paginates_and_filters(client, auth):
    ids = [
        _create(client, auth, name=f"Agent {i}", agent_type="outbound" if i % 2 else "inbound")["id"] for i in range(5)
    ]
    page1 = client.get("/api/v1/agents?limit=2", headers=auth).json()
    assert [a["id"] for a in page1["data"]] == ids[::-1][:2] and page1["has_more"] is True
    page2 = client.get(f"/api/v1/agents?limit=2&cursor={page1['next_cursor']}", headers=auth).json()
    page3 = client.get(f"/api/v1/agents?limit=2&cursor={page2['next_cursor']}", headers=auth).json()
    assert [a["id"] for a in page2["data"] + page3["data"]] == ids[::-1][2:]
    assert page3["has_more"] is False and page3["next_cursor"] is None
    outbound = client.get("/api/v1/agents?agent_type=outbound", headers=auth).json()["data"]
    assert sorted(a["id"] for a in outbound) == sorted([ids[1], ids[3]])
    assert [a["name"] for a in client.get("/api/v1/agents?q=agent 3", headers=auth).json()["data"]] == ["Agent 3"]
    assert client.get("/api/v1/agents?limit=0", headers=auth).status_code == 422


def test_tenant_isolation(client):
    owner = signup(client)
    other = signup(client)
    agent = _create(client, owner)
    for method, path in [
        ("get", ""),
        ("put", ""),
        ("delete", ""),
        ("post", "/deploy"),
        ("post", "/clone"),
        ("get", "/versions"),
    ]:
        kwargs = {"json": {"name": "stolen"}} if method == "put" else {}
        response = getattr(client, method)(f"/api/v1/agents/{agent['id']}{path}", headers=other, **kwargs)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "not_found"
    assert client.get("/api/v1/agents", headers=other).json()["data"] == []
    assert client.get(f"/api/v1/agents/{agent['id']}", headers=owner).json()["name"] == BASE["name"]


def test_clone_and_delete(client, auth):
    agent = _create(client, auth)
    clone = client.post(f"/api/v1/agents/{agent['id']}/clone", json={"name": "Night shift"}, headers=auth)
    assert clone.status_code == 201
    assert clone.json()["name"] == "Night shift" and clone.json()["id"] != agent["id"]
    assert clone.json()["config"]["system_prompt"] == agent["config"]["system_prompt"]
    default_name = client.post(f"/api/v1/agents/{agent['id']}/clone", headers=auth).json()["name"]
    assert default_name == "Front desk (copy)"
    assert client.delete(f"/api/v1/agents/{agent['id']}", headers=auth).status_code == 204
    assert client.get(f"/api/v1/agents/{agent['id']}", headers=auth).status_code == 404
    assert client.delete(f"/api/v1/agents/{agent['id']}", headers=auth).status_code == 404


def test_templates_are_valid_starting_configs(client, auth):
    templates = client.get("/api/v1/agents/templates", headers=auth).json()["data"]
    assert len(templates) >= 5
    for template in templates:
        result = client.post("/api/v1/agents/validate", json=template["config"], headers=auth).json()
        assert result["valid"] is True, template["id"]
        assert [p for p in result["problems"] if p["severity"] != "warning"] == [], template["id"]
        assert client.post("/api/v1/agents", json=template["config"], headers=auth).status_code == 201


def test_unknown_route_and_method_are_json(client, auth):
    missing = client.get("/api/v1/nothing-here", headers=auth)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = client.patch("/api/v1/agents", headers=auth)
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


def test_custom_endpoint_models_validate_only_when_configured(database, tmp_path):
    """A model of the configured OpenAI-compatible endpoint (Ollama, vLLM) is a valid agent LLM; without the
    endpoint it is unknown."""
    from fastapi.testclient import TestClient

    from airies.api.app import create_app
    from airies.core.config import Settings

    config = {
        "name": "Local",
        "system_prompt": "Be brief.",
        "first_message": "Hello!",
        "llm": {"provider": "ollama", "model": "llama3.2"},
    }
    custom = Settings(
        data_dir=tmp_path,
        llm_custom_base_url="http://127.0.0.1:11434/v1",
        llm_custom_models="llama3.2,qwen2.5",
        llm_custom_name="ollama",
    )
    with TestClient(create_app(custom, database)) as client:
        headers = signup(client)
        result = client.post("/api/v1/agents/validate", json=config, headers=headers).json()
        assert result["valid"] is True and "llm.provider" not in {p["field"] for p in result["problems"]}
        created = client.post("/api/v1/agents", json=config, headers=headers)
        assert created.status_code == 201, created.text
        assert created.json()["config"]["llm"]["model"] == "llama3.2"
    with TestClient(create_app(Settings(data_dir=tmp_path), database)) as client:
        headers = signup(client)
        problems = client.post("/api/v1/agents/validate", json=config, headers=headers).json()["problems"]
        assert [p["field"] for p in problems if p["severity"] == "error"] == ["llm.provider"]
        assert client.post("/api/v1/agents", json=config, headers=headers).status_code == 422
