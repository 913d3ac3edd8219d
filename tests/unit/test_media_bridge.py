"""The media bridge's per-call logic without sockets: Twilio's messages parsed (and refused) as documented, caller
frames collected into protocol chunks, agent audio cut into 20 ms μ-law frames with marks, played_ms from mark
echoes, barge-in, and the end of the call. Settings from the environment."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest
import webrtcvad

from airies.conversations import protocol as wp
from airies.media_bridge import messages as tm
from airies.media_bridge.call import END_MARK, MediaCall
from airies.media_bridge.config import BridgeConfig, ConfigError
from airies.voice.audio.codecs import array_to_pcm16, pcm16_to_ulaw

CONFIG = BridgeConfig(api_ws_url="wss://api.example.test/prod")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def new_call(**parameters: str) -> tuple[MediaCall, Clock]:
    clock = Clock()
    call = MediaCall(CONFIG, vad=webrtcvad.Vad(2), clock=clock)
    url = call.start(tm.Start("MZ1", "CA1", "AC1", {"conversation_id": "conv_1", "token": "t.k", **parameters}))
    assert url == "wss://api.example.test/prod?conversation_id=conv_1&token=t.k"
    return call, clock


def tone_ulaw(ms: int, amplitude: float = 8000.0) -> bytes:
    """A voiced-looking 8 kHz signal (a vowel-like mix of harmonics), as μ-law."""
    t = np.arange(8 * ms) / 8000
    wave = sum(np.sin(2 * np.pi * f * t) / (i + 1) for i, f in enumerate((150, 300, 450, 600, 900, 1200)))
    return pcm16_to_ulaw(array_to_pcm16(amplitude * wave / 2))


def agent_frame(turn_id: str, ms: int) -> dict[str, Any]:
    pcm = array_to_pcm16(np.full(16 * ms, 1000, dtype=np.int16))
    return {"type": "audio", "turn_id": turn_id, "seq": 0, "data": base64.b64encode(pcm).decode()}


def events(messages: list[str]) -> list[dict[str, Any]]:
    return [json.loads(m) for m in messages]


# -- Twilio's messages ------------------------------------------------------------------------------------------------
def test_twilio_messages_parse_as_documented() -> None:
    start = tm.parse(
        json.dumps(
            {
                "event": "start",
                "sequenceNumber": "1",
                "start": {
                    "accountSid": "AC1",
                    "streamSid": "MZ1",
                    "callSid": "CA1",
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": {"conversation_id": "conv_1", "token": "tok"},
                },
                "streamSid": "MZ1",
            }
        )
    )
    assert start == tm.Start("MZ1", "CA1", "AC1", {"conversation_id": "conv_1", "token": "tok"})
    media = tm.parse(json.dumps({"event": "media", "media": {"track": "inbound", "payload": "/w=="}}))
    assert media == tm.Media(b"\xff", "inbound")
    assert tm.parse(json.dumps({"event": "mark", "mark": {"name": "x:20"}})) == tm.Mark("x:20")
    assert tm.parse(json.dumps({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": "#"}})) == tm.Dtmf("#")
    assert tm.parse(json.dumps({"event": "stop", "stop": {"callSid": "CA1"}})) == tm.Stop("CA1")
    assert isinstance(tm.parse(json.dumps({"event": "connected", "protocol": "Call"})), tm.Connected)


@pytest.mark.parametrize(
    "raw",
    [
        b"binary",
        "not json",
        "[]",
        json.dumps({"event": "other"}),
        json.dumps({"event": "media"}),
        json.dumps({"event": "media", "media": {"payload": "%%%"}}),
        json.dumps({"event": "mark", "mark": {"name": ""}}),
        json.dumps({"event": "dtmf", "dtmf": {"digit": "12"}}),
        json.dumps({"event": "start", "start": {"streamSid": "MZ", "callSid": "CA", "customParameters": [1]}}),
        json.dumps(
            {"event": "start", "start": {"streamSid": "MZ", "callSid": "CA", "mediaFormat": {"encoding": "audio/l16"}}}
        ),
        "x" * (tm.MAX_MESSAGE_BYTES + 1),
    ],
)
def test_bad_messages_are_refused_with_a_reason(raw: str | bytes) -> None:
    with pytest.raises(tm.BadMessage):
        tm.parse(raw)


def test_a_stream_without_its_conversation_is_refused() -> None:
    call = MediaCall(CONFIG, vad=webrtcvad.Vad(2), clock=Clock())
    with pytest.raises(tm.BadMessage, match="conversation_id"):
        call.start(tm.Start("MZ1", "CA1", "AC1", {"token": "t"}))


# -- caller audio -----------------------------------------------------------------------------------------------------
def test_ten_caller_frames_make_one_200_ms_protocol_chunk() -> None:
    call, _ = new_call()
    frames = [call.caller_audio(b"\xff" * tm.FRAME_BYTES) for _ in range(25)]
    chunks = [frame for out in frames for frame in out.api]
    assert len(chunks) == 2 and [c["seq"] for c in chunks] == [0, 1]
    for chunk in chunks:
        parsed = wp.parse_client_frame(json.dumps(chunk))  # the server's own parser accepts it
        assert isinstance(parsed, wp.AudioFrame) and len(parsed.pcm()) == 200 * wp.BYTES_PER_MS


# -- agent audio ------------------------------------------------------------------------------------------------------
def test_agent_audio_becomes_20_ms_mulaw_frames_with_marks_and_played_ms_follows_the_echoes() -> None:
    call, _ = new_call()
    out = call.from_api(agent_frame("turn_a", 250))
    sent = events(out.twilio)
    media = [m for m in sent if m["event"] == "media"]
    assert len(media) == 12  # 240 ms of whole frames; 10 ms wait for the next frame or the turn's end
    assert all(len(base64.b64decode(m["media"]["payload"])) == tm.FRAME_BYTES for m in media)
    assert all(m["streamSid"] == "MZ1" for m in sent)
    assert [m["mark"]["name"] for m in sent if m["event"] == "mark"] == ["turn_a:100", "turn_a:200"]
    end = events(call.from_api({"type": "turn_end", "turn_id": "turn_a", "seq": 1}).twilio)
    assert [m["event"] for m in end] == ["media", "mark"] and end[-1]["mark"]["name"] == "turn_a:260"
    assert call.playing() and call.unplayed_ms() == 260
    call.from_twilio(tm.Mark("turn_a:200"))
    assert call.playback is not None and call.playback.played_ms == 200
    call.from_twilio(tm.Mark("turn_a:260"))
    assert not call.playing()


def test_caller_speech_over_playing_audio_clears_twilio_and_interrupts_with_what_was_heard() -> None:
    call, clock = new_call(barge_in_ms="200", backoff_ms="500")
    call.from_api(agent_frame("turn_a", 250))
    call.from_api(agent_frame("turn_a", 250))
    call.from_twilio(tm.Mark("turn_a:100"))
    speech = tone_ulaw(400)
    # within the backoff: no barge-in
    early = [call.caller_audio(speech[i : i + 160]) for i in range(0, len(speech), 160)]
    assert not any(out.twilio for out in early)
    clock.now += 1.0
    call.from_twilio(tm.Mark("turn_a:300"))
    outs = [call.caller_audio(speech[i : i + 160]) for i in range(0, len(speech), 160)]
    (clear,) = [m for out in outs for m in events(out.twilio)]
    assert clear == {"event": "clear", "streamSid": "MZ1"}
    interrupts = [f for out in outs for f in out.api if f["action"] == "interrupt"]
    assert interrupts == [{"action": "interrupt", "turn_id": "turn_a", "played_ms": 300}]
    # Twilio echoes the dropped marks: they change nothing; the rest of the turn is not played
    call.from_twilio(tm.Mark("turn_a:400"))
    assert call.playback is not None and call.playback.played_ms == 300 and not call.playing()
    assert call.from_api(agent_frame("turn_a", 200)).twilio == []


def test_an_agent_that_cannot_be_interrupted_is_not() -> None:
    call, clock = new_call(barge_in_ms="0", backoff_ms="0")
    call.from_api(agent_frame("turn_a", 250))
    clock.now += 5
    speech = tone_ulaw(1000)
    outs = [call.caller_audio(speech[i : i + 160]) for i in range(0, len(speech), 160)]
    assert not any(out.twilio for out in outs)
    assert all(f["action"] == "audio" for out in outs for f in out.api)


def test_a_server_barge_in_clears_twilio_once() -> None:
    call, _ = new_call()
    call.from_api(agent_frame("turn_a", 200))
    assert events(call.from_api({"type": "interrupted", "turn_id": "turn_a", "heard_text": ""}).twilio) == [
        {"event": "clear", "streamSid": "MZ1"}
    ]
    assert call.from_api({"type": "interrupted", "turn_id": "turn_a", "heard_text": ""}).twilio == []


def test_dtmf_is_a_typed_turn_and_either_side_ends_the_call() -> None:
    call, _ = new_call()
    (text,) = call.from_twilio(tm.Dtmf("7")).api
    assert wp.parse_client_frame(json.dumps(text)) == wp.TextFrame(
        action="text", text="(the caller pressed 7 on the keypad)"
    )
    call.from_api(agent_frame("turn_a", 90))
    ended = call.from_api({"type": "ended", "reason": "assistant_end_call_phrase"})
    assert [m.get("mark", {}).get("name") for m in events(ended.twilio) if m["event"] == "mark"] == [
        "turn_a:100",
        END_MARK,
    ]
    assert call.from_twilio(tm.Mark(END_MARK)).ended
    assert call.from_twilio(tm.Stop("CA1")).api == []  # ``ended`` came first: nothing to end

    other, _ = new_call()
    stop = other.from_twilio(tm.Stop("CA1"))
    assert stop.ended and stop.api == [{"action": "end"}]


# -- settings ---------------------------------------------------------------------------------------------------------
def test_settings_come_from_the_environment_and_bad_ones_stop_the_bridge() -> None:
    config = BridgeConfig.from_env({"AIRIES_BRIDGE_API_WS_URL": "ws://127.0.0.1:8000/ws", "AIRIES_BRIDGE_PORT": "9000"})
    assert (config.port, config.chunk_ms, config.path) == (9000, 200, "/twilio")
    for env in (
        {},
        {"AIRIES_BRIDGE_API_WS_URL": "https://not-a-socket"},
        {"AIRIES_BRIDGE_API_WS_URL": "ws://x", "AIRIES_BRIDGE_PORT": "eighty"},
        {"AIRIES_BRIDGE_API_WS_URL": "ws://x", "AIRIES_BRIDGE_CHUNK_MS": "30"},
    ):
        with pytest.raises(ConfigError):
            BridgeConfig.from_env(env)
