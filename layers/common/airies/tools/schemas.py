"""An agent's tools in its config: custom functions on the business's server, and the built-ins.

Structural rules live here (names, sizes, a valid JSON Schema of parameters, the timeout's bounds); the URL guard
(DNS included) runs when the agent is saved (``airies.agents.service.AgentValidator``) and again on every call.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from airies.core.json_schemas import check_object_schema
from airies.core.schemas import StrictModel

# Names the platform answers itself: a custom tool cannot take them.
BUILTIN_TOOL_NAMES = ("end_call", "transfer_call", "query_knowledge_base")
TOOL_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
MIN_TIMEOUT_MS = 100
MAX_TIMEOUT_MS = 30_000
MAX_TOOLS = 20
MAX_HEADERS = 20
MAX_PARAMETERS_BYTES = 16_384
# Headers the platform sets on every tool request: an agent's config cannot replace them.
RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "host", "airies-signature", "airies-tool-call-id", "transfer-encoding"}
)
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$")
# E.164 phone number, or a SIP URI.
TRANSFER_DESTINATION_PATTERN = r"^(\+[1-9][0-9]{6,14}|sips?:[^\s@]+@[^\s]+)$"
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


class ToolServer(StrictModel):
    url: str = Field(min_length=1, max_length=2048, description="https URL that receives the tool call (POST, JSON)")
    timeout_ms: int = Field(
        5000, ge=MIN_TIMEOUT_MS, le=MAX_TIMEOUT_MS, description="longest wait for the answer, in milliseconds"
    )
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers (e.g. an API key)")

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_HEADERS:
            raise ValueError(f"at most {MAX_HEADERS} headers")
        for name, header in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by the platform")
            if len(header) > 4096 or any(ch in header for ch in "\r\n\0"):
                raise ValueError(f"header {name!r}: at most 4096 characters, no line breaks")
        return value


class ToolMessages(StrictModel):
    request_start: str | None = Field(
        None, max_length=500, description="spoken while the request is in flight, e.g. 'One moment while I check.'"
    )
    request_failed: str | None = Field(
        None, max_length=500, description="spoken when the server fails or times out (the LLM is told it failed)"
    )


class ToolConfig(StrictModel):
    """A custom function: the LLM calls it, the platform POSTs the call to ``server.url`` and hands back the answer."""

    # ``async`` is a Python keyword: the field is ``async_`` in code, ``async`` in JSON (read and written).
    model_config = ConfigDict(**StrictModel.model_config, validate_by_name=True, serialize_by_alias=True)

    name: str = Field(pattern=TOOL_NAME_PATTERN, description="the function name the LLM sees")
    description: str = Field("", max_length=2000)
    parameters: dict[str, Any] = Field(
        default_factory=lambda: dict(EMPTY_PARAMETERS), description="JSON Schema of the arguments (an object)"
    )
    server: ToolServer
    # ``async``: fire and forget. The LLM is told the call was sent; the server's answer is not waited for.
    async_: bool = Field(False, alias="async", description="fire and forget: do not wait for the answer")
    messages: ToolMessages = Field(default_factory=ToolMessages)

    @field_validator("name")
    @classmethod
    def _not_builtin(cls, value: str) -> str:
        if value in BUILTIN_TOOL_NAMES:
            raise ValueError(f"'{value}' is a built-in tool: enable it under builtin_tools")
        return value

    @field_validator("parameters")
    @classmethod
    def _json_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_parameters_schema(value)


def check_parameters_schema(value: dict[str, Any]) -> dict[str, Any]:
    """A tool's ``parameters``: a valid JSON Schema (draft 2020-12) of an object, at most 16 KiB as JSON."""
    return check_object_schema(value, name="parameters", max_bytes=MAX_PARAMETERS_BYTES)


class TransferCallTool(StrictModel):
    enabled: bool = False
    destinations: list[str] = Field(
        default_factory=list,
        max_length=20,
        description="where the agent may transfer the call: E.164 numbers or SIP URIs (the LLM picks one)",
    )
    message: str | None = Field(None, max_length=500, description="said before the transfer when the LLM gives none")

    @field_validator("destinations")
    @classmethod
    def _destinations(cls, value: list[str]) -> list[str]:
        for item in value:
            if not re.match(TRANSFER_DESTINATION_PATTERN, item):
                raise ValueError(f"{item!r} is neither an E.164 number (+15551234567) nor a SIP URI (sip:a@b)")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _needs_destination(self) -> TransferCallTool:
        if self.enabled and not self.destinations:
            raise ValueError("transfer_call needs at least one destination when enabled")
        return self


class QueryKnowledgeBaseTool(StrictModel):
    """Retrieval on demand: the LLM asks the agent's knowledge bases when it needs to, instead of every turn."""

    enabled: bool = False


class BuiltinTools(StrictModel):
    transfer_call: TransferCallTool = Field(default_factory=TransferCallTool)
    query_knowledge_base: QueryKnowledgeBaseTool = Field(default_factory=QueryKnowledgeBaseTool)


def unique_tool_names(tools: list[ToolConfig]) -> list[ToolConfig]:
    seen: set[str] = set()
    for tool in tools:
        if tool.name in seen:
            raise ValueError(f"tool name '{tool.name}' is used twice")
        seen.add(tool.name)
    return tools
