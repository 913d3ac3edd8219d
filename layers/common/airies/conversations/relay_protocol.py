"""A carrier's text relay (Twilio ConversationRelay, and Telnyx's compatible Conversation Relay) as wire format.

The carrier runs speech-to-text and text-to-speech and talks to our WebSocket in JSON whose ``type`` names each
message (so API Gateway routes it to ``$default``). From the carrier: ``setup`` (once, the call), ``prompt`` (what
the caller said; ``last: true`` ends the utterance), ``interrupt`` (the caller spoke over the agent: what was
heard of the reply, ``utteranceUntilInterrupt``, and for how long), ``dtmf`` (a key pressed), ``error``. To the
carrier: ``text`` tokens of the agent's reply (``last: true`` ends it) and ``end`` (with ``handoffData`` when the
call is handed over).

The live modules post protocol v1 frames; ``RelayPoster`` translates them for a relay connection: ``agent_text``
-> a ``text`` token, ``turn_end`` -> the reply's ``last: true``, ``ended`` -> ``end``, ``error`` as is; the rest
(transcripts, audio, ``ready``, ``interrupted``, ``pong``) means nothing to the relay and is not sent.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from airies.conversations import protocol as wp

TWILIO = "twilio"  # the relay URL's ``relay`` parameter and the live session's ``protocol``
RELAY_PROTOCOLS = frozenset({TWILIO})
TRANSFERRED = "transferred"  # the end reason of a call handed over by the agent's transfer_call
PHONE_METADATA_KEY = "phone"  # the conversation's metadata about its phone call
FIRST_MESSAGE_KEY = "first_message"  # in the phone metadata: an outbound call's own greeting


def relay_url(ws_url: str, conversation_id: str, token: str, protocol: str = TWILIO) -> str:
    """The WebSocket URL a carrier's relay connects to (and signs): the conversation and its token, as a web call
    has them, and ``relay`` naming the protocol."""
    return wp.connection_url(ws_url, conversation_id, token, relay=protocol)


class _Message(BaseModel):
    # The carrier adds fields over time: unknown ones are ignored, the ones we read are checked.
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class SetupMessage(_Message):
    type: Literal["setup"]
    session_id: str = Field("", alias="sessionId", max_length=100)
    call_sid: str = Field(alias="callSid", min_length=1, max_length=100)
    account_sid: str = Field("", alias="accountSid", max_length=100)
    from_: str = Field("", alias="from", max_length=300)
    to: str = Field("", max_length=300)
    direction: str = Field("", max_length=40)


class PromptMessage(_Message):
    type: Literal["prompt"]
    voice_prompt: str = Field(alias="voicePrompt", max_length=wp.MAX_TEXT_CHARS)
    lang: str = Field("", max_length=40)
    last: bool = True


class InterruptMessage(_Message):
    type: Literal["interrupt"]
    utterance_until_interrupt: str = Field("", alias="utteranceUntilInterrupt", max_length=20_000)
    duration_until_interrupt_ms: int | None = Field(None, alias="durationUntilInterruptMs", ge=0, le=7_200_000)


class DtmfMessage(_Message):
    type: Literal["dtmf"]
    digit: str = Field(pattern=r"^[0-9*#A-Da-dw]$")


class ErrorMessage(_Message):
    type: Literal["error"]
    description: str = Field("", max_length=2000)


RelayMessage = Annotated[
    SetupMessage | PromptMessage | InterruptMessage | DtmfMessage | ErrorMessage, Field(discriminator="type")
]
_relay_message = TypeAdapter(RelayMessage)
RELAY_TYPES = ("setup", "prompt", "interrupt", "dtmf", "error")


def parse_relay_message(body: str | bytes | None) -> RelayMessage:
    """Parse one message from the carrier or raise ``ProtocolError`` with a stable code (as protocol v1 does)."""
    message: RelayMessage = wp.parse_tagged_json(
        body,
        _relay_message,
        tag="type",
        allowed=RELAY_TYPES,
        noun="message",
        unknown_code="unknown_type",
        kind_label="relay message type",
    )
    return message


# --- server -> carrier ---------------------------------------------------------------------------------------------
def text_token(token: str, *, last: bool) -> dict[str, Any]:
    return {"type": "text", "token": token, "last": last}


def end(handoff: dict[str, Any] | None = None) -> dict[str, Any]:
    """``end``: the carrier closes the relay and requests the ``<Connect>`` action URL (with ``HandoffData``)."""
    if handoff is None:
        return {"type": "end"}
    return {"type": "end", "handoffData": json.dumps(handoff, separators=(",", ":"))}


def to_relay(frame: dict[str, Any]) -> dict[str, Any] | None:
    """The relay message for a protocol v1 frame (None: the relay has no use for it)."""
    kind = frame.get("type")
    if kind == "agent_text":
        return text_token(str(frame.get("delta") or ""), last=False) if frame.get("delta") else None
    if kind == "turn_end":
        return text_token("", last=True)
    if kind == "ended":
        transfer = frame.get("transfer")
        if isinstance(transfer, dict) and transfer.get("destination"):
            return end({"reason": TRANSFERRED, "conversation_id": frame.get("conversation_id"), **transfer})
        return end()
    if kind == "error":
        return frame
    return None


class _Poster(Protocol):
    def post(self, connection_id: str, data: bytes) -> bool: ...

    def close(self, connection_id: str) -> None: ...


class RelayPoster:
    """A poster to a relay connection: protocol v1 frames in, relay messages out (the rest is dropped, and counts
    as delivered: the connection is there)."""

    def __init__(self, inner: _Poster) -> None:
        self.inner = inner

    def post(self, connection_id: str, data: bytes) -> bool:
        """An encoded protocol v1 frame (a turn's frames come through ``post_message``, never encoded first)."""
        return self.post_message(connection_id, json.loads(data))

    def post_message(self, connection_id: str, frame: dict[str, Any]) -> bool:
        message = to_relay(frame)
        if message is None:
            return True
        return bool(self.inner.post(connection_id, wp.encode(message)))

    def close(self, connection_id: str) -> None:
        self.inner.close(connection_id)
