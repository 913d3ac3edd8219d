"""The one LLM cost formula: exact USD of a call's token usage at a catalog model's per-million prices.

Calls, agent tests, the router's failover accounting and turn pricing all use ``token_cost``. A provider may
report more cached tokens than prompt tokens (a rounding or accounting quirk upstream): cached tokens are clamped
to the prompt, so no token is ever priced negative or twice.
"""

from __future__ import annotations

from decimal import Decimal

from airies.llm.catalog import LLMModel
from airies.llm.vendors.base import Usage

MILLION = Decimal(1_000_000)


def token_cost(model: LLMModel | None, usage: Usage) -> Decimal:
    """Uncached prompt, cached prompt and completion tokens at their per-million prices (0 without a model)."""
    if model is None:
        return Decimal(0)
    cached = max(0, min(usage.cached_tokens, usage.prompt_tokens))
    uncached = usage.prompt_tokens - cached
    total = (
        Decimal(uncached) * Decimal(str(model.input_per_mtok))
        + Decimal(cached) * Decimal(str(model.cached_input_per_mtok))
        + Decimal(usage.completion_tokens) * Decimal(str(model.output_per_mtok))
    )
    return total / MILLION
