"""``usage["engines"]`` of a turn: the configured provider and the engine that answered, per stage that ran."""

from __future__ import annotations

from airies.agents.config import AgentConfig
from airies.agents.engines import turn_engines

AGENT = {
    "name": "Front desk",
    "first_message": "Hello.",
    "llm": {"provider": "openai", "model": "gpt-4o-mini"},
    "voice": {"provider": "elevenlabs", "voice_id": "21m00Tcm4TlvDq8ikWAM"},
    "transcriber": {"provider": "deepgram", "model": "nova-3"},
}


def test_turn_engines_report_each_stage_that_ran():
    config = AgentConfig.model_validate(AGENT)
    usage = {"stt_provider": "pocketsphinx", "llm_provider": "groq", "tts_provider": "elevenlabs"}
    assert turn_engines(config, usage) == {
        "stt": {"configured": "deepgram", "used": "pocketsphinx", "fallback": True, "offline": True},
        "llm": {"configured": "openai", "used": "groq", "fallback": True, "offline": False},
        "tts": {"configured": "elevenlabs", "used": "elevenlabs", "fallback": False, "offline": False},
    }
    assert turn_engines(config, {"tts_provider": "espeak"}) == {
        "tts": {"configured": "elevenlabs", "used": "espeak", "fallback": True, "offline": True}
    }
