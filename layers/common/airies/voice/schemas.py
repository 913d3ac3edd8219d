"""Response shapes of the voices capability, read straight from the ``Voice`` row."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class VoiceOut(BaseModel):
    """One of the account's cloned voices (``airies.voice.models.Voice``)."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    voice_id: str
    provider: str
    name: str
    description: str | None = None
    language: str | None = None
    kind: str
    sample_count: int
    labels: dict[str, Any]
    created_at: datetime


class VoiceList(BaseModel):
    data: list[VoiceOut]
