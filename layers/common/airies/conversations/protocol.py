"""The real-time voice protocol, version 1 (documented in docs/protocol.md).

Every frame is one JSON object. The client names what it wants in ``action`` (API Gateway routes on
``$request.body.action``); the server answers with frames whose ``type`` says what they carry.

Audio is PCM16 little-endian, 16 kHz, mono, base64, 100–250 ms per frame (3,200–8,000 bytes, ≤ 10,668
base64 characters), so a frame always fits API Gateway's 32 KB unit: a Lambda per 20 ms frame would be
slow and costly. Frames under ``MIN_CHUNK_MS`` (80 ms) are refused (``audio_too_small``), except the last chunk
of an utterance when it carries ``end_of_utterance: true`` (it then also ends the utterance).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from airies.core.limits import AGENT_FRAME_MAX_MS

PROTOCOL_VERSION = 1
SAMPLE_RATE = 16_000
BYTES_PER_MS = SAMPLE_RATE * 2 // 1000  # 32 bytes of PCM16 per millisecond
MAX_CHUNK_MS = 250
MAX_CHUNK_BYTES = MAX_CHUNK_MS * BYTES_PER_MS  # 8,000
# Smaller frames would mean one Lambda invocation (and one WebSocket message) per 20-40 ms of audio. A little
# under the documented 100 ms so clients that cut 100 ms frames with a rounding error are not refused.
MIN_CHUNK_MS = 80
MIN_CHUNK_BYTES = MIN_CHUNK_MS * BYTES_PER_MS  # 2,560
MAX_FRAME_BYTES = 32 * 1024  # API Gateway WebSocket frame (and the unit its messages are metered in)
MAX_MESSAGE_BYTES = 128 * 1024  # API Gateway WebSocket message: up to four frames, reassembled by the client
MAX_TEXT_CHARS = 4000
# The agent's audio frames: at most one API Gateway message each (the turn runner decides how large each one is).
MAX_OUT_CHUNK_MS = AGENT_FRAME_MAX_MS


class ProtocolError(Exception):
    """A frame the server cannot accept; becomes an ``error`` frame, the conversation stays as it was."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class StartFrame(_Frame):
    """Sent once the socket is open: the server answers ``ready`` and, per the agent, its first message."""

    action: Literal["start"]


class AudioFrame(_Frame):
    action: Literal["audio"]
    data: str = Field(max_length=MAX_FRAME_BYTES)
    seq: int | None = Field(None, ge=0, le=999_999_999)
    # The utterance's last chunk may carry the end of utterance itself; only such a chunk may be short.
    end_of_utterance: bool = False

    def pcm(self) -> bytes:
        try:
            raw = base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError("bad_audio", "audio data is not valid base64") from exc
        if not raw:
            raise ProtocolError("bad_audio", "audio chunk is empty")
        if len(raw) % 2:
            raise ProtocolError("bad_audio", "PCM16 audio must have an even number of bytes")
        if len(raw) > MAX_CHUNK_BYTES:
            raise ProtocolError(
                "audio_too_large",
                f"audio chunks must be at most {MAX_CHUNK_MS} ms ({MAX_CHUNK_BYTES} bytes of PCM16 16 kHz mono)",
                {"bytes": len(raw), "max_bytes": MAX_CHUNK_BYTES},
            )
        if len(raw) < MIN_CHUNK_BYTES and not self.end_of_utterance:
            raise ProtocolError(
                "audio_too_small",
                f"audio chunks must be at least {MIN_CHUNK_MS} ms ({MIN_CHUNK_BYTES} bytes of PCM16 16 kHz mono); "
                "send 100-250 ms per frame (a shorter last chunk must carry end_of_utterance: true)",
                {"bytes": len(raw), "min_bytes": MIN_CHUNK_BYTES},
            )
        return raw


class EndOfUtteranceFrame(_Frame):
    action: Literal["end_of_utterance"]
    # The seq of the utterance's last audio frame: frames run concurrently, so the server waits for all of them.
    last_seq: int | None = Field(None, ge=0, le=999_999_999)


class TextFrame(_Frame):
    action: Literal["text"]
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)


class InterruptFrame(_Frame):
    action: Literal["interrupt"]
    # The turn the client was playing (``turn_id`` of its frames): the one being posted, or the last one after its
    # ``turn_end`` until the next turn starts. Without it: the current (or last) turn.
    turn_id: str | None = Field(None, min_length=1, max_length=64)
    # How much of that turn's audio the client actually played: history keeps only what was heard.
    played_ms: int | None = Field(None, ge=0, le=3_600_000)


class EndFrame(_Frame):
    action: Literal["end"]


