"""LLM routes, provider keys (encrypted, never returned, per account) and agent testing, on both databases."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from airies.accounts import provider_keys
from airies.core.config import Settings
from airies.core.secrets import DecryptionError
from airies.llm.models import ProviderKey
from airies.llm.service import reset_health_trackers
from tests.conftest import signup
from tests.doubles.openai_server import OpenAIDouble, Reply

ACCOUNT_KEY = "gsk-account-secret-key-9876"
AGENT = {
    "name": "Front desk",
    "system_prompt": "You are the receptionist of a dental practice.",
    "first_message": "Hello, Smile Dental, how can I help?",
}


@pytest.fixture
def double():
    with OpenAIDouble() as server:
        server.api_keys = {"sk-platform", ACCOUNT_KEY}
        yield server


@pytest.fixture
def settings(tmp_path, double) -> Settings:
    return Settings(
        stage="local",
        data_dir=tmp_path,
        allow_public_signup=True,
        openai_api_key="sk-platform",
        openai_base_url=double.base_url,
        groq_base_url=double.base_url,
        deepinfra_base_url=double.base_url,
    )


@pytest.fixture(autouse=True)
def fresh_health():
    reset_health_trackers()
    yield
    reset_health_trackers()


def create_agent(client, headers, **overrides) -> str:
    response = client.post("/api/v1/agents", json={**AGENT, **overrides}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["id"]


# --- providers and models ------------------------------------------------------------------------------------
def test_providers_lists_all_kinds(client, auth):
    response = client.get("/api/v1/providers", headers=auth)
    assert response.status_code == 200
    rows = {row["provider"]: row for row in response.json()["data"]}
    # configured, but nothing measured yet: no claim of health
    assert rows["openai"]["configured"] is True and rows["openai"]["status"] == "unknown"
    assert rows["openai"]["weight"] > 0 and "breaker" in rows["openai"]["health"]
    assert rows["groq"]["status"] == "not_configured"
    assert {"deepgram", "elevenlabs", "pinecone", "stripe"} <= set(rows)
    assert "sk-platform" not in response.text
    assert client.get("/api/v1/providers").status_code == 401
    agent_id = create_agent(client, auth)
    assert client.post(f"/api/v1/agents/{agent_id}/test", json={"message": "hi"}, headers=auth).status_code == 200
    rows = {row["provider"]: row for row in client.get("/api/v1/providers", headers=auth).json()["data"]}
    assert rows["openai"]["status"] == "healthy" and rows["openai"]["health"]["samples"] == 1


def test_models_of_configured_providers(client, auth):
    body = client.get("/api/v1/llm/models", headers=auth).json()
    assert body["offline"] is False
    assert set(body["providers"]) == {"openai"}
    assert {m["model"] for m in body["data"]} >= {"gpt-4o-mini", "gpt-4o"}
    mini = next(m for m in body["data"] if m["model"] == "gpt-4o-mini")
    assert (mini["input_per_mtok"], mini["cached_input_per_mtok"], mini["output_per_mtok"]) == (
        "0.150000000",
        "0.075000000",
        "0.600000000",
    )
    smart = client.get("/api/v1/llm/models?model_class=smart", headers=auth).json()["data"]
    assert {m["model_class"] for m in smart} == {"smart"}
    assert client.get("/api/v1/llm/models?provider=groq", headers=auth).json()["data"] == []


# --- provider keys -------------------------------------------------------------------------------------------
def test_key_is_validated_encrypted_and_never_returned(client, auth, database, double):
    response = client.put("/api/v1/provider-keys/groq", json={"api_key": ACCOUNT_KEY}, headers=auth)
    assert response.status_code == 200, response.text
    assert response.json()["masked_key"] == "****9876"
    assert ACCOUNT_KEY not in response.text
    assert any(
        r.path.endswith("/models") and r.headers["authorization"] == f"Bearer {ACCOUNT_KEY}" for r in double.requests
    )
    listed = client.get("/api/v1/provider-keys", headers=auth)
    assert [row["provider"] for row in listed.json()["data"]] == ["groq"] and ACCOUNT_KEY not in listed.text
    with database.session() as session:
        row = session.scalars(select(ProviderKey)).one()
        stored = json.dumps([row.ciphertext, row.encrypted_data_key, row.key_ref, row.hint, row.provider])
    assert ACCOUNT_KEY not in stored and ACCOUNT_KEY[:12] not in stored
    providers = client.get("/api/v1/providers", headers=auth)
    groq = next(r for r in providers.json()["data"] if r["provider"] == "groq")
    assert groq["configured"] is True and groq["key_source"] == "account" and groq["account_key"] is True
    assert ACCOUNT_KEY not in providers.text


def test_rejected_key_is_not_saved(client, auth):
    response = client.put("/api/v1/provider-keys/openai", json={"api_key": "sk-wrong-key-123456"}, headers=auth)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["code"] == "rejected_by_provider"
    assert client.get("/api/v1/provider-keys", headers=auth).json()["data"] == []


def test_unreachable_provider_is_502_and_not_saved(client, auth, settings):
    settings.deepinfra_base_url = "http://127.0.0.1:9/v1"  # nothing listens on port 9
    response = client.put("/api/v1/provider-keys/deepinfra", json={"api_key": "di-key-123456789"}, headers=auth)
    assert response.status_code == 502
    assert client.get("/api/v1/provider-keys", headers=auth).json()["data"] == []


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/api/v1/provider-keys/nope", {"api_key": "abcdef123456"}, 404),
        ("/api/v1/provider-keys/openai", {}, 422),
        ("/api/v1/provider-keys/openai", {"api_key": ""}, 422),
        ("/api/v1/provider-keys/openai", {"api_key": "has space in it"}, 422),
        ("/api/v1/provider-keys/openai", {"api_key": "k" * 5000}, 422),
        ("/api/v1/provider-keys/openai", {"api_key": "abc", "extra": 1}, 422),
    ],
)
def test_bad_key_requests(client, auth, path, body, status):
    assert client.put(path, json=body, headers=auth).status_code == status


def test_other_kinds_plug_in_validators(client, auth):
    provider_keys.register_provider("acme-tts", "tts")
    seen = []
    provider_keys.register_key_validator(
        "acme-stt", lambda key, _settings: seen.append(key) or key.startswith("good"), kind="stt"
    )
    try:
        assert (
            client.put("/api/v1/provider-keys/acme-tts", json={"api_key": "whatever123"}, headers=auth).status_code
            == 501
        )
        assert (
            client.put("/api/v1/provider-keys/acme-stt", json={"api_key": "bad-key-123"}, headers=auth).status_code
            == 422
        )
        ok = client.put("/api/v1/provider-keys/acme-stt", json={"api_key": "good-key-123"}, headers=auth)
        assert ok.status_code == 200 and ok.json()["kind"] == "stt"
        assert seen == ["bad-key-123", "good-key-123"]
    finally:
        provider_keys.PROVIDER_KINDS.pop("acme-tts", None)
        provider_keys.PROVIDER_KINDS.pop("acme-stt", None)
        provider_keys.KEY_VALIDATORS.pop("acme-stt", None)


def test_keys_are_per_account(client, auth, database, settings):
    assert client.put("/api/v1/provider-keys/groq", json={"api_key": ACCOUNT_KEY}, headers=auth).status_code == 200
    other = signup(client)
    assert client.get("/api/v1/provider-keys", headers=other).json()["data"] == []
    assert client.delete("/api/v1/provider-keys/groq", headers=other).status_code == 404
    assert len(client.get("/api/v1/provider-keys", headers=auth).json()["data"]) == 1
    from airies.accounts.models import Account

    with database.session() as session:
        owner_id = session.scalars(select(ProviderKey.account_id)).one()
        other_id = next(a.id for a in session.scalars(select(Account)) if a.id != owner_id)
        assert provider_keys.get_account_provider_key(session, owner_id, "groq", settings) == ACCOUNT_KEY
        assert provider_keys.get_account_provider_key(session, other_id, "groq", settings) is None
        # a ciphertext moved to another account does not decrypt (bound to account and provider)
        row = session.scalars(select(ProviderKey)).one()
        row.account_id = other_id
        session.flush()
        with pytest.raises(DecryptionError):
            provider_keys.get_account_provider_key(session, other_id, "groq", settings)
        session.rollback()


def test_delete_key(client, auth):
    client.put("/api/v1/provider-keys/groq", json={"api_key": ACCOUNT_KEY}, headers=auth)
    assert client.delete("/api/v1/provider-keys/groq", headers=auth).status_code == 204
    assert client.get("/api/v1/provider-keys", headers=auth).json()["data"] == []
    assert client.delete("/api/v1/provider-keys/groq", headers=auth).status_code == 404
    assert client.delete("/api/v1/provider-keys/unknown", headers=auth).status_code == 404


def test_account_key_is_used_for_the_accounts_calls(client, auth, double):
    client.put("/api/v1/provider-keys/groq", json={"api_key": ACCOUNT_KEY}, headers=auth)
    agent_id = create_agent(client, auth, llm={"provider": "groq", "model": "llama-3.1-8b-instant"})
    double.default = Reply(text="Groq answering.")
    response = client.post(f"/api/v1/agents/{agent_id}/test", json={"message": "hi"}, headers=auth)
    assert response.status_code == 200, response.text
    assert response.json()["turns"][0]["provider"] == "groq"
    call = double.chat_requests[-1]
    assert call.headers["authorization"] == f"Bearer {ACCOUNT_KEY}" and call.body["model"] == "llama-3.1-8b-instant"


# --- agent testing -------------------------------------------------------------------------------------------
def test_text_test_returns_reply_latency_usage_cost(client, auth, double):
    agent_id = create_agent(client, auth)
    double.script(Reply(text="We are open nine to six.", prompt_tokens=120, completion_tokens=8, cached_tokens=100))
    response = client.post(f"/api/v1/agents/{agent_id}/test", json={"message": "When are you open?"}, headers=auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "text" and body["config_source"] == "draft" and body["passed"] is True
    assert body["reply"] == "We are open nine to six."
    assert body["latency"]["ttft_ms"] is not None and body["latency"]["total_ms"] >= body["latency"]["ttft_ms"]
    assert body["usage"] == {
        "prompt_tokens": 120,
        "completion_tokens": 8,
        "cached_tokens": 100,
        "estimated": False,
        "engines": {"llm": {"configured": "openai", "used": "openai", "fallback": False, "offline": False}},
    }
    # 20 * 0.15 + 100 * 0.075 + 8 * 0.60 per million
    assert body["cost_usd"] == "0.000015300"
    sent = double.chat_requests[-1].body
    assert sent["messages"][0]["role"] == "system" and AGENT["system_prompt"] in sent["messages"][0]["content"]
    assert sent["messages"][1] == {"role": "assistant", "content": AGENT["first_message"]}
    assert sent["messages"][-1] == {"role": "user", "content": "When are you open?"}
    assert any(tool["function"]["name"] == "end_call" for tool in sent["tools"])


def test_scripted_test_checks_every_turn(client, auth, double):
    agent_id = create_agent(client, auth)

    def respond(body):
        last = body["messages"][-1]["content"].lower()
        if "hours" in last:
            return Reply(text="We open at 9 am and close at 6 pm.")
        if "price" in last:
            return Reply(text="A cleaning costs 80 dollars.")
        return Reply(
            text="Let me end the call now.", tool_calls=[{"name": "end_call", "arguments": '{"reason": "done"}'}]
        )

    double.responder = respond
    turns = [
        {
            "user": "What are your hours?",
            "expect_contains": ["9 am"],
            "expect_regex": r"\d+ pm",
            "expect_end_call": False,
        },
        {"user": "What is the price of a cleaning?", "expect_not_contains": ["dollars"]},  # fails on purpose
        {"user": "That's all, hang up please", "expect_tool_called": "end_call", "expect_end_call": True},
        {"user": "Are you still there?"},
    ]
    response = client.post(f"/api/v1/agents/{agent_id}/test", json={"turns": turns}, headers=auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "scripted" and body["passed"] is False
    results = body["turns"]
    assert [r["passed"] for r in results] == [True, False, True, False]
    assert [c["check"] for c in results[0]["checks"]] == ["contains", "regex", "end_call"]
    assert results[1]["checks"] == [{"check": "not_contains", "expected": "dollars", "passed": False}]
    assert results[2]["end_call"] is True and results[2]["tool_calls"][0]["arguments"] == {"reason": "done"}
    assert results[3]["skipped"] is True
    assert body["totals"]["turns"] == 4 and body["totals"]["passed_turns"] == 2
    # history carries over: the second request contained the first exchange
    second = double.chat_requests[1].body["messages"]
    assert {"role": "assistant", "content": "We open at 9 am and close at 6 pm."} in second


def test_catastrophic_regex_is_bounded_not_a_hang(client, auth, double):
    agent_id = create_agent(client, auth)
    double.default = Reply(text="a" * 5000 + "!", words_per_chunk=5000)
    turns = [
        {"user": "Say a lot of a", "expect_regex": r"(a+)+$"},  # exponential backtracking on this reply
        {"user": "Again", "expect_regex": r"^a+!$"},
    ]
    response = client.post(f"/api/v1/agents/{agent_id}/test", json={"turns": turns}, headers=auth)
    assert response.status_code == 200, response.text
    first, second = response.json()["turns"]
    assert first["passed"] is False
    assert first["checks"][0]["passed"] is False and first["checks"][0]["error"] == "regex_timeout"
    assert second["passed"] is True and second["checks"] == [{"check": "regex", "expected": r"^a+!$", "passed": True}]


def test_caller_goodbye_ends_without_llm(client, auth, double):
    agent_id = create_agent(client, auth)
    response = client.post(
        f"/api/v1/agents/{agent_id}/test",
        json={"turns": [{"user": "ok goodbye", "expect_end_call": True}]},
        headers=auth,
    )
    body = response.json()
    assert body["passed"] is True and body["turns"][0]["reply"] == "Thank you for calling. Goodbye!"
    assert double.chat_requests == []


@pytest.mark.parametrize("said", ["that is all_done", "ALL DONE!", "I’m all done, thanks"])
def test_caller_end_call_phrase_matches_as_on_a_call(client, auth, double, said):
    """The call's phrase rule (airies.core.text): whole words, case, punctuation and underscores ignored."""
    agent_id = create_agent(client, auth, end_call_phrases=["all done"])
    turns = [{"user": said, "expect_end_call": True}, {"user": "all doneness", "expect_end_call": False}]
    response = client.post(f"/api/v1/agents/{agent_id}/test", json={"turns": turns[:1]}, headers=auth)
    assert response.json()["turns"][0]["end_call_reason"] == "caller_end_call_phrase"
    response = client.post(f"/api/v1/agents/{agent_id}/test", json={"turns": turns[1:]}, headers=auth)
    assert response.json()["turns"][0]["end_call"] is False


