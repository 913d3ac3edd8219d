"""Honest engines, on both databases: validation warns about providers without a key (and says what answers
instead), and every turn's usage says which engine actually answered."""

from __future__ import annotations

import pytest

from airies.accounts.provider_keys import ProviderKeyService
from airies.voice.service import clear_voice_cache
from tests.conftest import signup
from tests.doubles.conv_engines import tone
from tests.doubles.deepgram_server import DeepgramServer

AGENT = {
    "name": "Front desk",
    "system_prompt": "You answer for Acme.",
    "first_message": "Hello, Acme here.",
    "llm": {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "fallbacks": [{"provider": "groq", "model": "llama-3.1-8b-instant"}],
    },
    "voice": {
        "provider": "elevenlabs",
        "voice_id": "21m00Tcm4TlvDq8ikWAM",
        "fallback_voices": [{"provider": "azure", "voice_id": "en-US-JennyNeural"}],
    },
    "transcriber": {"provider": "deepgram", "model": "nova-3"},
}


@pytest.fixture
def settings(settings):  # type: ignore[no-untyped-def]
    clear_voice_cache()
    return settings


def problems_by_field(result: dict) -> dict[str, dict]:
    return {problem["field"]: problem for problem in result["problems"]}


def test_missing_keys_are_warnings_that_say_the_offline_engines_answer(client, auth):
    result = client.post("/api/v1/agents/validate", json=AGENT, headers=auth).json()
    assert result["valid"] is True
    problems = problems_by_field(result)
    assert set(problems) == {
        "llm.provider",
        "llm.fallbacks.0.provider",
        "transcriber.provider",
        "voice.provider",
        "voice.fallback_voices.0.provider",
    }
    assert {(p["code"], p["severity"]) for p in problems.values()} == {("no_api_key", "warning")}
    assert problems["llm.provider"]["message"] == (
        "openai has no API key on this account or the platform: the offline responder will answer instead "
        "(it is not a language model)"
    )
    assert problems["llm.fallbacks.0.provider"]["message"].endswith("this fallback is skipped")
    assert problems["transcriber.provider"]["message"].endswith("PocketSphinx (offline) will transcribe instead")
    assert problems["voice.provider"]["message"].endswith("eSpeak NG (offline) will speak instead")

    offline = {
        **AGENT,
        "voice": {"provider": "espeak", "voice_id": "en-us"},
        "transcriber": {"provider": "pocketsphinx", "model": "en-us"},
    }
    chosen = problems_by_field(client.post("/api/v1/agents/validate", json=offline, headers=auth).json())
    assert "voice.provider" not in chosen and "transcriber.provider" not in chosen  # chosen on purpose: no warning


def test_keys_of_the_platform_or_the_account_silence_the_warning(client, auth, settings, database):
    settings.openai_api_key = "sk-platform"
    account_id = client.get("/api/v1/accounts/me", headers=auth).json()["id"]
    with database.session() as session:  # the account's own Deepgram key (validated when set through the API)
        ProviderKeyService(session, settings).store(account_id, "deepgram", "account-deepgram-key-0001")
    problems = problems_by_field(client.post("/api/v1/agents/validate", json=AGENT, headers=auth).json())
    assert set(problems) == {"llm.fallbacks.0.provider", "voice.provider", "voice.fallback_voices.0.provider"}

    groq_first = {**AGENT, "llm": {"provider": "groq", "model": "llama-3.1-8b-instant"}}
    problems = problems_by_field(client.post("/api/v1/agents/validate", json=groq_first, headers=auth).json())
    assert problems["llm.provider"]["message"] == (
        "groq has no API key on this account or the platform: another configured provider will answer instead (openai)"
    )
    # Another account's key counts for that account only.
    other = problems_by_field(client.post("/api/v1/agents/validate", json=AGENT, headers=signup(client)).json())
    assert "transcriber.provider" in other


