"""An account's own provider keys (validated against the vendor's wire format) select the cloud provider for that
account only; other accounts keep the offline engine."""

from __future__ import annotations

import pytest

from airies.core.config import Settings
from airies.voice.service import clear_voice_cache
from tests.conftest import signup
from tests.doubles.deepgram_server import DeepgramServer
from tests.doubles.elevenlabs_server import ElevenLabsServer


@pytest.fixture(scope="module")
def deepgram():  # type: ignore[no-untyped-def]
    with DeepgramServer(latency=0, api_key="account-deepgram-key") as server:
        yield server


@pytest.fixture(scope="module")
def elevenlabs():  # type: ignore[no-untyped-def]
    with ElevenLabsServer(latency=0, api_key="account-eleven-key") as server:
        yield server


@pytest.fixture
def settings(tmp_path, deepgram, elevenlabs) -> Settings:  # type: ignore[no-untyped-def]
    clear_voice_cache()
    # Base URLs point at the doubles, but there is no platform key: only accounts that bring one use the vendor.
    return Settings(
        stage="local",
        data_dir=tmp_path,
        deepgram_base_url=deepgram.url,
        elevenlabs_base_url=elevenlabs.url,
    )


def test_account_keys_are_validated_and_used_for_that_account_only(client, auth, deepgram, elevenlabs):
    wrong = client.put("/api/v1/provider-keys/deepgram", json={"api_key": "not-the-key"}, headers=auth)
    assert wrong.status_code == 422, wrong.text
    assert deepgram.requests[-1].path == "/v1/projects"
    ok = client.put("/api/v1/provider-keys/deepgram", json={"api_key": "account-deepgram-key"}, headers=auth)
    assert ok.status_code == 200, ok.text
    ok = client.put("/api/v1/provider-keys/elevenlabs", json={"api_key": "account-eleven-key"}, headers=auth)
    assert ok.status_code == 200, ok.text

    speech = client.post(
        "/api/v1/voices/preview",
        json={"text": "Hello there.", "provider": "elevenlabs", "voice_id": "21m00Tcm4TlvDq8ikWAM"},
        headers=auth,
    )
    assert speech.status_code == 200 and speech.headers["x-voice-provider"] == "elevenlabs"
    deepgram.transcripts.script("hello there")
    body = client.post(
        "/api/v1/transcriptions",
        files={"file": ("a.wav", speech.content, "audio/wav")},
        data={"provider": "deepgram"},
        headers=auth,
    ).json()
    assert body["provider"] == "deepgram" and body["text"] == "hello there"
    assert deepgram.requests[-1].headers["authorization"] == "Token account-deepgram-key"

    other = signup(client)
    body = client.post(
        "/api/v1/transcriptions",
        files={"file": ("a.wav", speech.content, "audio/wav")},
        data={"provider": "deepgram"},
        headers=other,
    ).json()
    assert body["provider"] == "pocketsphinx"  # no key of its own: the offline engine
    listed = client.get("/api/v1/voices", params={"provider": "elevenlabs"}, headers=other).json()["data"][0]
    assert listed["configured"] is False and listed["source"] == "catalog"

    rows = {row["provider"]: row for row in client.get("/api/v1/providers", headers=auth).json()["data"]}
    assert rows["deepgram"]["account_key"] is True and rows["deepgram"]["configured"] is False  # no platform key
    assert rows["pocketsphinx"]["status"] == "offline" and rows["espeak"]["kind"] == "tts"
