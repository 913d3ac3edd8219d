"""The real vendor SDKs (deepgram-sdk, openai, elevenlabs) and Azure's REST API against local servers that speak
each vendor's wire format, on real sockets. Nothing is patched."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from airies.core.errors import NotFoundError, ProviderError
from airies.voice.audio import codecs
from airies.voice.stt.base import STTOptions
from airies.voice.stt.deepgram import DeepgramSTT
from airies.voice.stt.whisper import WhisperSTT
from airies.voice.tts.azure import AzureTTS
from airies.voice.tts.base import TTSOptions
from airies.voice.tts.elevenlabs import ElevenLabsTTS
from tests.doubles.azure_tts_server import AzureTTSServer
from tests.doubles.deepgram_server import DeepgramServer
from tests.doubles.elevenlabs_server import ElevenLabsServer
from tests.doubles.whisper_server import WhisperServer

PCM = (np.sin(np.arange(16000) / 16000 * 2 * np.pi * 300) * 8000).astype(np.int16).tobytes()  # 1 s


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def collect(stream) -> bytes:  # type: ignore[no-untyped-def]
    return b"".join([chunk async for chunk in stream])


@pytest.fixture
def deepgram():  # type: ignore[no-untyped-def]
    with DeepgramServer(latency=0) as server:
        yield server


@pytest.fixture
def whisper():  # type: ignore[no-untyped-def]
    with WhisperServer(latency=0) as server:
        yield server


@pytest.fixture
def elevenlabs():  # type: ignore[no-untyped-def]
    with ElevenLabsServer(latency=0) as server:
        yield server


@pytest.fixture
def azure():  # type: ignore[no-untyped-def]
    with AzureTTSServer(latency=0) as server:
        yield server


# ------------------------------------------------------------------ Deepgram


def test_deepgram_transcribes_with_word_timings(deepgram):
    deepgram.transcripts.script("book a table for two")
    stt = DeepgramSTT(deepgram.api_key, base_url=deepgram.url, max_retries=0)
    transcript = run(stt.transcribe(PCM, 16000, STTOptions(model="nova-3", keywords=("table",))))
    assert transcript.text == "book a table for two"
    assert [w.word for w in transcript.words] == ["book", "a", "table", "for", "two"]
    assert all(0 <= w.start < w.end <= 1.0 for w in transcript.words)
    assert transcript.words[0].confidence == pytest.approx(0.97)
    assert transcript.language == "en" and transcript.duration_seconds == pytest.approx(1.0)
    assert transcript.provider == "deepgram" and transcript.model == "nova-3"
    request = deepgram.requests[-1]
    assert request.path == "/v1/listen" and request.headers["authorization"] == "Token test-key"
    assert request.query["model"] == ["nova-3"] and request.query["keyterm"] == ["table"]
    assert codecs.read_wav(request.body) == (PCM, 16000)  # the audio went as a WAV


def test_deepgram_errors_carry_the_vendors_reason(deepgram):
    bad_key = DeepgramSTT("wrong", base_url=deepgram.url, max_retries=0)
    with pytest.raises(ProviderError) as info:
        run(bad_key.transcribe(PCM, 16000, STTOptions()))
    assert info.value.upstream_status == 401 and not info.value.retryable
    assert info.value.details["reason"] == "Invalid credentials."

    stt = DeepgramSTT(deepgram.api_key, base_url=deepgram.url, max_retries=0)
    deepgram.fail_next(429, headers={"retry-after": "3"})
    with pytest.raises(ProviderError) as info:
        run(stt.transcribe(PCM, 16000, STTOptions()))
    assert info.value.upstream_status == 429 and info.value.retryable and info.value.retry_after == 3.0
    assert "Too many requests" in info.value.details["reason"]


def test_deepgram_timeout_is_a_retryable_provider_error(deepgram):
    deepgram.latency = 2.0
    stt = DeepgramSTT(deepgram.api_key, base_url=deepgram.url, timeout=0.3, max_retries=0)
    with pytest.raises(ProviderError) as info:
        run(stt.transcribe(PCM, 16000, STTOptions()))
    assert info.value.retryable and "timed out" in info.value.message


# ------------------------------------------------------------------ Whisper


def test_whisper_verbose_json_word_timestamps(whisper):
    whisper.transcripts.script("what are your opening hours")
    stt = WhisperSTT(whisper.api_key, base_url=whisper.url + "/v1", max_retries=0)
    transcript = run(stt.transcribe(PCM, 16000, STTOptions(expected_phrases=("opening hours",))))
    assert transcript.text == "what are your opening hours"
    assert len(transcript.words) == 5 and transcript.words[-1].end == pytest.approx(1.0)
    assert transcript.language == "english" and transcript.model == "whisper-1"
    request = whisper.requests[-1]
    assert request.headers["authorization"] == "Bearer test-key"
    assert b'name="response_format"' in request.body and b"verbose_json" in request.body
    assert b"opening hours" in request.body  # expected phrases go as the prompt


def test_whisper_gpt4o_models_use_plain_json(whisper):
    whisper.transcripts.script("hello")
    stt = WhisperSTT(whisper.api_key, base_url=whisper.url + "/v1", max_retries=0)
    transcript = run(stt.transcribe(PCM, 16000, STTOptions(model="gpt-4o-mini-transcribe")))
    assert transcript.text == "hello" and transcript.words == ()


def test_whisper_errors(whisper):
    stt = WhisperSTT("wrong", base_url=whisper.url + "/v1", max_retries=0)
    with pytest.raises(ProviderError) as info:
        run(stt.transcribe(PCM, 16000, STTOptions()))
    assert info.value.upstream_status == 401
    assert info.value.details["reason"]["code"] == "invalid_api_key"
    good = WhisperSTT(whisper.api_key, base_url=whisper.url + "/v1", max_retries=0)
    whisper.fail_next(503)
    with pytest.raises(ProviderError) as info:
        run(good.transcribe(PCM, 16000, STTOptions()))
    assert info.value.upstream_status == 503 and info.value.retryable


# ------------------------------------------------------------------ ElevenLabs


@pytest.mark.parametrize(
    ("output_format", "check"), [("pcm_16000", "pcm"), ("ulaw_8000", "ulaw"), ("mp3_44100_128", "mp3")]
)
def test_elevenlabs_streams_each_output_format(elevenlabs, output_format, check):
    tts = ElevenLabsTTS(elevenlabs.api_key, base_url=elevenlabs.url, max_retries=0)
    options = TTSOptions(voice_id="21m00Tcm4TlvDq8ikWAM", output_format=output_format, stability=0.3, speed=1.1)

    async def stream() -> list[bytes]:
        return [chunk async for chunk in tts.synthesize("Hello there. How can I help?", options)]

    chunks = run(stream())
    audio = b"".join(chunks)
    assert len(chunks) > 1  # streamed, not one blob
    if check == "pcm":
        assert len(audio) % 2 == 0 and codecs.duration_seconds(audio, 16000) > 0.5
    elif check == "ulaw":
        assert codecs.duration_seconds(codecs.ulaw_to_pcm16(audio), 8000) > 0.5
    else:
        assert codecs.sniff_format(audio) == "mp3"
    request = elevenlabs.requests[-1]
    assert request.path == "/v1/text-to-speech/21m00Tcm4TlvDq8ikWAM/stream"
    assert request.query["output_format"] == [output_format]
    import json

    body = json.loads(request.body)
    assert body["model_id"] == "eleven_flash_v2_5"
    assert body["voice_settings"]["stability"] == 0.3 and body["voice_settings"]["speed"] == 1.1


def test_elevenlabs_unknown_voice_is_404_and_bad_key_is_provider_error(elevenlabs):
    tts = ElevenLabsTTS(elevenlabs.api_key, base_url=elevenlabs.url, max_retries=0)
    with pytest.raises(NotFoundError):
        run(collect(tts.synthesize("hi", TTSOptions(voice_id="nope"))))
    bad = ElevenLabsTTS("wrong", base_url=elevenlabs.url, max_retries=0)
    with pytest.raises(ProviderError) as info:
        run(collect(bad.synthesize("hi", TTSOptions(voice_id="21m00Tcm4TlvDq8ikWAM"))))
    assert info.value.upstream_status == 401
    assert info.value.details["reason"]["status"] == "invalid_api_key"
    elevenlabs.fail_next(429)
    with pytest.raises(ProviderError) as info:
        run(collect(tts.synthesize("hi", TTSOptions(voice_id="21m00Tcm4TlvDq8ikWAM"))))
    assert info.value.retryable and info.value.details["reason"]["status"] == "too_many_concurrent_requests"


def test_elevenlabs_clone_list_and_delete(elevenlabs):
    tts = ElevenLabsTTS(elevenlabs.api_key, base_url=elevenlabs.url, max_retries=0)
    sample = codecs.write_wav(PCM, 16000)
    info = run(tts.clone_voice("My voice", [("a.wav", sample), ("b.wav", sample)], description="me"))
    assert info.custom and info.voice_id in elevenlabs.voices
    assert elevenlabs.clone_samples[info.voice_id] == [("a.wav", len(sample)), ("b.wav", len(sample))]
    voices = run(tts.list_voices())
    by_id = {v.voice_id: v for v in voices}
    assert by_id[info.voice_id].custom and not by_id["21m00Tcm4TlvDq8ikWAM"].custom
    run(tts.delete_voice(info.voice_id))
    assert info.voice_id not in elevenlabs.voices
    with pytest.raises(ProviderError) as err:
        run(tts.delete_voice(info.voice_id))
    assert err.value.upstream_status == 404


# ------------------------------------------------------------------ Azure


def test_azure_ssml_output_formats_and_voices(azure):
    tts = AzureTTS(azure.api_key, base_url=azure.url)
    pcm = run(collect(tts.synthesize("Fish & chips <today>", TTSOptions(voice_id="en-US-JennyNeural", speed=1.2))))
    assert codecs.duration_seconds(pcm, 16000) > 0.3
    request = azure.requests[-1]
    assert request.headers["x-microsoft-outputformat"] == "raw-16khz-16bit-mono-pcm"
    assert request.headers["ocp-apim-subscription-key"] == "test-key"
    assert b"Fish &amp; chips &lt;today&gt;" in request.body and b"+20%" in request.body
    ulaw = run(collect(tts.synthesize("Hello", TTSOptions(voice_id="en-US-GuyNeural", output_format="ulaw_8000"))))
    assert azure.requests[-1].headers["x-microsoft-outputformat"] == "raw-8khz-8bit-mono-mulaw" and ulaw
    voices = run(tts.list_voices())
    assert {"en-US-JennyNeural", "en-GB-SoniaNeural"} <= {v.voice_id for v in voices}


def test_azure_errors(azure):
    tts = AzureTTS(azure.api_key, base_url=azure.url)
    with pytest.raises(NotFoundError):
        run(collect(tts.synthesize("hi", TTSOptions(voice_id="en-US-NobodyNeural"))))
    bad = AzureTTS("wrong", base_url=azure.url)
    with pytest.raises(ProviderError) as info:
        run(collect(bad.synthesize("hi", TTSOptions(voice_id="en-US-JennyNeural"))))
    assert info.value.upstream_status == 401
    azure.fail_next(429, headers={"retry-after": "1"})
    with pytest.raises(ProviderError) as info:
        run(tts.list_voices())
    assert info.value.upstream_status == 429 and info.value.retry_after == 1.0
