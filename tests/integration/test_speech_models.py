"""The offline recogniser's domain models: built when an agent version is deployed, cached by content hash on disk
and in the storage bucket (moto S3), found again by hash, and never built during a turn (a turn without one decodes
with the general model). Builders are counted through an injected builder, on both databases."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from airies.agents.config import AgentConfig
from airies.agents.service import prepare_deployed_agents
from airies.conversations.engines import VoiceSTT
from airies.conversations.turns import TurnEngines
from airies.core.storage import StorageService
from airies.voice.audio.codecs import read_wav, resample_pcm16
from airies.voice.factory import build_voice_service, offline_recogniser
from airies.voice.speech_models import (
    SpeechModelCache,
    domain_phrases,
    expected_phrases_for_agent,
    forget_models_in_memory,
    prepare_speech_model,
)
from airies.voice.stt.pocketsphinx import DomainModel, domain_digest
from tests.doubles.conv_engines import FakeLLM, FakeTTS, silence
from tests.integration.test_conv_handlers import Harness, frames_of, types

BUCKET = "speech-models-test"
AGENT = {
    "name": "Clinic",
    "system_prompt": "You are the receptionist of a dental clinic. You book appointments.",
    "first_message": "Hello, this is the clinic. How can I help?",
    "voice": {"provider": "espeak", "voice_id": "en-us"},
    "transcriber": {"provider": "pocketsphinx", "model": "en-us"},
}


class CountingBuilder:
    """The real builder (PocketSphinx), counted."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, phrases: Any) -> DomainModel | None:
        self.calls.append(tuple(phrases))
        return offline_recogniser().build_model(phrases)


@pytest.fixture(autouse=True)
def fresh_memory():  # type: ignore[no-untyped-def]
    forget_models_in_memory()  # every "container" of a test starts cold
    yield
    forget_models_in_memory()


@pytest.fixture
def s3():  # type: ignore[no-untyped-def]
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def digest_of(config: dict[str, Any]) -> str:
    agent = AgentConfig.model_validate(config)
    digest = domain_digest(domain_phrases(expected_phrases_for_agent(agent), agent.transcriber.keywords))
    assert digest is not None
    return digest


def test_deploy_builds_the_model_and_stores_it_by_content_hash(client, auth, app, s3, tmp_path) -> None:  # type: ignore[no-untyped-def]
    builder = CountingBuilder()
    storage = StorageService(BUCKET, client=s3)
    app.state.speech_models = SpeechModelCache(tmp_path / "container-a", storage, builder)
    agent = client.post("/api/v1/agents", json=AGENT, headers=auth).json()
    deployed = client.post(f"/api/v1/agents/{agent['id']}/deploy", headers=auth)
    assert deployed.status_code == 201, deployed.text
    assert len(builder.calls) == 1
    digest = digest_of(deployed.json()["config"])
    on_disk = tmp_path / "container-a" / "pocketsphinx" / f"{digest}.json"
    model = DomainModel.from_json(on_disk.read_bytes())
    assert model is not None and model.digest == digest and "appointments" in model.dictionary
    account_id = agent.get("account_id") or client.get("/api/v1/accounts/me", headers=auth).json()["id"]
    stored = s3.get_object(Bucket=BUCKET, Key=f"accounts/{account_id}/speech-models/pocketsphinx/{digest}.json")
    assert DomainModel.from_json(stored["Body"].read()) == model

    # The same phrases again (another deploy, a clone): found by hash, not built.
    assert client.post(f"/api/v1/agents/{agent['id']}/deploy", headers=auth).status_code == 201
    clone = client.post(f"/api/v1/agents/{agent['id']}/clone", json={}, headers=auth).json()
    assert client.post(f"/api/v1/agents/{clone['id']}/deploy", headers=auth).status_code == 201
    assert len(builder.calls) == 1
    # Another container (empty disk, empty memory) finds it in the bucket, and keeps a disk copy.
    forget_models_in_memory()
    other = SpeechModelCache(tmp_path / "container-b", storage, builder)
    phrases = domain_phrases(expected_phrases_for_agent(AgentConfig.model_validate(AGENT)), ())
    assert other.get(account_id, phrases) == model and len(builder.calls) == 1
    assert (tmp_path / "container-b" / "pocketsphinx" / f"{digest}.json").exists()
    # New phrases: a new model.
    changed = client.put(
        f"/api/v1/agents/{agent['id']}", json={"end_call_phrases": ["see you"]}, headers=auth
    ).status_code
    assert changed == 200
    assert client.post(f"/api/v1/agents/{agent['id']}/deploy", headers=auth).status_code == 201
    assert len(builder.calls) == 2


