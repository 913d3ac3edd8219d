"""Publishable keys (the widget's credential): requests and responses."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator

from airies.core.schemas import StrictModel

DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_origin(value: str) -> str:
    """``https://Shop.Example.com:443/`` -> ``https://shop.example.com``: scheme, host and a non-default port only,
    the form browsers send in ``Origin``. Raises ValueError for anything else (paths, wildcards, credentials)."""
    text = value.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a web origin") from exc
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or "*" in text:
        raise ValueError(f"{value!r} is not a web origin: use scheme://host[:port], e.g. https://www.example.com")
    if parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ValueError(f"{value!r} is not a web origin: no path, query or credentials")
    host = parts.hostname.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    suffix = f":{port}" if port is not None and port != DEFAULT_PORTS[parts.scheme] else ""
    return f"{parts.scheme}://{host}{suffix}"


class PublishableKeyCreate(StrictModel):
    name: str = Field("widget", min_length=1, max_length=100)
    agent_ids: list[str] = Field(min_length=1, max_length=20)
    allowed_origins: list[str] = Field(min_length=1, max_length=20)
    visitor_conversations_per_hour: int = Field(10, ge=1, le=1000)

    @field_validator("agent_ids")
    @classmethod
    def _agents(cls, value: list[str]) -> list[str]:
        cleaned = [item.strip() for item in value]
        if any(not item or len(item) > 40 for item in cleaned):
            raise ValueError("agent ids must be 1-40 characters")
        return list(dict.fromkeys(cleaned))

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        if any(len(item) > 300 for item in value):
            raise ValueError("an origin may be at most 300 characters")
        return list(dict.fromkeys(normalise_origin(item) for item in value))


class PublishableKeyOut(BaseModel):
    id: str
    name: str
    key: str  # publishable: made to be put in a web page
    agent_ids: list[str]
    allowed_origins: list[str]
    visitor_conversations_per_hour: int
    active: bool
    created_at: datetime
    revoked_at: datetime | None


class WidgetConversationCreate(StrictModel):
    agent_id: str = Field(min_length=1, max_length=40)


class WidgetConversationStarted(BaseModel):
    """Only what the visitor's browser needs to talk: nothing of the account is readable with a publishable key."""

    conversation_id: str
    ws_url: str
    token: str
    token_expires_at: datetime
    protocol_version: int
