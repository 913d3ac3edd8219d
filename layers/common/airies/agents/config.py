"""The agent config: everything a voice agent needs, validated by pydantic. What a call, its analysis and a phone
line read; the agents API's request and response bodies are in ``airies.agents.schemas``.

Structural limits live here (types, ranges, lengths); checks that need data
(known providers, models, voices, owned knowledge bases, context size) live in
``airies.agents.service.AgentValidator``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from airies.core.json_schemas import check_object_schema
from airies.core.schemas import Metadata, StrictModel
from airies.tools.schemas import MAX_TOOLS, BuiltinTools, ToolConfig, unique_tool_names

# Shared by the full config and its partial update, so both accept the same range.
MaxDurationSeconds = Annotated[int, Field(ge=10, le=43200, description="longest call, in seconds (12 h at most)")]
SilenceTimeoutSeconds = Annotated[int, Field(ge=5, le=3600, description="silence that ends the call, in seconds")]


class AgentType(StrEnum):
    inbound = "inbound"
    outbound = "outbound"
    web = "web"


class FirstMessageMode(StrEnum):
    assistant_speaks_first = "assistant_speaks_first"
    assistant_waits_for_user = "assistant_waits_for_user"
    assistant_generates_first = "assistant_generates_first"


class LLMFallback(StrictModel):
    provider: str = Field(min_length=1, max_length=40)
    model: str = Field(min_length=1, max_length=200)


class LLMConfig(StrictModel):
    provider: str = Field("openai", min_length=1, max_length=40)
    model: str = Field("gpt-4o-mini", min_length=1, max_length=200)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(300, ge=1, le=16384)
    fallbacks: list[LLMFallback] = Field(default_factory=list, max_length=5)


class VoiceConfig(StrictModel):
    provider: str = Field("elevenlabs", min_length=1, max_length=40)
    voice_id: str = Field("21m00Tcm4TlvDq8ikWAM", min_length=1, max_length=200)
    model: str | None = Field(None, max_length=100)
    speed: float = Field(1.0, ge=0.5, le=2.0)
    stability: float = Field(0.5, ge=0.0, le=1.0)
    similarity_boost: float = Field(0.75, ge=0.0, le=1.0)
    style: float = Field(0.0, ge=0.0, le=1.0)
    fallback_voices: list[VoiceFallback] = Field(default_factory=list, max_length=3)


class VoiceFallback(StrictModel):
    provider: str = Field(min_length=1, max_length=40)
    voice_id: str = Field(min_length=1, max_length=200)


class TranscriberConfig(StrictModel):
    provider: str = Field("deepgram", min_length=1, max_length=40)
    model: str = Field("nova-3", min_length=1, max_length=100)
    language: str = Field("en", min_length=2, max_length=16, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
    keywords: list[str] = Field(default_factory=list, max_length=100)


# A spoken word's duration, to hold ``min_words`` against speech measured in milliseconds.
MS_PER_WORD = 400


class InterruptionConfig(StrictModel):
    enabled: bool = True
    # Words the caller must say before the agent yields (0 = any detected speech).
    min_words: int = Field(0, ge=0, le=10)
    voice_seconds: float = Field(0.2, ge=0.0, le=2.0)
    backoff_seconds: float = Field(1.0, ge=0.0, le=10.0)
    acknowledgement_phrases: list[str] = Field(
        default_factory=lambda: ["okay", "right", "uh-huh", "yeah", "mm-hmm"], max_length=50
    )
    interruption_phrases: list[str] = Field(default_factory=lambda: ["stop", "wait", "hold on"], max_length=50)

    def speech_needed_ms(self) -> float:
        """Speech the caller must make over the agent before it yields: ``voice_seconds``, and ``min_words`` at
        MS_PER_WORD each (a voice activity detector counts speech, not words), wherever barge-in is detected."""
        return max(self.voice_seconds * 1000, self.min_words * MS_PER_WORD)


class EndpointingConfig(StrictModel):
    # Trailing silence that ends the caller's utterance (Vapi's default wait is 0.4 s).
    silence_ms: int = Field(500, ge=100, le=5000)


SUMMARY_PROMPT = (
    "Summarise the call in two to four sentences: why the caller called, what the agent did, and how it ended."
)
STRUCTURED_DATA_PROMPT = "Extract the requested fields from the call. Use null for anything the call did not say."
SUCCESS_EVALUATION_PROMPT = "Judge whether the agent achieved the call's goal: it answered what the caller asked."
# A JSON Schema of structured data is the tenant's input: bounded in size (as JSON text) when it is saved.
MAX_JSON_SCHEMA_BYTES = 20_480


class AnalysisSummary(StrictModel):
    enabled: bool = True
    prompt: str = Field(SUMMARY_PROMPT, min_length=1, max_length=10_000)


class AnalysisStructuredData(StrictModel):
    enabled: bool = False
    # A JSON Schema (draft 2020-12) of the data to extract; its top level is an object. Required when enabled.
    json_schema: dict[str, Any] | None = None
    prompt: str = Field(STRUCTURED_DATA_PROMPT, min_length=1, max_length=10_000)

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            # Not a valid draft 2020-12 schema, not of an object, or too large to put in a prompt: a ValueError.
            check_object_schema(value, name="json_schema", max_bytes=MAX_JSON_SCHEMA_BYTES)
        return value

    @model_validator(mode="after")
    def _schema_when_enabled(self) -> AnalysisStructuredData:
        if self.enabled and self.json_schema is None:
            raise ValueError("json_schema is required when structured data is enabled")
        return self


class AnalysisSuccessEvaluation(StrictModel):
    enabled: bool = False
    # pass_fail: true or false; numeric_1_10: an integer score from 1 to 10; verdict: a few written sentences
    rubric: Literal["pass_fail", "numeric_1_10", "verdict"] = "pass_fail"
    prompt: str = Field(SUCCESS_EVALUATION_PROMPT, min_length=1, max_length=10_000)


class AnalysisPlan(StrictModel):
    """What runs after every call of the agent (the post-call analysis); each part is one LLM request."""

    summary: AnalysisSummary = Field(default_factory=AnalysisSummary)
    structured_data: AnalysisStructuredData = Field(default_factory=AnalysisStructuredData)
    success_evaluation: AnalysisSuccessEvaluation = Field(default_factory=AnalysisSuccessEvaluation)


class AgentConfig(StrictModel):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    agent_type: AgentType = AgentType.inbound
    system_prompt: str = Field("You are a helpful voice assistant.", min_length=1, max_length=200_000)
    first_message: str | None = Field(None, max_length=2000)
    first_message_mode: FirstMessageMode = FirstMessageMode.assistant_speaks_first
    llm: LLMConfig = Field(default_factory=LLMConfig)
    voice: VoiceConfig = Field(default_factory=VoiceConfig)
    transcriber: TranscriberConfig = Field(default_factory=TranscriberConfig)
    knowledge_base_ids: list[str] = Field(default_factory=list, max_length=10)
    end_call_phrases: list[str] = Field(default_factory=lambda: ["goodbye", "bye bye"], max_length=50)
    end_call_message: str | None = Field("Thank you for calling. Goodbye!", max_length=1000)
    max_duration_seconds: MaxDurationSeconds = 600
    silence_timeout_seconds: SilenceTimeoutSeconds = 30
    silence_reminder_message: str | None = Field("Are you still there?", max_length=500)
    interruption: InterruptionConfig = Field(default_factory=InterruptionConfig)
    endpointing: EndpointingConfig = Field(default_factory=EndpointingConfig)
    recording_enabled: bool = False
    analysis: AnalysisPlan = Field(default_factory=AnalysisPlan)
    # Custom functions on the business's server, and the built-ins beside end_call (docs/tools.md).
    tools: list[ToolConfig] = Field(default_factory=list, max_length=MAX_TOOLS)
    builtin_tools: BuiltinTools = Field(default_factory=BuiltinTools)
    metadata: Metadata = Field(default_factory=dict)

    @field_validator("tools")
    @classmethod
    def _unique_tools(cls, value: list[ToolConfig]) -> list[ToolConfig]:
        return unique_tool_names(value)

    def compact_json(self) -> dict[str, Any]:
        """What differs from the defaults, as JSON: ``model_validate`` restores the same config from it. A live
        call's config item is stored this way (the defaults alone are about 1.7 KB)."""
        return self.model_dump(mode="json", exclude_defaults=True)

    @field_validator("end_call_phrases", "knowledge_base_ids")
    @classmethod
    def _no_blank_items(cls, value: list[str]) -> list[str]:
        cleaned = [item.strip() for item in value]
        if any(not item for item in cleaned):
            raise ValueError("items must not be blank")
        return cleaned


VoiceConfig.model_rebuild()


def welcome_greeting(config: AgentConfig, override: str | None = None) -> str | None:
    """What a carrier's relay says when the call connects (its ``welcomeGreeting``): the call's own first message,
    else the agent's when the agent speaks first."""
    if override:
        return override
    if config.first_message_mode == FirstMessageMode.assistant_speaks_first and config.first_message:
        return config.first_message
    return None