def test_make_run_start_up_prepares_the_deployed_agents(database, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from airies.accounts.service import AccountService
    from airies.agents.schemas import AgentCreate
    from airies.agents.service import AgentService

    with database.session() as s:
        account, _ = AccountService(s).signup(name="Co", email=f"{uuid.uuid4().hex[:8]}@ex.com")
        agents = AgentService(s)
        deployed = agents.create(account.id, AgentCreate(**AGENT))
        agents.deploy(account.id, deployed.id)
        agents.create(account.id, AgentCreate(**{**AGENT, "name": "Draft", "system_prompt": "Never deployed."}))
    builder = CountingBuilder()
    cache = SpeechModelCache(tmp_path / "models", None, builder)
    assert prepare_deployed_agents(cache, database) == 1 and len(builder.calls) == 1  # the draft is skipped
    assert cache.get(account.id, builder.calls[0]) is not None
    assert prepare_deployed_agents(cache, database) == 1 and len(builder.calls) == 1  # cached by hash


def spoken(text: str, tmp_path: Path) -> bytes:
    out = tmp_path / f"{uuid.uuid4().hex}.wav"
    subprocess.run(["espeak-ng", "-v", "en-us+klatt2", "-w", str(out), text], check=True)
    pcm, rate = read_wav(out.read_bytes())
    return resample_pcm16(pcm, rate, 16000)


def offline_stt_harness(aws: Any, database: Any, settings: Any, cache: SpeechModelCache, **agent: Any) -> Harness:
    """Handler harness whose turns transcribe with the production voice service (PocketSphinx)."""
    voice = build_voice_service(settings)
    voice.speech_models = cache
    llm = FakeLLM(reply="Sure, let me check.")
    h = Harness(database, settings, None, first_message_mode="assistant_waits_for_user", **agent)
    h.service.engines = lambda session, account_id, config: TurnEngines(
        llm=llm, stt=VoiceSTT(voice, config), tts=FakeTTS(ms_per_char=10)
    )
    h.llm = llm  # type: ignore[attr-defined]
    return h


def speak(h: Harness, conn: str, pcm: bytes, seq: int = 0) -> int:
    """One utterance in 200 ms frames numbered from ``seq``, ended by the server VAD (trailing silence); returns
    the next seq."""
    pcm = silence(200) + pcm + silence(800)
    pcm += bytes(-len(pcm) % 6400)  # whole frames (a short last one would be refused)
    h.clock.now += len(pcm) / 32_000  # the caller talks in real time (the flood guard allows 1.5x)
    return h.audio(conn, pcm, seq)


@pytest.fixture
def aws():  # type: ignore[no-untyped-def]
    with mock_aws():
        yield


def test_a_turn_never_builds_a_model(aws, database, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    builder = CountingBuilder()
    cache = SpeechModelCache(tmp_path / "models", None, builder)
    looked_up: list[DomainModel | None] = []
    get = cache.get
    cache.get = lambda account_id, phrases: looked_up.append(get(account_id, phrases)) or looked_up[-1]  # type: ignore[method-assign]
    h = offline_stt_harness(
        aws,
        database,
        settings,
        cache,
        transcriber={"provider": "pocketsphinx", "model": "en-us"},
        metadata={"expected_phrases": ["I would like to book an appointment"]},
    )
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    seq = speak(h, conn, spoken("I would like to book an appointment", tmp_path))
    # No model for this agent (deployed without one): the turn decodes with the general model, builds nothing.
    assert types(frames_of(conn))[-1] == "turn_end" and "transcript" in types(frames_of(conn))
    assert builder.calls == [] and looked_up == [None]
    looked_up.clear()
    # Once deployed with its model, later turns use it; still nothing is built during a turn.
    config = AgentConfig.model_validate(h.store.config(cid))
    assert prepare_speech_model(cache, h.account_id, config) and len(builder.calls) == 1
    speak(h, conn, spoken("I would like to book an appointment", tmp_path), seq)
    transcript = [f for f in frames_of(conn) if f["type"] == "transcript"][-1]["text"]
    assert {"book", "appointment"} <= set(transcript.split()) and len(builder.calls) == 1
    assert looked_up[-1] is not None and looked_up[-1].digest == digest_of(config.model_dump())


def test_a_caller_saying_goodbye_ends_the_call(aws, database, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """ "goodbye" is a default end-call phrase: the recogniser is given the whole agent's phrases (end-call phrases,
    keywords, first message, prompt), not only ``metadata.expected_phrases``, so it hears it and the call ends."""
    cache = SpeechModelCache(tmp_path / "models", None, CountingBuilder())
    h = offline_stt_harness(aws, database, settings, cache, transcriber={"provider": "pocketsphinx", "model": "en-us"})
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    config = AgentConfig.model_validate(h.store.config(cid))
    assert "goodbye" in config.end_call_phrases and not config.metadata.get("expected_phrases")
    assert prepare_speech_model(cache, h.account_id, config)  # as the deploy does
    speak(h, conn, spoken("goodbye", tmp_path))
    frames = frames_of(conn)
    assert [f["text"] for f in frames if f["type"] == "transcript"] == ["goodbye"]
    ended = [f for f in frames if f["type"] == "ended"]  # (the trailing silence frames after it are refused)
    assert [f["reason"] for f in ended] == ["caller_end_call_phrase"]
    assert h.conversation(cid).end_reason == "caller_end_call_phrase" and not h.llm.requests  # type: ignore[attr-defined]


def test_deploy_without_the_offline_recogniser_builds_nothing_and_succeeds(
    client, auth, app, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import sys

    builder = CountingBuilder()
    app.state.speech_models = SpeechModelCache(tmp_path / "models", None, builder)
    monkeypatch.setitem(sys.modules, "pocketsphinx", None)  # as on the Lambda layer, which does not ship it
    agent = client.post("/api/v1/agents", json=AGENT, headers=auth).json()
    assert client.post(f"/api/v1/agents/{agent['id']}/deploy", headers=auth).status_code == 201
    assert builder.calls == [] and not (tmp_path / "models").exists()
