"""The router's settings, the health keys of platform and account keys, and the blended price it weighs."""

from __future__ import annotations

from dataclasses import dataclass

from airies.core.config import Settings
from airies.llm import catalog

ACCOUNT_SCOPE = "@account:"  # health keys of account-owned keys: "<provider>@account:<account id>", never shared


@dataclass(frozen=True)
class RouterConfig:
    first_token_timeout_s: float = 8.0
    stream_idle_timeout_s: float = 15.0
    breaker_failures: int = 3
    breaker_cooldown_s: float = 30.0
    max_retry_after_wait_s: float = 2.0
    flush_interval_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RouterConfig:
        return cls(
            first_token_timeout_s=settings.llm_first_token_timeout_s,
            stream_idle_timeout_s=settings.llm_stream_idle_timeout_s,
            breaker_failures=settings.llm_breaker_failures,
            breaker_cooldown_s=settings.llm_breaker_cooldown_s,
            max_retry_after_wait_s=settings.llm_max_retry_after_wait_s,
            flush_interval_s=settings.llm_health_flush_interval_s,
        )


def account_health_key(provider: str, account_id: str | None) -> str:
    """The statistics key of ``provider`` called with an account's own key (container-local, never shared)."""
    return f"{provider}{ACCOUNT_SCOPE}{account_id or 'unknown'}"


def is_shared_health_key(key: str) -> bool:
    """Platform-key statistics are shared across containers; account-key statistics are not."""
    return ACCOUNT_SCOPE not in key


def blended_price(model: catalog.LLMModel | None) -> float:
    if model is None:
        return 0.0
    return 0.75 * model.input_per_mtok + 0.25 * model.output_per_mtok
