"""Accounts' own OpenAI-compatible endpoints through the real openai SDK against the local wire double, on both
databases: saving (key, reachability, URL guard), tenancy, agents using them in calls and tests, failover."""

from __future__ import annotations

import socket
from http.server import BaseHTTPRequestHandler

import pytest
from sqlalchemy import select

from airies.llm.models import LLMCustomEndpoint
from tests.conftest import signup
from tests.doubles._wire import LocalHttpServer
from tests.doubles.openai_server import OpenAIDouble, Reply


class WebPage(LocalHttpServer):
    """A web server that is no OpenAI-compatible endpoint: an HTML page for every path."""

    TEXT = "Welcome to the intranet"

    def __init__(self, status: int) -> None:
        self.status = status

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        body = f"<html><body>{self.TEXT}</body></html>".encode()
        handler.send_response(self.status)
        handler.send_header("content-type", "text/html")
        handler.send_header("content-length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


ENDPOINT_KEY = "sk-customer-endpoint-key-7777"
ENDPOINT_MODELS = ["acme-llama-70b", "acme-small"]
URL = "/api/v1/llm/custom-endpoints"


@pytest.fixture
def endpoint_double():
    with OpenAIDouble(models=ENDPOINT_MODELS) as double:
        double.api_keys = {ENDPOINT_KEY}
        double.default = Reply(text="Acme's own model speaking.")
        yield double


@pytest.fixture
def platform_double():
    with OpenAIDouble() as double:
        double.default = Reply(text="The platform's OpenAI speaking.")
        yield double


@pytest.fixture
def allowed(settings, endpoint_double):
    """The operator allow-lists the double's address (it listens on 127.0.0.1, which the URL guard refuses)."""
    settings.url_guard_allowed_hosts = f"127.0.0.1:{endpoint_double.port}"
    return settings


def create(client, auth, double, **overrides):  # type: ignore[no-untyped-def]
    body = {"name": "acme", "base_url": double.base_url, "api_key": ENDPOINT_KEY, **overrides}
    return client.post(URL, json=body, headers=auth)


def stored(database) -> list[LLMCustomEndpoint]:
    with database.session() as session:
        return list(session.scalars(select(LLMCustomEndpoint)))


def agent_body(**llm) -> dict:
    return {
        "name": "Own model agent",
        "system_prompt": "You answer for Acme.",
        "first_message": "Hello, Acme here.",
        "llm": {"provider": "custom:acme", "model": "acme-llama-70b", **llm},
        "voice": {"provider": "espeak", "voice_id": "en-us"},
        "transcriber": {"provider": "pocketsphinx", "model": "en-us"},
    }


def test_save_validates_against_models_and_seals_the_key(client, auth, allowed, database, endpoint_double):
    response = create(client, auth, endpoint_double, model_class="smart")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["provider"] == "custom:acme" and body["models"] == sorted(ENDPOINT_MODELS)
    assert body["masked_key"] == "****7777" and body["has_key"] is True and body["model_class"] == "smart"
    assert ENDPOINT_KEY not in response.text
    models_call = endpoint_double.requests[-1]
    assert models_call.path == "/v1/models" and models_call.headers["authorization"] == f"Bearer {ENDPOINT_KEY}"
    (row,) = stored(database)
    assert ENDPOINT_KEY not in (row.ciphertext or "") and ENDPOINT_KEY not in row.encrypted_data_key
    for read in (client.get(URL, headers=auth), client.get(f"{URL}/{body['id']}", headers=auth)):
        assert read.status_code == 200 and ENDPOINT_KEY not in read.text
    assert client.get(URL, headers=auth).json()["data"][0]["id"] == body["id"]
    listed = client.get("/api/v1/llm/models?provider=custom:acme", headers=auth).json()
    assert sorted(m["model"] for m in listed["data"]) == sorted(ENDPOINT_MODELS)
    assert create(client, auth, endpoint_double).status_code == 409  # one name per account


def test_a_rejected_key_an_unreachable_or_foreign_endpoint_store_nothing(
    client, auth, allowed, database, endpoint_double
):
    rejected = create(client, auth, endpoint_double, api_key="sk-wrong-key-000000")
    assert rejected.status_code == 422
    assert rejected.json()["error"]["details"][0] == {
        "field": "api_key",
        "code": "rejected_by_provider",
        "message": "the endpoint rejected the key (HTTP 401)",
    }
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    allowed.url_guard_allowed_hosts += f",127.0.0.1:{closed}"
    unreachable = create(client, auth, endpoint_double, base_url=f"http://127.0.0.1:{closed}/v1")
    assert unreachable.status_code == 422
    assert unreachable.json()["error"]["details"][0]["code"] == "unreachable"
    for status in (200, 404):
        with WebPage(status) as page:
            allowed.url_guard_allowed_hosts += f",{page.url.removeprefix('http://')}"
            not_openai = create(client, auth, endpoint_double, base_url=page.url + "/v1")
        assert not_openai.status_code == 422, not_openai.text
        problem = not_openai.json()["error"]["details"][0]
        assert problem["code"] == "not_openai_compatible" and WebPage.TEXT not in not_openai.text
    endpoint_double.models = []
    empty = create(client, auth, endpoint_double)
    assert empty.status_code == 422 and empty.json()["error"]["details"][0]["code"] == "no_models"
    assert stored(database) == []


def test_private_addresses_are_refused_unless_allow_listed(client, auth, settings, database, endpoint_double):
    for base_url in (
        endpoint_double.base_url,
        f"http://localhost:{endpoint_double.port}/v1",
        "http://169.254.169.254/v1",
    ):
        refused = create(client, auth, endpoint_double, base_url=base_url)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"] == "url_not_allowed"
        assert refused.json()["error"]["details"][0]["field"] == "base_url"
    assert endpoint_double.requests == [] and stored(database) == []
    settings.stage = "prod"  # outside local, HTTPS only (even for an allow-listed host)
    settings.url_guard_allowed_hosts = f"127.0.0.1:{endpoint_double.port}"
    insecure = create(client, auth, endpoint_double)
    assert insecure.status_code == 422 and insecure.json()["error"]["details"][0]["code"] == "scheme_not_allowed"
    settings.stage = "local"
    assert create(client, auth, endpoint_double).status_code == 201


def test_update_revalidates_and_refreshes_models(client, auth, allowed, database, endpoint_double):
    created = create(client, auth, endpoint_double).json()
    endpoint_double.models = ["acme-llama-70b", "acme-new"]
    updated = client.patch(f"{URL}/{created['id']}", json={"stream_usage": False}, headers=auth)
    assert updated.status_code == 200, updated.text
    assert updated.json()["models"] == ["acme-llama-70b", "acme-new"] and updated.json()["stream_usage"] is False
    bad = client.patch(f"{URL}/{created['id']}", json={"api_key": "sk-wrong-key-000000"}, headers=auth)
    assert bad.status_code == 422
    with database.session() as session:  # the refused update changed nothing
        row = session.get(LLMCustomEndpoint, created["id"])
        assert row.models == ["acme-llama-70b", "acme-new"] and row.hint == "7777"
    assert client.patch(f"{URL}/{created['id']}", json={"name": "renamed"}, headers=auth).status_code == 422


def test_tenancy(client, auth, allowed, database, endpoint_double):
    created = create(client, auth, endpoint_double).json()
    other = signup(client)
    for method, path in (("get", ""), ("patch", ""), ("delete", "")):
        kwargs = {"json": {"stream_usage": True}} if method == "patch" else {}
        response = getattr(client, method)(f"{URL}/{created['id']}{path}", headers=other, **kwargs)
        assert response.status_code == 404, (method, response.text)
    assert client.get(URL, headers=other).json()["data"] == []
    # Another account's agent cannot name this account's endpoint.
    validation = client.post("/api/v1/agents/validate", json=agent_body(), headers=other).json()
    assert validation["valid"] is False
    assert {"field": "llm.provider", "code": "unknown_provider"}.items() <= validation["problems"][0].items()
    assert create(client, other, endpoint_double).status_code == 201  # names are per account
    assert len(stored(database)) == 2


def test_agents_select_its_models_and_deletion_waits_for_them(client, auth, allowed, endpoint_double):
    created = create(client, auth, endpoint_double).json()
    valid = client.post("/api/v1/agents/validate", json=agent_body(), headers=auth).json()
    assert [p for p in valid["problems"] if p.get("severity") != "warning"] == [] and valid["valid"] is True
    unknown = client.post("/api/v1/agents/validate", json=agent_body(model="gpt-4o"), headers=auth).json()
    assert unknown["problems"][0]["field"] == "llm.model" and unknown["problems"][0]["code"] == "unknown_model"
    agent = client.post("/api/v1/agents", json=agent_body(), headers=auth)
    assert agent.status_code == 201, agent.text
    in_use = client.delete(f"{URL}/{created['id']}", headers=auth)
    assert in_use.status_code == 409 and in_use.json()["error"]["details"]["agent_ids"] == [agent.json()["id"]]
    assert client.delete(f"/api/v1/agents/{agent.json()['id']}", headers=auth).status_code == 204
    assert client.delete(f"{URL}/{created['id']}", headers=auth).status_code == 204
    assert client.get(f"{URL}/{created['id']}", headers=auth).status_code == 404


def _conversation(client, auth, body: dict) -> str:  # type: ignore[no-untyped-def]
    agent = client.post("/api/v1/agents", json=body, headers=auth)
    assert agent.status_code == 201, agent.text
    agent_id = agent.json()["id"]
    assert client.post(f"/api/v1/agents/{agent_id}/deploy", headers=auth).status_code == 201
    started = client.post("/api/v1/conversations", json={"agent_id": agent_id}, headers=auth)
    assert started.status_code == 201, started.text
    return started.json()["id"]


def test_an_agent_on_the_endpoint_answers_calls_and_tests(client, auth, allowed, endpoint_double):
    assert create(client, auth, endpoint_double).status_code == 201
    conversation = _conversation(client, auth, agent_body())
    reply = client.post(f"/api/v1/conversations/{conversation}/message", json={"text": "Who are you?"}, headers=auth)
    assert reply.status_code == 200, reply.text
    assert reply.json()["reply"] == "Acme's own model speaking."
    usage = reply.json()["turn"]["usage"]
    assert usage["llm_provider"] == "custom:acme" and usage["llm_model"] == "acme-llama-70b"
    chat = endpoint_double.chat_requests[-1]
    assert chat.headers["authorization"] == f"Bearer {ENDPOINT_KEY}" and chat.body["model"] == "acme-llama-70b"
    assert chat.body["messages"][-1] == {"role": "user", "content": "Who are you?"}

    agent_id = client.get("/api/v1/agents", headers=auth).json()["data"][0]["id"]
    tested = client.post(f"/api/v1/agents/{agent_id}/test", json={"message": "Hi"}, headers=auth)
    assert tested.status_code == 200, tested.text
    result = tested.json()
    assert result["reply"] == "Acme's own model speaking." and result["turns"][0]["provider"] == "custom:acme"
    assert result["is_language_model"] is True


def test_failover_from_the_endpoint_to_another_provider_and_back(
    client, auth, allowed, settings, endpoint_double, platform_double
):
    settings.openai_api_key, settings.openai_base_url = "sk-platform", platform_double.base_url
    assert create(client, auth, endpoint_double).status_code == 201
    body = agent_body(fallbacks=[{"provider": "openai", "model": "gpt-4o-mini"}])
    conversation = _conversation(client, auth, body)
    endpoint_double.script(Reply(status=503))
    reply = client.post(f"/api/v1/conversations/{conversation}/message", json={"text": "Hello?"}, headers=auth)
    assert reply.status_code == 200, reply.text
    assert reply.json()["reply"] == "The platform's OpenAI speaking."
    assert reply.json()["turn"]["usage"]["llm_provider"] == "openai"
    assert len(endpoint_double.chat_requests) == 1 and len(platform_double.chat_requests) == 1

    # The other way round: the endpoint as the fallback of a failing platform provider.
    backup = {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "fallbacks": [{"provider": "custom:acme", "model": "acme-small"}],
    }
    agent = client.post("/api/v1/agents", json={**agent_body(), "llm": backup}, headers=auth).json()
    platform_double.script(Reply(status=500))
    tested = client.post(f"/api/v1/agents/{agent['id']}/test", json={"message": "Hi"}, headers=auth).json()
    assert tested["reply"] == "Acme's own model speaking."
    assert tested["turns"][0]["provider"] == "custom:acme" and tested["turns"][0]["failover"] is True
    assert endpoint_double.chat_requests[-1].body["model"] == "acme-small"
