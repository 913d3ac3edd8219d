"""What the platform knows about speech vendors: their prices and built-in voices (``data/voice_catalog.json``)."""

from __future__ import annotations

import json
from collections.abc import Collection
from functools import cache
from typing import Any

from airies.core.config import DATA_DIR

DATA_FILE = DATA_DIR / "voice_catalog.json"
# The offline engines: they need no key, and answer for a provider without one when the offline fallback is on.
OFFLINE_STT = "pocketsphinx"
OFFLINE_TTS = "espeak"


@cache
def _catalog() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DATA_FILE.read_text())
    return data


def stt_providers() -> dict[str, dict[str, Any]]:
    return {entry["provider"]: entry for entry in _catalog()["stt"]}


def tts_providers() -> dict[str, dict[str, Any]]:
    return {entry["provider"]: entry for entry in _catalog()["tts"]}


def builtin_voice_ids(provider: str) -> set[str]:
    entry = tts_providers().get(provider)
    return {voice["voice_id"] for voice in entry.get("voices", [])} if entry else set()


def engine_for(requested: str, configured: Collection[str], offline: str, offline_fallback: bool) -> str | None:
    """The engine that serves a call for provider ``requested``: itself when it has a key (or is the offline engine
    itself), else the offline engine when the fallback is on, else None (the call fails: 501)."""
    if requested in configured or requested == offline:
        return requested
    return offline if offline_fallback else None
