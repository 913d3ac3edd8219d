"""The LLM interface: OpenAI-format messages in, a stream of typed events out.

Every provider (OpenAI-compatible SDK, offline responder) implements ``LLMProvider``;
the router and ``LLMService`` only ever see this interface.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol


@dataclass(frozen=True)
class LLMRequest:
    model: str
    messages: list[dict[str, Any]]  # OpenAI chat format: {"role", "content", ...}
    temperature: float = 0.7
    max_tokens: int = 300
    tools: list[dict[str, Any]] | None = None  # OpenAI "tools" format
    tool_choice: str | dict[str, Any] | None = None
    # OpenAI ``response_format``, e.g. ``{"type": "json_object"}``: the reply is one JSON object (the caller still
    # validates it). The offline responder answers JSON when ``metadata["json_schema"]`` is set.
    response_format: dict[str, Any] | None = None
    # Free-form context for the router and the offline responder; never sent to a provider. Keys read here:
    #   first_message: str, knowledge_passages: list[str], end_call_phrases: list[str], end_call_message: str,
    #   json_schema: dict (the JSON reply's schema), transcript_summary: bool (summarise the transcript in messages)
    metadata: dict[str, Any] = field(default_factory=dict)
    # Routing: the preferred provider (None = weighted choice within the model class), explicit fallbacks
    # tried before class peers, and the class itself when ``model`` is not in the catalog ("fast", "smart").
    provider: str | None = None
    fallbacks: tuple[tuple[str, str], ...] = ()
    model_class: str | None = None


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    index: int
    id: str | None
    name: str | None
    arguments: str  # a fragment of the JSON arguments


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    estimated: bool = False  # True when counted with tiktoken because the provider sent none


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class StreamEnd:
    usage: Usage
    finish_reason: str | None
    provider: str
    model: str
    ttft_ms: float | None = None
    total_ms: float | None = None
    cost_usd: float = 0.0  # float for display; ``cost`` is the exact figure billing should use
    tool_calls: tuple[ToolCall, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)  # e.g. {"is_language_model": False}
    cost: Decimal = Decimal(0)


LLMEvent = TextDelta | ToolCallDelta | StreamEnd


@dataclass(frozen=True)
class LLMResponse:
    text: str
    tool_calls: tuple[ToolCall, ...]
    end: StreamEnd


class LLMProvider(Protocol):
    name: str

    def stream(self, request: LLMRequest) -> AsyncGenerator[LLMEvent, None]:
        """Yield TextDelta / ToolCallDelta events, then exactly one StreamEnd."""
        ...

    async def list_models(self) -> list[str]: ...

    async def validate_api_key(self) -> bool: ...
