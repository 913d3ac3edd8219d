"""Pricing is data and exact: catalog prices read (not copied), Decimal all the way, half-up micro-credits."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from pydantic import ValidationError

from airies.billing.pricing import DATA_DIR, TIERS, Pricing, get_pricing
from airies.billing.schemas import UsageEvent, credits_to_micros, micros_to_credits
from airies.llm.catalog import llm_model


def test_every_tier_is_defined_with_limits():
    pricing = get_pricing()
    assert set(pricing.tiers) == set(TIERS)
    assert pricing.tier("enterprise").limits.minutes_per_month is None
    assert pricing.tier("nonsense").name == "free"


def test_llm_prices_come_from_the_llm_catalog():
    pricing = get_pricing()
    model = llm_model("openai", "gpt-4o")
    assert model is not None
    unit = pricing.provider_unit_cost("llm_output_tokens", "openai", "gpt-4o")
    assert unit == Decimal(str(model.output_per_mtok)) / 1_000_000
    assert "gpt-4o" not in (DATA_DIR / "pricing.json").read_text()  # not duplicated


def test_exact_credits_and_half_up_rounding():
    pricing = get_pricing()
    free = pricing.tier("free")
    # gpt-4o-mini input: $0.15 / Mtok; 1 token = $0.00000015 * 1.5 / 0.01 = 0.0000225 credits = 22.5 µcr -> 23
    priced = pricing.price("llm_input_tokens", Decimal(1), "openai", "gpt-4o-mini", free)
    assert priced.credits_micros == 23 and priced.priced
    # 0.1 + 0.2 style inputs stay exact: 3 x 0.1 s of Deepgram STT == 0.3 s
    a = sum(pricing.price("stt_seconds", Decimal("0.1"), "deepgram", None, free).cost_usd for _ in range(3))
    b = pricing.price("stt_seconds", Decimal("0.3"), "deepgram", None, free).cost_usd
    assert abs(a - b) < Decimal("1e-9")


def test_unknown_models_are_recorded_unpriced_not_dropped():
    pricing = get_pricing()
    priced = pricing.price("llm_output_tokens", Decimal(100), "openai", "gpt-99", pricing.tier("pro"))
    assert not priced.priced and priced.credits_micros == 0


def test_custom_pricing_data_and_cents():
    data = json.loads((DATA_DIR / "pricing.json").read_text())
    data["usd_per_credit"] = "0.001"
    pricing = Pricing(pricing=data)
    assert pricing.micros_to_cents(credits_to_micros("5")) == 1  # 5 credits * $0.001 = 0.5 cent -> 1
    assert pricing.micros_to_cents(credits_to_micros("4.999")) == 0
    assert pricing.usd_to_micros(Decimal("1.00")) == credits_to_micros("1000")


def test_wire_formats_are_exact():
    assert micros_to_credits(1) == "0.000001" and micros_to_credits(-2_500_000) == "-2.500000"
    with pytest.raises(ValueError):
        credits_to_micros("0.0000001")
    event = UsageEvent(idempotency_key="k", account_id="acc_1", component="tts_characters", quantity=0.1)
    assert event.quantity == Decimal("0.1")  # a float goes through its repr, not its binary value
    with pytest.raises(ValidationError):
        UsageEvent(idempotency_key="k", account_id="acc_1", component="gpu_hours", quantity=1)
    with pytest.raises(ValidationError):
        UsageEvent(idempotency_key="k", account_id="acc_1", component="kb_pages", quantity=-1)
