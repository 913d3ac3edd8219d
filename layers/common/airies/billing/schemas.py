"""Usage and billing schemas: the contract every capability emits usage through.

Quantities are Decimal (never floats); credits are exact integers of micro-credits
(1 credit = 1_000_000 micro-credits). Money on the wire follows ``airies.core.money``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from airies.core.errors import PaymentRequiredError, RateLimitedError
from airies.core.money import MICROS_PER_CREDIT, CreditAmount, UsdAmount, micros_to_credits
from airies.core.schemas import StrictModel

__all__ = ["MICROS_PER_CREDIT", "micros_to_credits"]  # formatting lives in airies.core.money


class UsageComponent(StrEnum):
    STT_SECONDS = "stt_seconds"
    LLM_INPUT_TOKENS = "llm_input_tokens"
    LLM_CACHED_TOKENS = "llm_cached_tokens"
    LLM_OUTPUT_TOKENS = "llm_output_tokens"
    TTS_CHARACTERS = "tts_characters"
    PLATFORM_MINUTES = "platform_minutes"
    STORAGE_GB_HOURS = "storage_gb_hours"
    KB_PAGES = "kb_pages"
    EMBEDDING_TOKENS = "embedding_tokens"
    TELEPHONY_MINUTES = "telephony_minutes"  # a phone call's carrier minutes (provider: carrier, model: product)


class UsageEvent(BaseModel):
    """One metered fact. ``idempotency_key`` makes redelivery harmless: an event is counted once.

    Build keys from what identifies the fact, e.g. ``f"{turn_id}:llm_output_tokens"`` or
    ``f"{conversation_id}:platform_minutes:final"``; never from a random value.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    idempotency_key: str = Field(min_length=1, max_length=200)
    account_id: str = Field(min_length=1, max_length=40)
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    component: UsageComponent
    quantity: Decimal = Field(ge=0, max_digits=24, decimal_places=6)
    provider: str | None = Field(None, max_length=60)
    model: str | None = Field(None, max_length=120)
    agent_id: str | None = Field(None, max_length=40)
    conversation_id: str | None = Field(None, max_length=40)
    turn_id: str | None = Field(None, max_length=60)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("quantity", mode="before")
    @classmethod
    def _no_floats(cls, value: Any) -> Any:
        # A float has already lost exactness; go through its shortest repr, never its binary value.
        if isinstance(value, float):
            return Decimal(repr(value))
        return value

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def credits_to_micros(credits: Decimal | int | str) -> int:
    value = Decimal(str(credits)) * MICROS_PER_CREDIT
    if value != value.to_integral_value():
        raise ValueError("credits have at most 6 decimal places")
    return int(value)


class LimitCheck(BaseModel):
    """The answer of ``check_usage_limits``: ``allowed`` plus a machine-readable ``reason``."""

    allowed: bool
    reason: str | None = (
        None  # insufficient_credits | concurrent_conversation_limit | monthly_minutes_limit | account_inactive
    )
    message: str | None = None
    tier: str
    balance: CreditAmount
    available: CreditAmount  # balance + overdraft
    minutes_used: str
    minutes_limit: int | None
    concurrent_conversations: int | None  # None when the caller could not say (not checked)
    concurrent_limit: int | None

    def raise_for_status(self) -> None:
        """Raise the API error matching ``reason`` (402 for money/plan limits, 429 for concurrency)."""
        if self.allowed:
            return
        details = self.model_dump()
        if self.reason == "concurrent_conversation_limit":
            error = RateLimitedError(self.message or "limit reached", details=details)
            error.code = self.reason
            raise error
        raise PaymentRequiredError(self.message or "limit reached", details=details, code=self.reason)


# --- REST shapes --------------------------------------------------------------------------------


class BalanceOut(BaseModel):
    account_id: str
    tier: str
    balance: CreditAmount
    balance_micros: int
    overdraft: CreditAmount
    available: CreditAmount
    owed: CreditAmount = (
        "0.000000"  # taken back by a refund/dispute after it was spent: settled by the next top-up/grant
    )
    currency_per_credit: UsdAmount  # what one credit costs, in ``currency``
    currency: str = "usd"
    subscription: dict[str, Any] | None = None


def _micros_to_credits(value: Any) -> Any:
    return micros_to_credits(value) if isinstance(value, int) else value


# Credits read from a row's ``*_micros`` column (``validation_alias``): the decimal string of that integer.
CreditsOfMicros = Annotated[CreditAmount, BeforeValidator(_micros_to_credits)]


class LedgerEntryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # built from rows as they are

    id: str
    entry_type: str
    amount: CreditsOfMicros = Field(validation_alias=AliasChoices("amount_micros"))
    amount_micros: int
    description: str | None
    reference_type: str | None
    reference_id: str | None
    created_at: datetime


class UsageEventOut(BaseModel):
    id: str
    idempotency_key: str
    occurred_at: datetime
    component: str
    quantity: str
    provider: str | None
    model: str | None
    agent_id: str | None
    conversation_id: str | None
    turn_id: str | None
    cost_usd: UsdAmount
    credits: CreditAmount
    covered: CreditAmount
    priced: bool
    # ``conflict``: this key was already recorded with another body; this one was refused and is not charged.
    status: Literal["recorded", "conflict"] = "recorded"
    conflicts_with: str | None = None  # the recorded event that keeps the key


class UsageSummaryRow(BaseModel):
    key: dict[str, str | None]
    quantity: str
    credits: CreditAmount
    events: int


class UsageSummaryOut(BaseModel):
    period_start: datetime
    period_end: datetime
    group_by: list[str]
    total_credits: CreditAmount
    rows: list[UsageSummaryRow]


class TopUpIn(StrictModel):
    amount_usd: Decimal = Field(gt=0, le=Decimal("10000"), decimal_places=2)
    idempotency_key: str | None = Field(None, max_length=100)
    payment_method: str | None = Field(None, max_length=100, description="Stripe payment method id, e.g. pm_card_visa")
    confirm: bool = False


class TopUpOut(BaseModel):
    id: str
    status: str
    amount_usd: UsdAmount
    credits: CreditAmount
    stripe_payment_intent_id: str
    client_secret: str | None


class SubscriptionIn(StrictModel):
    tier: str = Field(pattern="^(pro|enterprise|pay_as_you_go)$")
    payment_method: str | None = Field(None, max_length=100)


class InvoiceLineOut(BaseModel):
    component: str
    provider: str | None
    model: str | None
    quantity: str
    credits: CreditAmount
    covered_credits: CreditAmount
    billable_credits: CreditAmount
    amount_cents: int
    description: str


class InvoiceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    period_start: datetime
    period_end: datetime
    status: str
    currency: str
    amount_cents: int
    total_credits: CreditsOfMicros = Field(validation_alias=AliasChoices("total_credits_micros"))
    lines: list[InvoiceLineOut]
    stripe_invoice_id: str | None
    hosted_invoice_url: str | None
    created_at: datetime
