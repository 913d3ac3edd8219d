"""What the platform knows about providers, models and voices (data files under ``airies/data``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


@dataclass(frozen=True)
class LLMModel:
    provider: str
    model: str
    model_class: str
    context_window: int
    input_per_mtok: float
    cached_input_per_mtok: float
    output_per_mtok: float


@cache
def _load(name: str) -> dict[str, Any]:
    return json.loads((DATA_DIR / name).read_text())


@lru_cache(maxsize=1)
def llm_models() -> tuple[LLMModel, ...]:
    return tuple(LLMModel(**entry) for entry in _load("llm_models.json")["models"])


def llm_model(provider: str, model: str) -> LLMModel | None:
    for entry in llm_models():
        if entry.provider == provider and entry.model == model:
            return entry
    return None


def llm_providers() -> set[str]:
    return {entry.provider for entry in llm_models()}


def stt_providers() -> dict[str, dict[str, Any]]:
    return {entry["provider"]: entry for entry in _load("voice_catalog.json")["stt"]}


def tts_providers() -> dict[str, dict[str, Any]]:
    return {entry["provider"]: entry for entry in _load("voice_catalog.json")["tts"]}


def builtin_voice_ids(provider: str) -> set[str]:
    entry = tts_providers().get(provider)
    return {voice["voice_id"] for voice in entry.get("voices", [])} if entry else set()
