"""Request/response models of the conversations REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from airies.core.money import UsdAmount
from airies.core.schemas import Metadata, StrictModel, Version


class CallerInfo(StrictModel):
    name: str | None = Field(None, max_length=200)
    phone: str | None = Field(None, max_length=40, pattern=r"^\+?[0-9 ()\-]{3,40}$")
    email: str | None = Field(None, max_length=320)
    external_id: str | None = Field(None, max_length=200)


class ConversationCreate(StrictModel):
    agent_id: str = Field(min_length=1, max_length=40)
    # Pin a published version; None runs the agent's current published version.
    agent_version: Version | None = None
    caller: CallerInfo = Field(default_factory=CallerInfo)
    channel: Literal["websocket", "http"] = "websocket"
    metadata: Metadata = Field(default_factory=dict)


class ConversationUpdate(StrictModel):
    # The merged result (stored metadata + this update) is checked against the same limit by the service.
    metadata: Metadata | None = None
    caller: CallerInfo | None = None
    status: Literal["ended"] | None = None  # PUT {"status": "ended"} hangs up


class MessageIn(StrictModel):
    text: str = Field(min_length=1, max_length=4000)
    with_audio: bool = False


class TurnOut(BaseModel):
    id: str
    seq: int
    input_mode: str
    user_text: str | None
    agent_text: str
    interrupted: bool
    status: str
    latency: dict[str, Any]
    usage: dict[str, Any]
    cost: dict[str, UsdAmount]  # stt, llm, tts, total
    cost_usd: UsdAmount
    recording: dict[str, Any]
    # The turn's tool calls: {id, name, arguments, result (capped), status, duration_ms, http_status?, error?}
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    started_at: datetime
    ended_at: datetime


class TurnAudioOut(BaseModel):
    encoding: Literal["pcm_s16le"]
    sample_rate: int
    data: str  # base64


class TurnResponse(BaseModel):
    """The answer of an HTTP turn (``/message``, ``/audio``)."""

    turn: TurnOut
    transcript: str | None
    reply: str
    end_call: bool  # the call ended with this turn
    # why it ended: caller_end_call_phrase, assistant_end_call_phrase, end_call_tool, transferred
    end_reason: str | None
    audio: TurnAudioOut | None


class ConversationOut(BaseModel):
    id: str
    agent_id: str | None
    agent_version: int
    status: str
    channel: str
    caller: dict[str, Any]
    metadata: dict[str, Any]
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    duration_seconds: float
    turn_count: int
    interruption_count: int
    usage: dict[str, Any]
    cost_usd: UsdAmount
    recording_enabled: bool
    created_at: datetime


class ConversationStarted(ConversationOut):
    ws_url: str
    token: str
    token_expires_at: datetime
    protocol_version: int


class ConversationDetail(ConversationOut):
    turns: list[TurnOut]
    # The post-call analysis: pending | completed | failed | skipped (None: none runs for this conversation), and
    # its result (summary, structured_data, success_evaluation, steps, cost_usd, ...; see docs/analysis.md).
    analysis_status: str | None = None
    analysis: dict[str, Any] | None = None
