"""The agent configuration a live session keeps: only what differs from the defaults, restored exactly."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airies.agents.config import AgentConfig

RICH: dict[str, Any] = {
    "name": "Front desk",
    "description": None,
    "agent_type": "outbound",
    "system_prompt": "You book appointments.",
    "first_message": "Hello, this is the clinic.",
    "first_message_mode": "assistant_waits_for_user",
    "llm": {"provider": "groq", "model": "llama-3.3-70b-versatile", "temperature": 0.2, "fallbacks": []},
    "voice": {"provider": "deepgram", "voice_id": "aura-2-thalia-en", "speed": 1.1},
    "knowledge_base_ids": [],
    "end_call_phrases": [],
    "end_call_message": None,
    "silence_timeout_seconds": 45,
    "interruption": {"enabled": False, "interruption_phrases": ["stop"]},
    "endpointing": {"silence_ms": 800},
    "recording_enabled": True,
    "analysis": {"summary": {"enabled": False}, "success_evaluation": {"enabled": True, "rubric": "numeric_1_10"}},
    "tools": [
        {
            "name": "book_slot",
            "description": "Book a slot",
            "parameters": {"type": "object", "properties": {"day": {"type": "string"}}, "required": ["day"]},
            "server": {"url": "https://example.com/tools"},
            "async": True,
        },
        {"name": "lookup", "server": {"url": "https://example.com/lookup"}},
    ],
    "builtin_tools": {"transfer_call": {"enabled": True, "destinations": ["+14155550100"]}},
    "metadata": {"team": "north"},
}


@pytest.mark.parametrize("raw", [{"name": "Minimal"}, RICH], ids=["defaults", "rich"])
def test_the_compact_form_restores_the_same_config(raw: dict[str, Any]) -> None:
    config = AgentConfig.model_validate(raw)
    compact = config.compact_json()
    assert AgentConfig.model_validate(json.loads(json.dumps(compact))) == config
    assert AgentConfig.model_validate(compact).model_dump(mode="json") == config.model_dump(mode="json")


def test_the_compact_form_leaves_out_the_defaults_and_keeps_explicit_values() -> None:
    minimal = AgentConfig(name="Minimal").compact_json()
    assert minimal == {"name": "Minimal"}
    rich = AgentConfig.model_validate(RICH).compact_json()
    # Values equal to a default are dropped; a value set to something else (None, an empty list) is kept.
    assert rich["end_call_message"] is None and rich["end_call_phrases"] == []
    assert "description" not in rich and "knowledge_base_ids" not in rich
    assert rich["tools"][0]["async"] is True and "async" not in rich["tools"][1]
    full = len(json.dumps(AgentConfig(name="Minimal").model_dump(mode="json")))
    assert len(json.dumps(minimal)) * 20 < full
