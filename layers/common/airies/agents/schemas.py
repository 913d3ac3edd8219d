"""The agents API's request and response bodies (the config they carry is ``airies.agents.config``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from airies.agents.config import (
    AgentConfig,
    AgentType,
    FirstMessageMode,
    MaxDurationSeconds,
    SilenceTimeoutSeconds,
)
from airies.core.schemas import Metadata, StrictModel


class AgentCreate(AgentConfig):
    pass


class AgentUpdate(StrictModel):
    """Partial update: only the fields sent change; nested objects merge field by field."""

    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    agent_type: AgentType | None = None
    system_prompt: str | None = Field(None, min_length=1, max_length=200_000)
    first_message: str | None = Field(None, max_length=2000)
    first_message_mode: FirstMessageMode | None = None
    llm: dict[str, Any] | None = None
    voice: dict[str, Any] | None = None
    transcriber: dict[str, Any] | None = None
    knowledge_base_ids: list[str] | None = None
    end_call_phrases: list[str] | None = None
    end_call_message: str | None = None
    max_duration_seconds: MaxDurationSeconds | None = None
    silence_timeout_seconds: SilenceTimeoutSeconds | None = None
    silence_reminder_message: str | None = None
    interruption: dict[str, Any] | None = None
    endpointing: dict[str, Any] | None = None
    recording_enabled: bool | None = None
    analysis: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None  # replaces the whole list
    builtin_tools: dict[str, Any] | None = None
    metadata: Metadata | None = None


class AgentOut(BaseModel):
    id: str
    name: str
    description: str | None
    agent_type: str
    status: Literal["draft", "deployed"]
    current_version: int | None
    has_undeployed_changes: bool
    config: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    # Problems of severity "warning" in the config now (a provider without a key: another engine answers).
    warnings: list[dict[str, Any]] = Field(default_factory=list)


class AgentVersionOut(BaseModel):
    agent_id: str
    version: int
    config: dict[str, Any]
    created_at: datetime
    warnings: list[dict[str, Any]] = Field(default_factory=list)


class AgentTemplate(BaseModel):
    id: str
    name: str
    description: str
    config: dict[str, Any]


class ValidationResult(BaseModel):
    """``problems``: ``{field, code, message, severity}``; ``severity`` is ``error`` (the config is refused) or
    ``warning`` (it works, but not as configured: e.g. a provider without a key, so another engine answers).
    ``valid`` is true when there is no error."""

    valid: bool
    problems: list[dict[str, Any]]


class AgentTestTurn(StrictModel):
    user: str = Field(min_length=1, max_length=4000)
    expect_contains: list[str] = Field(default_factory=list)
    expect_not_contains: list[str] = Field(default_factory=list)
    expect_regex: str | None = None
    expect_tool_called: str | None = None
    # With expect_tool_called: the call's arguments must hold these keys with these values (other keys may differ).
    expect_tool_arguments: dict[str, Any] | None = None
    expect_end_call: bool | None = None
    # Canned results for this turn's tool calls (tool name -> result), over the test's own: no server is called.
    tool_results: dict[str, Any] = Field(default_factory=dict, max_length=20)


class AgentTestRequest(StrictModel):
    message: str | None = Field(None, min_length=1, max_length=4000)
    turns: list[AgentTestTurn] = Field(default_factory=list, max_length=50)
    use_draft: bool = True
    # Canned results for the agent's custom tools (tool name -> result, any JSON): the tool's server is not called,
    # so a business can test its agent without its server. A tool without one is called on its server.
    tool_results: dict[str, Any] = Field(default_factory=dict, max_length=20)
