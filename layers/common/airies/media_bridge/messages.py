"""Twilio Media Streams' wire format (bidirectional streams, ``<Connect><Stream>``).

From Twilio, one JSON text message each: ``connected``, ``start`` (``streamSid``, ``callSid``, the media format and
the TwiML ``<Parameter>``s as ``customParameters``), ``media`` (base64 8 kHz μ-law, 20 ms, track ``inbound``),
``mark`` (a mark we sent, echoed once the audio before it has played, or dropped by a ``clear``), ``dtmf`` (a key
pressed) and ``stop`` (the call or the stream ended). To Twilio: ``media`` (agent audio), ``mark`` and ``clear``
(drop the audio Twilio has buffered and not played yet).

A message the bridge cannot read raises :class:`BadMessage`; the call carries on without it.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

SAMPLE_RATE = 8000
FRAME_MS = 20
FRAME_BYTES = SAMPLE_RATE * FRAME_MS // 1000  # 160 bytes of μ-law: one byte a sample
ULAW_SILENCE = b"\xff"  # μ-law code of the zero sample
ENCODING = "audio/x-mulaw"
MAX_MESSAGE_BYTES = 64 * 1024  # Twilio's messages are under 1 KB; the agent's never reach it
EVENTS = ("connected", "start", "media", "mark", "dtmf", "stop")


class BadMessage(ValueError):
    """A message from Twilio that is not one the bridge can act on."""


@dataclass(frozen=True)
class Connected:
    protocol: str


@dataclass(frozen=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Media:
    payload: bytes  # μ-law 8 kHz
    track: str


@dataclass(frozen=True)
class Mark:
    name: str


@dataclass(frozen=True)
class Dtmf:
    digit: str


@dataclass(frozen=True)
class Stop:
    call_sid: str


Message = Connected | Start | Media | Mark | Dtmf | Stop


def _object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadMessage(f"{name} must be an object")
    return value


def _text(body: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise BadMessage(f"{name} must be a non-empty string")
    return value


def parse(raw: str | bytes) -> Message:
    """One message from Twilio, or :class:`BadMessage` saying what is wrong with it."""
    if isinstance(raw, bytes):
        raise BadMessage("binary message: Twilio sends JSON text")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise BadMessage(f"message over {MAX_MESSAGE_BYTES} bytes")
    try:
        body = _object(json.loads(raw), "message")
    except ValueError as exc:
        raise BadMessage("not JSON") from exc
    event = body.get("event")
    if event == "media":
        media = _object(body.get("media"), "media")
        try:
            payload = base64.b64decode(_text(media, "payload"), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadMessage("media.payload is not base64") from exc
        return Media(payload=payload, track=_text(media, "track", required=False) or "inbound")
    if event == "mark":
        return Mark(name=_text(_object(body.get("mark"), "mark"), "name"))
    if event == "start":
        start = _object(body.get("start"), "start")
        media_format = start.get("mediaFormat")
        if isinstance(media_format, dict) and media_format.get("encoding", ENCODING) != ENCODING:
            raise BadMessage(f"unsupported encoding {media_format.get('encoding')!r} (expected {ENCODING})")
        parameters = start.get("customParameters") or {}
        if not isinstance(parameters, dict) or not all(isinstance(v, str) for v in parameters.values()):
            raise BadMessage("start.customParameters must map names to strings")
        return Start(
            stream_sid=_text(start, "streamSid") if "streamSid" in start else _text(body, "streamSid"),
            call_sid=_text(start, "callSid"),
            account_sid=_text(start, "accountSid", required=False),
            parameters=dict(parameters),
        )
    if event == "dtmf":
        digit = _text(_object(body.get("dtmf"), "dtmf"), "digit")
        if len(digit) != 1 or digit not in "0123456789*#ABCDabcd":
            raise BadMessage(f"unknown DTMF digit {digit!r}")
        return Dtmf(digit=digit)
    if event == "stop":
        stop = body.get("stop")
        return Stop(call_sid=_text(stop, "callSid", required=False) if isinstance(stop, dict) else "")
    if event == "connected":
        return Connected(protocol=str(body.get("protocol", "")))
    raise BadMessage(f"unknown event {event!r} (expected one of {', '.join(EVENTS)})")


def media(stream_sid: str, ulaw: bytes) -> str:
    payload = base64.b64encode(ulaw).decode()
    return json.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})


def mark(stream_sid: str, name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear(stream_sid: str) -> str:
    return json.dumps({"event": "clear", "streamSid": stream_sid})