class PingFrame(_Frame):
    action: Literal["ping"]


ClientFrame = Annotated[
    StartFrame | AudioFrame | EndOfUtteranceFrame | TextFrame | InterruptFrame | EndFrame | PingFrame,
    Field(discriminator="action"),
]
_client_frame = TypeAdapter(ClientFrame)
CLIENT_ACTIONS = ("start", "audio", "end_of_utterance", "text", "interrupt", "end", "ping")


def parse_client_frame(body: str | bytes | None) -> ClientFrame:
    """Parse one client frame or raise ProtocolError with a stable code."""
    frame: ClientFrame = parse_tagged_json(
        body,
        _client_frame,
        tag="action",
        allowed=CLIENT_ACTIONS,
        noun="frame",
        unknown_code="unknown_action",
        kind_label="action",
    )
    return frame


def parse_tagged_json(
    body: str | bytes | None,
    adapter: TypeAdapter[Any],
    *,
    tag: str,
    allowed: tuple[str, ...],
    noun: str,
    unknown_code: str,
    kind_label: str,
) -> Any:
    """One JSON object whose ``tag`` field names its kind, validated by ``adapter``; every way it can be wrong is a
    ``ProtocolError`` with a stable code (the client protocol's frames, a carrier relay's messages)."""
    if body is None or body == "" or body == b"":
        raise ProtocolError("malformed_json", f"empty {noun}")
    if len(body) > MAX_FRAME_BYTES:
        raise ProtocolError("frame_too_large", f"{noun}s must be at most {MAX_FRAME_BYTES} bytes")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("malformed_json", f"{noun} is not valid JSON") from exc
    if not isinstance(payload, dict):
        raise ProtocolError("malformed_json", f"{noun} must be a JSON object")
    kind = payload.get(tag)
    if kind not in allowed:
        raise ProtocolError(unknown_code, f"unknown {kind_label} {kind!r}", {"allowed": list(allowed)})
    try:
        return adapter.validate_python(payload)
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"][1:]) or noun, "code": e["type"], "message": e["msg"]}
            for e in exc.errors()
        ]
        raise ProtocolError(f"invalid_{noun}", f"invalid '{kind}' {noun}", problems) from exc


def connection_url(ws_url: str, conversation_id: str, token: str, **extra: str) -> str:
    """The WebSocket URL a call connects to: the conversation and its token (``extra``: e.g. a relay's ``relay``)."""
    query = urlencode({"conversation_id": conversation_id, "token": token, **extra})
    return f"{ws_url}{'&' if '?' in ws_url else '?'}{query}"


def dtmf_text(digit: str) -> str:
    """How a key the caller pressed on a phone reaches the agent: a caller turn with this text (relay and media
    stream calls alike)."""
    return f"(the caller pressed {digit} on the keypad)"


# --- server -> client ------------------------------------------------------------------------------------------
def frame(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "v": PROTOCOL_VERSION, **fields}


def ready(conversation_id: str, *, agent_id: str | None, agent_version: int, resumed: bool = False) -> dict[str, Any]:
    return frame(
        "ready",
        conversation_id=conversation_id,
        agent_id=agent_id,
        agent_version=agent_version,
        resumed=resumed,
        audio={
            "encoding": "pcm_s16le",
            "sample_rate": SAMPLE_RATE,
            "channels": 1,
            "min_chunk_ms": MIN_CHUNK_MS,
            "max_chunk_ms": MAX_CHUNK_MS,
        },
    )


def transcript(turn_id: str, text: str, *, final: bool = True) -> dict[str, Any]:
    return frame("transcript", turn_id=turn_id, role="user", text=text, final=final)


def agent_text(turn_id: str, delta: str) -> dict[str, Any]:
    return frame("agent_text", turn_id=turn_id, delta=delta)


def audio(turn_id: str, seq: int, pcm: bytes) -> dict[str, Any]:
    return frame(
        "audio",
        turn_id=turn_id,
        seq=seq,
        encoding="pcm_s16le",
        sample_rate=SAMPLE_RATE,
        data=base64.b64encode(pcm).decode("ascii"),
    )


def turn_end(turn_id: str, **fields: Any) -> dict[str, Any]:
    return frame("turn_end", turn_id=turn_id, **fields)


def interrupted(turn_id: str, heard_text: str) -> dict[str, Any]:
    return frame("interrupted", turn_id=turn_id, heard_text=heard_text)


def error(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return frame("error", code=code, message=message, details=details)


def ended(reason: str, **fields: Any) -> dict[str, Any]:
    return frame("ended", reason=reason, **fields)


def pong() -> dict[str, Any]:
    return frame("pong")


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode()
