from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, field_validator

from airies.core.schemas import StrictModel

EventType = Literal["conversation.started", "conversation.ended", "turn.completed", "transcript.updated", "tool.called"]
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)
# Sent by POST /webhooks/test whatever the endpoint subscribes to.
TEST_EVENT = "webhook.test"
DeliveryStatus = Literal["pending", "delivered", "failed"]


class EndpointPut(StrictModel):
    url: str = Field(min_length=1, max_length=2048, description="https URL that receives the events (POST, JSON)")
    events: list[EventType] = Field(
        default_factory=lambda: list(EVENT_TYPES), min_length=1, description="the event types wanted"
    )
    enabled: bool = Field(True, description="false pauses delivery; true re-enables an endpoint a 410 disabled")

    @field_validator("events")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class EndpointOut(BaseModel):
    id: str
    agent_id: str | None
    url: str
    events: list[str]
    enabled: bool
    disabled_reason: str | None
    masked_secret: str
    # The signing secret in full: only in the answer that creates the endpoint or rotates its secret.
    secret: str | None = None
    created_at: datetime
    updated_at: datetime


class TestEventRequest(StrictModel):
    agent_id: str | None = Field(
        None, max_length=40, description="the agent whose endpoint to test (default: the account's)"
    )


class DeliveryOut(BaseModel):
    id: str = Field(description="the event id (evt_...), also sent as Airies-Event-Id")
    event_type: str
    agent_id: str | None
    endpoint_id: str | None
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_latency_ms: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime
    updated_at: datetime


class DeliveryDetail(DeliveryOut):
    payload: dict[str, Any] = Field(description="the JSON body the receiver gets")


class DeliveryMessage(BaseModel):
    """One message of the delivery queue: make attempt ``attempt`` of ``delivery_id`` (not before ``not_before``)."""

    delivery_id: str
    attempt: int = Field(ge=1)
    client_errors: int = Field(0, ge=0)
    not_before: float | None = None  # unix seconds: a backoff longer than one SQS delay hop
