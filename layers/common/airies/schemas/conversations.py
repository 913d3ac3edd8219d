"""Request/response models of the conversations REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from airies.schemas.common import StrictModel

METADATA_MAX_KEYS = 50
METADATA_MAX_BYTES = 16_384


def check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """The one size limit of a conversation's metadata: on create, and on the merged result of an update."""
    import json

    if len(value) > METADATA_MAX_KEYS or len(json.dumps(value, default=str)) > METADATA_MAX_BYTES:
        raise ValueError(
            f"metadata may hold at most {METADATA_MAX_KEYS} keys and {METADATA_MAX_BYTES // 1024} KiB as JSON"
        )
    return value


class CallerInfo(StrictModel):
    name: str | None = Field(None, max_length=200)
    phone: str | None = Field(None, max_length=40, pattern=r"^\+?[0-9 ()\-]{3,40}$")
    email: str | None = Field(None, max_length=320)
    external_id: str | None = Field(None, max_length=200)


class ConversationCreate(StrictModel):
    agent_id: str = Field(min_length=1, max_length=40)
    # Pin a published version; None runs the agent's current published version.
    agent_version: int | None = Field(None, ge=1)
    caller: CallerInfo = Field(default_factory=CallerInfo)
    channel: Literal["websocket", "http"] = "websocket"
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _small(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_metadata(value)


class ConversationUpdate(StrictModel):
    metadata: dict[str, Any] | None = None
    caller: CallerInfo | None = None
    status: Literal["ended"] | None = None  # PUT {"status": "ended"} hangs up

    @field_validator("metadata")
    @classmethod
    def _small(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # The merged result (stored metadata + this update) is checked against the same limit by the service.
        return check_metadata(value) if value is not None else value


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
    cost: dict[str, Any]
    cost_usd: float
    recording: dict[str, Any]
    started_at: datetime
    ended_at: datetime


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
    cost_usd: float
    recording_enabled: bool
    created_at: datetime


class ConversationStarted(ConversationOut):
    ws_url: str
    token: str
    token_expires_at: datetime
    protocol_version: int


class ConversationDetail(ConversationOut):
    turns: list[TurnOut]