def test_published_version_is_tested_when_asked(client, auth, double):
    agent_id = create_agent(client, auth)
    assert (
        client.post(
            f"/api/v1/agents/{agent_id}/test", json={"message": "hi", "use_draft": False}, headers=auth
        ).status_code
        == 409
    )
    assert client.post(f"/api/v1/agents/{agent_id}/deploy", headers=auth).status_code == 201
    client.put(f"/api/v1/agents/{agent_id}", json={"system_prompt": "DRAFT PROMPT"}, headers=auth)
    response = client.post(f"/api/v1/agents/{agent_id}/test", json={"message": "hi", "use_draft": False}, headers=auth)
    assert (
        response.status_code == 200
        and response.json()["config_source"] == "version"
        and response.json()["version"] == 1
    )
    assert "DRAFT PROMPT" not in double.chat_requests[-1].body["messages"][0]["content"]


def test_agent_test_failover_is_reported(client, auth, double):
    agent_id = create_agent(client, auth)
    double.script(Reply(status=503))
    response = client.post(f"/api/v1/agents/{agent_id}/test", json={"message": "hi"}, headers=auth)
    assert response.status_code == 502  # one provider configured: the failure is reported, not invented
    assert response.json()["error"]["code"] == "provider_error"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"message": ""},
        {"turns": [{"user": ""}]},
        {"message": "hi", "bogus": 1},
        {"turns": [{"user": "hi", "expect_regex": "(unclosed"}]},
        {"turns": [{"user": "hi", "expect_regex": "a" * 501}]},
    ],
)
def test_agent_test_bad_input(client, auth, body, double):
    agent_id = create_agent(client, auth)
    assert client.post(f"/api/v1/agents/{agent_id}/test", json=body, headers=auth).status_code == 422
    assert double.chat_requests == []  # rejected before any LLM call


