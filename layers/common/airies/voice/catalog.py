"""What the platform knows about speech vendors: their prices and built-in voices (``data/voice_catalog.json``)."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from airies.core.config import DATA_DIR

DATA_FILE = DATA_DIR / "voice_catalog.json"


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
