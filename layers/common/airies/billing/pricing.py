"""Pricing as data: provider cost per unit and per-tier credits, markup, grants and limits.

Sources (read, never copied): ``data/pricing.json`` (tiers, platform and phone carrier costs), ``data/llm_models.json``
(LLM USD per million tokens) and ``data/voice_catalog.json`` (STT USD per minute, TTS USD per 1k chars).
Every number is parsed straight into Decimal (``parse_float=Decimal``) so no float ever touches money.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from airies.billing.schemas import MICROS_PER_CREDIT, UsageComponent, credits_to_micros

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
TIERS = ("free", "pay_as_you_go", "pro", "enterprise")
_MILLION = Decimal(1_000_000)


def _read(name: str) -> dict[str, Any]:
    return json.loads((DATA_DIR / name).read_text(), parse_float=Decimal)


@dataclass(frozen=True)
class TierLimits:
    concurrent_conversations: int | None
    minutes_per_month: int | None
    kb_size_mb: int | None


@dataclass(frozen=True)
class Tier:
    name: str
    display_name: str
    markup: Decimal
    credits_per_unit: dict[str, Decimal]
    signup_grant_micros: int
    included_monthly_micros: int
    overdraft_micros: int
    min_to_start_micros: int
    invoice_overage: bool
    monthly_price_usd: Decimal
    limits: TierLimits

    @property
    def paid(self) -> bool:
        """A subscription tier: its included credits come with each paid subscription invoice, never by calendar."""
        return self.monthly_price_usd > 0


@dataclass(frozen=True)
class PricedUsage:
    cost_usd: Decimal  # what the providers charge us for this quantity (exact)
    credits_micros: int  # what the customer is charged
    priced: bool  # False when the provider/model has no known price (recorded, charged the platform fee only)


class Pricing:
    def __init__(
        self,
        pricing: dict[str, Any] | None = None,
        llm_catalog: dict[str, Any] | None = None,
        voice_catalog: dict[str, Any] | None = None,
    ) -> None:
        pricing = pricing if pricing is not None else _read("pricing.json")
        llm_catalog = llm_catalog if llm_catalog is not None else _read("llm_models.json")
        voice_catalog = voice_catalog if voice_catalog is not None else _read("voice_catalog.json")
        self.currency: str = pricing["currency"]
        self.usd_per_credit = Decimal(str(pricing["usd_per_credit"]))
        self.platform_costs = {k: Decimal(str(v)) for k, v in pricing["platform_costs_usd"].items()}
        self.embedding_costs = {k: Decimal(str(v)) for k, v in pricing["embedding_costs_usd_per_mtok"].items()}
        self.telephony_costs = {
            k: Decimal(str(v))
            for k, v in pricing.get("telephony_costs_usd_per_minute", {}).items()
            if not k.startswith("_")
        }
        self.tiers = {name: self._tier(name, spec) for name, spec in pricing["tiers"].items()}
        self.llm = {(m["provider"], m["model"]): m for m in llm_catalog["models"]}
        self.stt = {p["provider"]: p for p in voice_catalog["stt"]}
        self.tts = {p["provider"]: p for p in voice_catalog["tts"]}

    @staticmethod
    def _tier(name: str, spec: dict[str, Any]) -> Tier:
        limits = spec.get("limits", {})
        return Tier(
            name=name,
            display_name=spec.get("display_name", name),
            markup=Decimal(str(spec["markup"])),
            credits_per_unit={k: Decimal(str(v)) for k, v in spec.get("credits_per_unit", {}).items()},
            signup_grant_micros=credits_to_micros(spec.get("signup_grant_credits", "0")),
            included_monthly_micros=credits_to_micros(spec.get("included_monthly_credits", "0")),
            overdraft_micros=credits_to_micros(spec.get("overdraft_credits", "0")),
            min_to_start_micros=credits_to_micros(spec.get("min_credits_to_start", "0")),
            invoice_overage=bool(spec.get("invoice_overage", False)),
            monthly_price_usd=Decimal(str(spec.get("monthly_price_usd", "0"))),
            limits=TierLimits(
                concurrent_conversations=limits.get("concurrent_conversations"),
                minutes_per_month=limits.get("minutes_per_month"),
                kb_size_mb=limits.get("kb_size_mb"),
            ),
        )

    def tier(self, name: str | None) -> Tier:
        return self.tiers.get(name or "free") or self.tiers["free"]

    def provider_unit_cost(self, component: str, provider: str | None, model: str | None) -> Decimal | None:
        """USD per one unit of ``component`` for this provider/model, or None when unknown."""
        c = UsageComponent(component)
        if c in (UsageComponent.LLM_INPUT_TOKENS, UsageComponent.LLM_CACHED_TOKENS, UsageComponent.LLM_OUTPUT_TOKENS):
            entry = self.llm.get((provider or "", model or ""))
            if entry is None:
                return None
            field = {
                UsageComponent.LLM_INPUT_TOKENS: "input_per_mtok",
                UsageComponent.LLM_CACHED_TOKENS: "cached_input_per_mtok",
                UsageComponent.LLM_OUTPUT_TOKENS: "output_per_mtok",
            }[c]
            return Decimal(str(entry[field])) / _MILLION
        if c is UsageComponent.STT_SECONDS:
            entry = self.stt.get(provider or "")
            return None if entry is None else Decimal(str(entry["price_per_minute"])) / 60
        if c is UsageComponent.TTS_CHARACTERS:
            entry = self.tts.get(provider or "")
            return None if entry is None else Decimal(str(entry["price_per_1k_chars"])) / 1000
        if c is UsageComponent.EMBEDDING_TOKENS:
            key = f"{provider}/{model}"
            per_mtok = self.embedding_costs.get(key, self.embedding_costs.get("default"))
            return None if per_mtok is None else per_mtok / _MILLION
        if c is UsageComponent.TELEPHONY_MINUTES:
            return self.telephony_costs.get(f"{provider}/{model}")
        cost = self.platform_costs.get(c.value)
        return cost

    def price(
        self, component: str, quantity: Decimal, provider: str | None, model: str | None, tier: Tier
    ) -> PricedUsage:
        unit_cost = self.provider_unit_cost(component, provider, model)
        priced = unit_cost is not None
        cost_usd = quantity * (unit_cost or Decimal(0))
        credits = cost_usd * (1 + tier.markup) / self.usd_per_credit
        credits += quantity * tier.credits_per_unit.get(str(component), Decimal(0))
        micros = int((credits * MICROS_PER_CREDIT).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        return PricedUsage(cost_usd=cost_usd.quantize(Decimal("0.0000000001")), credits_micros=micros, priced=priced)

    def usd_to_micros(self, usd: Decimal) -> int:
        return int((usd / self.usd_per_credit * MICROS_PER_CREDIT).quantize(Decimal(1), rounding=ROUND_HALF_UP))

    def micros_to_cents(self, micros: int) -> int:
        """Customer-facing cents for a credit amount, rounded half-up (away from zero) to the cent; exact integers."""
        num, den = self._cents_ratio
        n, d = abs(int(micros)) * num, den * MICROS_PER_CREDIT
        cents = (2 * n + d) // (2 * d)
        return -cents if micros < 0 else cents

    @property
    def _cents_ratio(self) -> tuple[int, int]:
        return (self.usd_per_credit * 100).as_integer_ratio()


@lru_cache(maxsize=1)
def get_pricing() -> Pricing:
    return Pricing()