def test_agent_test_foreign_agent_is_404(client, auth):
    agent_id = create_agent(client, auth)
    other = signup(client)
    assert client.post(f"/api/v1/agents/{agent_id}/test", json={"message": "hi"}, headers=other).status_code == 404


def test_agent_test_offline_without_any_provider(database, tmp_path):
    from fastapi.testclient import TestClient

    from airies.api.app import create_app

    app = create_app(Settings(stage="local", data_dir=tmp_path, allow_public_signup=True), database)
    with TestClient(app) as offline_client:
        headers = signup(offline_client)
        agent_id = create_agent(offline_client, headers)
        body = offline_client.post(
            f"/api/v1/agents/{agent_id}/test", json={"message": "hello?"}, headers=headers
        ).json()
        assert body["is_language_model"] is False
        assert body["turns"][0]["provider"] == "offline" and "No language model" in body["reply"]
        models = offline_client.get("/api/v1/llm/models", headers=headers).json()
        assert models["offline"] is True


def test_build_with_a_session_uses_the_accounts_keys(client, auth, database, settings):
    from airies.llm.service import build_llm_service

    client.put("/api/v1/provider-keys/groq", json={"api_key": ACCOUNT_KEY}, headers=auth)
    with database.session() as session:
        account_id = session.scalars(select(ProviderKey.account_id)).one()
        service = build_llm_service(settings, session=session, account_id=account_id)
        assert service.router.providers["groq"].key_source == "account"
        assert service.router.providers["openai"].key_source == "platform"
        assert "groq" not in build_llm_service(settings, session=session).router.providers


