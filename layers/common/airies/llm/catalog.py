"""What the platform knows about providers, models and voices (data files under ``airies/data``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

from airies.core.config import DATA_DIR, Settings

OFFLINE_PROVIDER = "offline"  # the offline responder (``vendors.offline``): needs no key, is not a language model


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


def custom_llm_models(settings: Settings) -> list[LLMModel]:
    """The models of the configured OpenAI-compatible endpoint (Ollama, vLLM): no price, context unknown (0)."""
    if not settings.llm_custom_base_url:
        return []
    names = [name.strip() for name in settings.llm_custom_models.split(",") if name.strip()]
    return [
        LLMModel(
            provider=settings.llm_custom_name,
            model=name,
            model_class=settings.llm_custom_model_class,
            context_window=0,
            input_per_mtok=0.0,  # self-hosted: no per-token price
            cached_input_per_mtok=0.0,
            output_per_mtok=0.0,
        )
        for name in names
    ]


def all_llm_models(settings: Settings) -> list[LLMModel]:
    return [*llm_models(), *custom_llm_models(settings)]


def llm_model_lookup(settings: Settings | None) -> Callable[[str, str], LLMModel | None]:
    """``llm_model`` that also knows the custom endpoint's models configured in ``settings``."""
    custom = {(m.provider, m.model): m for m in custom_llm_models(settings)} if settings is not None else {}
    if not custom:
        return llm_model
    return lambda provider, model: custom.get((provider, model)) or llm_model(provider, model)


def llm_providers() -> set[str]:
    return {entry.provider for entry in llm_models()}
