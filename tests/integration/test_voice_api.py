"""Voice routes on both databases: voice lists, cloning (owned per account), previews and transcriptions."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from airies.core.config import Settings
from airies.voice.audio import codecs
from airies.voice.service import clear_voice_cache
from tests.conftest import signup
from tests.doubles.elevenlabs_server import ElevenLabsServer


@pytest.fixture(scope="module")
def elevenlabs():  # type: ignore[no-untyped-def]
    with ElevenLabsServer(latency=0) as server:
        yield server


@pytest.fixture
def settings(tmp_path, elevenlabs) -> Settings:  # type: ignore[no-untyped-def]
    clear_voice_cache()
    return Settings(
        stage="local",
        data_dir=tmp_path,
        allow_public_signup=True,
        elevenlabs_api_key=elevenlabs.api_key,
        elevenlabs_base_url=elevenlabs.url,
        max_transcription_seconds=20,
    )


def sample_wav(seconds: float = 1.0) -> bytes:
    t = np.arange(int(16000 * seconds)) / 16000
    return codecs.write_wav((np.sin(2 * np.pi * 220 * t) * 6000).astype(np.int16).tobytes(), 16000)


def test_list_voices_per_provider(client, auth):
    response = client.get("/api/v1/voices", headers=auth)
    assert response.status_code == 200, response.text
    by_provider = {row["provider"]: row for row in response.json()["data"]}
    assert by_provider["elevenlabs"]["source"] == "live"
    assert "21m00Tcm4TlvDq8ikWAM" in {v["voice_id"] for v in by_provider["elevenlabs"]["voices"]}
    assert "en-us" in {v["voice_id"] for v in by_provider["espeak"]["voices"]}
    one = client.get("/api/v1/voices", params={"provider": "azure"}, headers=auth).json()["data"]
    assert one[0]["provider"] == "azure" and one[0]["configured"] is False and one[0]["source"] == "catalog"
    assert client.get("/api/v1/voices", params={"provider": "nope"}, headers=auth).status_code == 404
    assert client.get("/api/v1/voices").status_code == 401


def test_voice_list_is_cached_per_container(client, auth, elevenlabs):
    before = len([r for r in elevenlabs.requests if r.path == "/v1/voices"])
    for _ in range(3):
        assert client.get("/api/v1/voices", params={"provider": "elevenlabs"}, headers=auth).status_code == 200
    assert len([r for r in elevenlabs.requests if r.path == "/v1/voices"]) == before + 1


def test_clone_voice_belongs_to_the_account(client, auth, elevenlabs):
    files = [("files", ("a.wav", sample_wav(), "audio/wav")), ("files", ("b.wav", sample_wav(), "audio/wav"))]
    response = client.post(
        "/api/v1/voices/clone", data={"name": "Founder", "description": "warm"}, files=files, headers=auth
    )
    assert response.status_code == 201, response.text
    voice = response.json()
    assert voice["provider"] == "elevenlabs" and voice["sample_count"] == 2 and voice["kind"] == "cloned"
    assert voice["voice_id"] in elevenlabs.voices

    # The account sees it in its lists and may use it in an agent; another account may not.
    listed = client.get("/api/v1/voices", params={"provider": "elevenlabs"}, headers=auth).json()["data"][0]
    assert voice["voice_id"] in {v["voice_id"] for v in listed["voices"] if v["custom"]}
    agent = {"name": "A", "first_message": "Hi", "voice": {"provider": "elevenlabs", "voice_id": voice["voice_id"]}}
    assert client.post("/api/v1/agents/validate", json=agent, headers=auth).json()["valid"] is True
    other = signup(client)
    assert client.post("/api/v1/agents/validate", json=agent, headers=other).json()["valid"] is False
    other_list = client.get("/api/v1/voices", params={"provider": "elevenlabs"}, headers=other).json()["data"][0]
    assert voice["voice_id"] not in {v["voice_id"] for v in other_list["voices"]}
    assert client.delete(f"/api/v1/voices/{voice['voice_id']}", headers=other).status_code == 404

    # Preview with the cloned voice, then delete it (at the provider too).
    preview = client.post(
        "/api/v1/voices/preview",
        json={"text": "Hello from my clone.", "provider": "elevenlabs", "voice_id": voice["voice_id"]},
        headers=auth,
    )
    assert preview.status_code == 200 and preview.headers["content-type"] == "audio/wav"
    assert codecs.read_wav(preview.content)[1] == 16000
    assert client.get("/api/v1/voices/mine", headers=auth).json()["data"][0]["id"] == voice["id"]
    assert client.delete(f"/api/v1/voices/{voice['id']}", headers=auth).status_code == 204
    assert voice["voice_id"] not in elevenlabs.voices
    assert client.delete(f"/api/v1/voices/{voice['voice_id']}", headers=auth).status_code == 404


def test_clone_rejects_bad_samples_and_reports_provider_errors(client, auth, elevenlabs):
    bad = client.post(
        "/api/v1/voices/clone",
        data={"name": "X"},
        files=[("files", ("a.txt", b"hello world", "text/plain"))],
        headers=auth,
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_audio"
    truncated = client.post(
        "/api/v1/voices/clone",
        data={"name": "X"},
        files=[("files", ("a.wav", sample_wav()[:-500], "audio/wav"))],
        headers=auth,
    )
    assert truncated.status_code == 400 and "truncated" in truncated.json()["error"]["message"]
    empty = client.post(
        "/api/v1/voices/clone", data={"name": "X"}, files=[("files", ("a.wav", b"", "audio/wav"))], headers=auth
    )
    assert empty.status_code == 400
    missing = client.post("/api/v1/voices/clone", data={"name": "X"}, headers=auth)
    assert missing.status_code == 422
    elevenlabs.fail_next(429, times=2)
    limited = client.post(
        "/api/v1/voices/clone",
        data={"name": "X"},
        files=[("files", ("a.wav", sample_wav(), "audio/wav"))],
        headers=auth,
    )
    assert limited.status_code == 502
    error = limited.json()["error"]
    assert error["details"]["provider"] == "elevenlabs" and error["details"]["upstream_status"] == 429
    assert error["details"]["reason"]["status"] == "too_many_concurrent_requests"
    azure = client.post(
        "/api/v1/voices/clone",
        data={"name": "X", "provider": "azure"},
        files=[("files", ("a.wav", sample_wav(), "audio/wav"))],
        headers=auth,
    )
    assert azure.status_code == 501


def test_preview_offline_voice_and_unknown_voices(client, auth):
    ok = client.post(
        "/api/v1/voices/preview",
        json={"text": "Testing one two.", "provider": "espeak", "voice_id": "en-gb"},
        headers=auth,
    )
    assert ok.status_code == 200 and ok.headers["x-voice-provider"] == "espeak"
    pcm, rate = codecs.read_wav(ok.content)
    assert rate == 16000 and codecs.duration_seconds(pcm, rate) > 0.5
    unknown = client.post(
        "/api/v1/voices/preview", json={"text": "Hi", "provider": "elevenlabs", "voice_id": "nope"}, headers=auth
    )
    assert unknown.status_code == 404
    unknown_espeak = client.post(
        "/api/v1/voices/preview", json={"text": "Hi", "provider": "espeak", "voice_id": "xx"}, headers=auth
    )
    assert unknown_espeak.status_code == 422
    not_configured = client.post(
        "/api/v1/voices/preview",
        json={"text": "Hi", "provider": "azure", "voice_id": "en-US-JennyNeural"},
        headers=auth,
    )
    assert not_configured.status_code == 501  # a preview never silently swaps in another engine
    mp3 = client.post(
        "/api/v1/voices/preview",
        json={"text": "Hi", "provider": "elevenlabs", "voice_id": "21m00Tcm4TlvDq8ikWAM", "format": "mp3"},
        headers=auth,
    )
    assert mp3.status_code == 200 and mp3.headers["content-type"] == "audio/mpeg"
    too_long = client.post(
        "/api/v1/voices/preview", json={"text": "x" * 501, "provider": "espeak", "voice_id": "en-us"}, headers=auth
    )
    assert too_long.status_code in (400, 422)


def test_transcriptions_offline_with_word_timings(client, auth):
    speech = client.post(
        "/api/v1/voices/preview",
        json={"text": "I want to cancel my subscription.", "provider": "espeak", "voice_id": "en-us"},
        headers=auth,
    ).content
    response = client.post(
        "/api/v1/transcriptions",
        files={"file": ("speech.wav", speech, "audio/wav")},
        data={"expected_phrases": ["I want to cancel my subscription", "What are your opening hours"]},
        headers=auth,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["provider"] == "pocketsphinx" and {"cancel", "subscription"} <= set(body["text"].split())
    assert body["words"] and all(0 <= w["start"] <= w["end"] <= body["duration_seconds"] for w in body["words"])
    raw = client.post("/api/v1/transcriptions", content=speech, headers={**auth, "content-type": "audio/wav"})
    assert raw.status_code == 200 and raw.json()["metadata"]["language_model"] == "general_lm"


def test_transcriptions_reject_bad_audio(client, auth):
    def post(data: bytes, name: str = "a.wav"):  # type: ignore[no-untyped-def]
        return client.post("/api/v1/transcriptions", files={"file": (name, data, "audio/wav")}, headers=auth)

    assert post(b"").json()["error"]["code"] == "empty_audio"
    assert post(sample_wav()[:-300]).status_code == 400
    mp3 = post(b"ID3\x03" + b"\x00" * 500, "a.mp3")
    assert mp3.status_code == 415 and mp3.json()["error"]["details"]["detected_format"] == "mp3"
    assert post(b"not audio at all").status_code == 415
    too_long = post(sample_wav(seconds=21))
    assert too_long.status_code == 413 and too_long.json()["error"]["details"]["max_seconds"] == 20
    odd_rate = codecs.write_wav(b"\x00\x00" * 1000, 11025)
    assert post(odd_rate).status_code == 400
    assert (
        client.post("/api/v1/transcriptions", content=b"x", headers={**auth, "content-type": "text/plain"}).status_code
        == 415
    )
    assert (
        client.post("/api/v1/transcriptions", data={"x": "1"}, files={"other": ("a", b"1")}, headers=auth).status_code
        == 400
    )


def test_transcriptions_unknown_provider_is_an_error_and_a_fallback_says_so(client, auth):
    speech = client.post(
        "/api/v1/voices/preview",
        json={"text": "Please book an appointment.", "provider": "espeak", "voice_id": "en-us"},
        headers=auth,
    ).content

    def post(provider: str):  # type: ignore[no-untyped-def]
        files = {"file": ("speech.wav", speech, "audio/wav")}
        return client.post("/api/v1/transcriptions", files=files, data={"provider": provider}, headers=auth)

    unknown = post("foo")
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["error"]["code"] == "not_found" and "foo" in unknown.json()["error"]["message"]
    raw = client.post(
        "/api/v1/transcriptions?provider=foo", content=speech, headers={**auth, "content-type": "audio/wav"}
    )
    assert raw.status_code == 404
    # a known cloud provider without a key: the offline engine answers, and the response says so
    fallback = post("deepgram")
    assert fallback.status_code == 200, fallback.text
    body = fallback.json()
    assert body["provider"] == "pocketsphinx" and body["requested_provider"] == "deepgram"
    assert body["fallback"] is True and body["model"] != "nova-3"
    direct = post("pocketsphinx").json()
    assert direct["provider"] == "pocketsphinx" and direct["fallback"] is False


def test_providers_report_offline_engines_only_when_installed(client, auth, settings, monkeypatch):
    def voice_rows():  # type: ignore[no-untyped-def]
        rows = client.get("/api/v1/providers", headers=auth).json()["data"]
        return {row["provider"]: row for row in rows if row["provider"] in ("pocketsphinx", "espeak")}

    rows = voice_rows()
    assert rows["pocketsphinx"]["configured"] is True and rows["pocketsphinx"]["status"] == "offline"
    assert rows["espeak"]["configured"] is True and rows["espeak"]["status"] == "offline"
    settings.espeak_binary = "espeak-ng-not-installed-here"
    monkeypatch.setitem(sys.modules, "pocketsphinx", None)  # how Python marks a module unimportable
    rows = voice_rows()
    assert rows["espeak"]["configured"] is False and rows["espeak"]["status"] == "not_installed"
    assert "espeak-ng-not-installed-here" in rows["espeak"]["reason"]
    assert rows["pocketsphinx"]["configured"] is False and rows["pocketsphinx"]["status"] == "not_installed"