def test_agent_test_uses_knowledge_passages(client, auth, database, settings, double):
    import asyncio
    from dataclasses import dataclass

    from airies.agents.models import Agent
    from airies.agents.schemas import AgentTestRequest
    from airies.agents.testing import AgentTestService

    @dataclass
    class Chunk:  # the knowledge capability returns dataclasses with ``text``
        text: str
        score: float

    agent_id = create_agent(client, auth)
    with database.session() as session:
        agent = session.get(Agent, agent_id)
        agent.draft_config = {**agent.draft_config, "knowledge_base_ids": ["kb_1"]}
        account_id = agent.account_id
    seen = []

    async def retriever(account, kb_ids, query):
        seen.append((account, kb_ids, query))
        return [Chunk("Cleanings cost 80 dollars.", 0.9)]

    double.script(Reply(text="A cleaning is 80 dollars."))
    with database.session() as session:
        service = AgentTestService(session, settings, database=database, retriever=retriever)
        result = asyncio.run(service.run(account_id, agent_id, AgentTestRequest(message="How much is a cleaning?")))
    assert seen == [(account_id, ["kb_1"], "How much is a cleaning?")]
    assert result["turns"][0]["passages"] == 1 and result["reply"] == "A cleaning is 80 dollars."
    assert "Cleanings cost 80 dollars." in double.chat_requests[-1].body["messages"][0]["content"]

    def broken(*_args):
        raise RuntimeError("vector store down")

    double.script(Reply(text="Let me check."))
    with database.session() as session:
        service = AgentTestService(session, settings, database=database, retriever=broken)
        result = asyncio.run(service.run(account_id, agent_id, AgentTestRequest(message="How much?")))
    assert result["reply"] == "Let me check." and "vector store down" in result["turns"][0]["retrieval_error"]


def test_offline_agent_test_answers_from_knowledge(database, tmp_path):
    import asyncio

    from airies.agents.models import Agent
    from airies.agents.schemas import AgentTestRequest
    from airies.agents.testing import AgentTestService
    from airies.llm.service import build_llm_service

    offline_settings = Settings(stage="local", data_dir=tmp_path)
    from fastapi.testclient import TestClient

    from airies.api.app import create_app

    with TestClient(create_app(offline_settings, database)) as offline_client:
        headers = signup(offline_client)
        agent_id = create_agent(offline_client, headers)
    with database.session() as session:
        agent = session.get(Agent, agent_id)
        agent.draft_config = {**agent.draft_config, "knowledge_base_ids": ["kb_1"]}
        account_id = agent.account_id
    passages = ["Parking is free behind the building.", "Cleanings cost 80 dollars and take 45 minutes."]
    with database.session() as session:
        service = AgentTestService(
            session, offline_settings, llm=build_llm_service(offline_settings), retriever=lambda *_: passages
        )
        result = asyncio.run(
            service.run(account_id, agent_id, AgentTestRequest(message="How long does a cleaning take?"))
        )
    assert result["reply"] == passages[1] and result["is_language_model"] is False