def test_reading_an_agent_finds_its_warnings_in_one_key_query_and_decrypts_nothing(
    client, auth, settings, database, monkeypatch
):
    """A warm ``GET /agents/{id}`` (the API's hot path) asks which providers have a stored key once, names only:
    not one query and one decryption per voice vendor."""
    from sqlalchemy import event

    account_id = client.get("/api/v1/accounts/me", headers=auth).json()["id"]
    with database.session() as session:
        for provider, key in (("deepgram", "account-deepgram-key-0001"), ("elevenlabs", "account-eleven-key-0001")):
            ProviderKeyService(session, settings).store(account_id, provider, key)
    agent = client.post("/api/v1/agents", json=AGENT, headers=auth).json()
    statements: list[str] = []

    def count(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        statements.append(statement)

    def no_decryption(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a key was decrypted to read an agent")

    monkeypatch.setattr(ProviderKeyService, "get_with_options", no_decryption)
    event.listen(database.engine, "before_cursor_execute", count)
    try:
        read = client.get(f"/api/v1/agents/{agent['id']}", headers=auth)
    finally:
        event.remove(database.engine, "before_cursor_execute", count)
    assert read.status_code == 200, read.text
    assert {w["field"] for w in read.json()["warnings"]} == {
        "llm.provider",
        "llm.fallbacks.0.provider",
        "voice.fallback_voices.0.provider",
    }
    assert sum("provider_keys" in statement for statement in statements) == 1
    assert len(statements) <= 6, statements


def test_without_the_offline_fallback_the_warning_says_calls_fail(client, auth, settings):
    settings.voice_offline_fallback = False
    problems = problems_by_field(client.post("/api/v1/agents/validate", json=AGENT, headers=auth).json())
    assert "calls will fail" in problems["voice.provider"]["message"]
    assert "calls will fail" in problems["transcriber.provider"]["message"]


def test_saved_agents_and_versions_carry_their_warnings_and_errors_stay_errors(client, auth):
    created = client.post("/api/v1/agents", json=AGENT, headers=auth)
    assert created.status_code == 201, created.text
    agent = created.json()
    fields = {w["field"] for w in agent["warnings"]}
    assert {"llm.provider", "transcriber.provider", "voice.provider"} <= fields
    assert client.get(f"/api/v1/agents/{agent['id']}", headers=auth).json() == agent
    assert client.get("/api/v1/agents", headers=auth).json()["data"][0]["warnings"] == agent["warnings"]
    deployed = client.post(f"/api/v1/agents/{agent['id']}/deploy", headers=auth).json()
    assert deployed["warnings"] == agent["warnings"]
    assert client.get(f"/api/v1/agents/{agent['id']}/versions", headers=auth).json()["data"][0]["warnings"]
    invalid = client.post(
        "/api/v1/agents", json={**AGENT, "llm": {"provider": "openai", "model": "gpt-99"}}, headers=auth
    )
    assert invalid.status_code == 422
    assert [(p["field"], p["severity"]) for p in invalid.json()["error"]["details"]] == [("llm.model", "error")]


def _conversation(client, auth, body: dict) -> str:  # type: ignore[no-untyped-def]
    agent_id = client.post("/api/v1/agents", json=body, headers=auth).json()["id"]
    assert client.post(f"/api/v1/agents/{agent_id}/deploy", headers=auth).status_code == 201
    started = client.post("/api/v1/conversations", json={"agent_id": agent_id}, headers=auth)
    assert started.status_code == 201, started.text
    return started.json()["id"]


def test_every_turn_says_which_engine_answered(client, auth, settings):
    with DeepgramServer(latency=0, api_key="platform-deepgram-key") as deepgram:
        settings.deepgram_api_key, settings.deepgram_base_url = "platform-deepgram-key", deepgram.url
        conversation = _conversation(client, auth, AGENT)
        spoken = client.post(
            f"/api/v1/conversations/{conversation}/message", json={"text": "Hello?", "with_audio": True}, headers=auth
        )
        assert spoken.status_code == 200, spoken.text
        engines = spoken.json()["turn"]["usage"]["engines"]
        assert engines == {
            "llm": {"configured": "openai", "used": "offline", "fallback": True, "offline": True},
            "tts": {"configured": "elevenlabs", "used": "espeak", "fallback": True, "offline": True},
        }
        deepgram.transcripts.script("what are your opening hours")
        heard = client.post(
            f"/api/v1/conversations/{conversation}/audio",
            content=tone(800),
            headers={**auth, "content-type": "audio/l16"},
        )
        assert heard.status_code == 200, heard.text
        engines = heard.json()["turn"]["usage"]["engines"]
        assert engines["stt"] == {"configured": "deepgram", "used": "deepgram", "fallback": False, "offline": False}
        assert engines["llm"]["used"] == "offline"


def test_agent_tests_say_which_engine_answered(client, auth):
    agent_id = client.post("/api/v1/agents", json=AGENT, headers=auth).json()["id"]
    result = client.post(f"/api/v1/agents/{agent_id}/test", json={"message": "Hi"}, headers=auth).json()
    assert result["usage"]["engines"] == {
        "llm": {"configured": "openai", "used": "offline", "fallback": True, "offline": True}
    }
