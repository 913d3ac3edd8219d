"""Which engine answers for an agent: warned about before a call, reported after every turn.

* ``engine_warnings(config, configured)``: the agent's speech-to-text, LLM and text-to-speech providers that have no
  key on the account or the platform, as validation problems of severity ``warning`` (code ``no_api_key``) that say
  what will answer instead: the offline engines (PocketSphinx, the offline responder, eSpeak NG), another configured
  LLM provider, or nothing (the call fails) when ``AIRIES_VOICE_OFFLINE_FALLBACK`` is off.
* ``turn_engines(config, usage)``: ``usage["engines"]`` of a turn, per stage that ran: ``{"configured", "used",
  "fallback", "offline"}`` (``fallback``: another engine than the configured one answered; ``offline``: the engine
  that answered is an offline one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airies.agents.config import AgentConfig
from airies.llm import catalog
from airies.llm.catalog import OFFLINE_PROVIDER
from airies.voice import catalog as voice_catalog
from airies.voice.catalog import OFFLINE_STT, OFFLINE_TTS, engine_for

OFFLINE_ENGINES = {"stt": OFFLINE_STT, "llm": OFFLINE_PROVIDER, "tts": OFFLINE_TTS}
OFFLINE_NAMES = {OFFLINE_STT: "PocketSphinx (offline)", OFFLINE_TTS: "eSpeak NG (offline)"}


@dataclass(frozen=True)
class ConfiguredEngines:
    """What an account can call: LLM providers (keys, endpoints) and cloud STT/TTS vendors with a key."""

    llm: frozenset[str]
    voice: frozenset[str]
    offline_fallback: bool  # AIRIES_VOICE_OFFLINE_FALLBACK: voice without a key falls back to the offline engines


def _no_key(field: str, provider: str, instead: str) -> dict[str, str]:
    message = f"{provider} has no API key on this account or the platform: {instead}"
    return {"field": field, "code": "no_api_key", "message": message, "severity": "warning"}


def _llm_warnings(config: AgentConfig, configured: ConfiguredEngines) -> list[dict[str, str]]:
    # An unknown provider is an error reported by the validator, not a missing key; the offline one needs none.
    keyed = catalog.llm_providers() - {OFFLINE_PROVIDER}
    warnings = []
    if config.llm.provider in keyed and config.llm.provider not in configured.llm:
        if configured.llm:
            instead = f"another configured provider will answer instead ({', '.join(sorted(configured.llm))})"
        else:
            instead = "the offline responder will answer instead (it is not a language model)"
        warnings.append(_no_key("llm.provider", config.llm.provider, instead))
    for index, fallback in enumerate(config.llm.fallbacks):
        if fallback.provider in keyed and fallback.provider not in configured.llm:
            warnings.append(_no_key(f"llm.fallbacks.{index}.provider", fallback.provider, "this fallback is skipped"))
    return warnings


def _voice_warnings(field: str, provider: str, offline: str, configured: ConfiguredEngines) -> list[dict[str, str]]:
    engine = engine_for(provider, configured.voice, offline, configured.offline_fallback)
    if engine == provider:
        return []
    verb = "transcribe" if offline == OFFLINE_STT else "speak"
    if engine is None:
        return [
            _no_key(field, provider, f"calls will fail (AIRIES_VOICE_OFFLINE_FALLBACK is off: nothing will {verb})")
        ]
    return [_no_key(field, provider, f"{OFFLINE_NAMES[offline]} will {verb} instead")]


def engine_warnings(config: AgentConfig, configured: ConfiguredEngines) -> list[dict[str, str]]:
    warnings = _llm_warnings(config, configured)
    if config.transcriber.provider in voice_catalog.stt_providers():
        warnings += _voice_warnings("transcriber.provider", config.transcriber.provider, OFFLINE_STT, configured)
    tts = voice_catalog.tts_providers()
    if config.voice.provider in tts:
        warnings += _voice_warnings("voice.provider", config.voice.provider, OFFLINE_TTS, configured)
    for index, fallback in enumerate(config.voice.fallback_voices):
        if fallback.provider in tts and engine_for(fallback.provider, configured.voice, OFFLINE_TTS, False) is None:
            warnings.append(
                _no_key(f"voice.fallback_voices.{index}.provider", fallback.provider, "this fallback is skipped")
            )
    return warnings


def engine_report(kind: str, configured: str, used: str) -> dict[str, Any]:
    """One stage of ``usage["engines"]``."""
    return {
        "configured": configured,
        "used": used,
        "fallback": used != configured,
        "offline": used == OFFLINE_ENGINES[kind],
    }


def turn_engines(config: AgentConfig, usage: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``usage["engines"]``: per stage that ran in this turn (a text turn has no STT, a scripted reply no LLM, a
    text-only reply no TTS), the configured provider and the engine that actually answered."""
    stages = (
        ("stt", config.transcriber.provider, usage.get("stt_provider")),
        ("llm", config.llm.provider, usage.get("llm_provider")),
        ("tts", config.voice.provider, usage.get("tts_provider")),
    )
    return {kind: engine_report(kind, configured, used) for kind, configured, used in stages if used}
