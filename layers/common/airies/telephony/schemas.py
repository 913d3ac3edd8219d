"""Phone numbers and outbound calls: requests and responses."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from airies.core.schemas import Metadata, StrictModel
from airies.telephony.media_streams import TelephonyMode

E164 = Annotated[str, Field(pattern=r"^\+[1-9][0-9]{6,14}$", description="a phone number in E.164, e.g. +14155550100")]
# A callee: a phone number in E.164 or a SIP URI (a PBX behind a Twilio SIP domain or trunk).
Destination = Annotated[
    str,
    Field(
        min_length=3,
        max_length=300,
        pattern=r"^(\+[1-9][0-9]{6,14}|sips?:[^\s<>\"]+@[^\s<>\"]+)$",
        description="E.164 number or sip:user@host",
    ),
]
AgentId = Annotated[str, Field(min_length=1, max_length=40)]


class TwilioCredentialsIn(StrictModel):
    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    auth_token: str = Field(min_length=16, max_length=128, pattern=r"^\S+$")


class PhoneNumberCreate(StrictModel):
    """Import a number the business owns at Twilio. Without ``twilio`` credentials the number must belong to the
    platform's own Twilio account (an operator setting)."""

    phone_number: E164
    twilio: TwilioCredentialsIn | None = None
    agent_id: AgentId | None = None
    friendly_name: str | None = Field(None, min_length=1, max_length=100)
    telephony_mode: TelephonyMode = Field(
        "relay",
        description="relay: Twilio ConversationRelay (Twilio's STT and voice); media_stream: Twilio Media Streams "
        "through the media bridge (the agent's own STT and voice; needs AIRIES_MEDIA_BRIDGE_URL)",
    )


class PhoneNumberUpdate(StrictModel):
    """``agent_id``: the agent answering inbound calls (null: the number answers with a polite refusal)."""

    agent_id: AgentId | None = None
    friendly_name: str | None = Field(None, min_length=1, max_length=100)
    telephony_mode: TelephonyMode | None = None


class PhoneNumberOut(BaseModel):
    id: str
    phone_number: str
    carrier: str
    carrier_account_sid: str
    credentials: str  # own | platform (the auth token is never returned)
    agent_id: str | None
    friendly_name: str | None
    voice_url: str
    status_callback_url: str
    telephony_mode: str
    created_at: datetime
    updated_at: datetime


class CallCreate(StrictModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False, populate_by_name=True)

    agent_id: AgentId
    to: Destination
    from_: E164 = Field(alias="from", description="one of the account's imported numbers")
    metadata: Metadata = Field(default_factory=dict)
    first_message: str | None = Field(None, min_length=1, max_length=2000)
    machine_detection: bool = False


class CallOut(BaseModel):
    id: str
    conversation_id: str
    call_sid: str | None
    direction: str
    from_: str = Field(serialization_alias="from")
    to: str
    status: str
    duration_seconds: int | None
    answered_by: str | None
    created_at: datetime
    ended_at: datetime | None

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)
