"""ORM models of the billing capability: credit ledger, usage events, roll-ups, invoices, payments.

Every amount is an exact integer: credits in micro-credits (1 credit = 1_000_000), usage quantities
in micro-units, provider cost in pico-USD, money in cents. SQLite has no exact decimal type, and
integers are exact on both backends.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false, text
from sqlalchemy.orm import Mapped, mapped_column

from airies.core.models import Base, TimestampMixin, id_column, utcnow


class BillingAccount(TimestampMixin, Base):
    """One row per account: the tier, the cached balance (== sum of the ledger) and the Stripe links."""

    __tablename__ = "billing_accounts"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    tier: Mapped[str] = mapped_column(String(40))
    balance_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    # Written by the same UPDATE that moves the balance, so the amount taken is read back atomically.
    last_debit_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    monthly_grant_period: Mapped[str | None] = mapped_column(String(7))
    # Conversation minutes of ``minutes_period`` (YYYY-MM), kept by track_usage: the per-turn limit check is O(1).
    minutes_period: Mapped[str | None] = mapped_column(String(7))
    minutes_used_micro: Mapped[int] = mapped_column(BigInteger, default=0)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(80))
    subscription_id: Mapped[str | None] = mapped_column(String(80))
    subscription_status: Mapped[str | None] = mapped_column(String(30))
    subscription_tier: Mapped[str | None] = mapped_column(String(40))
    subscription_period_end: Mapped[datetime | None]
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, default=False)
    # Stripe `created` of the last subscription event applied: older (reordered) events are skipped.
    subscription_event_created: Mapped[int | None] = mapped_column(BigInteger)
    # Credits taken back by a refund or dispute that the balance (down to the tier's overdraft) could not cover:
    # a debt outside the balance, settled first by the next grant or top-up (see UsageService.claw_back).
    owed_micros: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))

    __table_args__ = (UniqueConstraint("stripe_customer_id", name="uq_billing_accounts_stripe_customer_id"),)


class CreditLedgerEntry(Base):
    """Append-only: grant, top_up, usage_debit, refund, adjustment. Amounts are signed micro-credits."""

    __tablename__ = "credit_ledger"

    id: Mapped[str] = id_column()
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    entry_type: Mapped[str] = mapped_column(String(20))
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    reference_type: Mapped[str | None] = mapped_column(String(40))
    reference_id: Mapped[str | None] = mapped_column(String(120))
    description: Mapped[str | None] = mapped_column(String(300))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        # Keys are scoped to the account: another account's entry with the same key is not a repeat.
        UniqueConstraint("account_id", "idempotency_key", name="uq_credit_ledger_account_idempotency_key"),
        Index("ix_credit_ledger_account_id_id", "account_id", "id"),
    )


class UsageEventRecord(Base):
    """One metered fact, priced at ingestion; ``idempotency_key`` is the exactly-once gate."""

    __tablename__ = "usage_events"

    id: Mapped[str] = id_column()
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    idempotency_key: Mapped[str] = mapped_column(String(200))
    occurred_at: Mapped[datetime]
    component: Mapped[str] = mapped_column(String(40))
    quantity_micro: Mapped[int] = mapped_column(BigInteger)
    provider: Mapped[str | None] = mapped_column(String(60))
    model: Mapped[str | None] = mapped_column(String(120))
    agent_id: Mapped[str | None] = mapped_column(String(40))
    conversation_id: Mapped[str | None] = mapped_column(String(40))
    turn_id: Mapped[str | None] = mapped_column(String(60))
    tier: Mapped[str] = mapped_column(String(40))
    priced: Mapped[bool] = mapped_column(Boolean, default=True)
    cost_picousd: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    # The part paid from the balance; credits - covered is billed on the monthly invoice (or written off on free).
    covered_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    ledger_entry_id: Mapped[str | None] = mapped_column(String(40))
    # Recorded after its period's invoice was created (e.g. redriven from the dead-letter queue): that invoice
    # cannot bill it, the next invoice run does. Decided at insert, under a lock that keeps invoices of the period
    # from being created meanwhile, so every event is either in its period's invoice or late: never neither.
    late: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The invoice that billed a late event's uncovered part; a marked event is never billed again. An event that
    # is not late is billed by its own period's invoice (by period, without being marked).
    invoice_id: Mapped[str | None] = mapped_column(String(40))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    # SHA-256 of what the event bills (``usage_body_hash``): a later event with this key and another hash is a
    # conflict. None for events recorded before hashes were kept.
    body_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        # Keys are scoped to the account: another account's event with the same key is counted, not a duplicate.
        UniqueConstraint("account_id", "idempotency_key", name="uq_usage_events_account_idempotency_key"),
        Index("ix_usage_events_account_id_occurred_at", "account_id", "occurred_at"),
        Index("ix_usage_events_occurred_at", "occurred_at"),
        Index("ix_usage_events_invoice_id", "invoice_id"),
    )


class UsageEventConflict(Base):
    """A usage event refused because its idempotency key was recorded with another body: the first body stays
    recorded and billed; this one is kept to be seen (``GET /usage/events``, status ``conflict``), never charged.
    Each distinct body is kept once per key."""

    __tablename__ = "usage_event_conflicts"

    id: Mapped[str] = id_column()  # ``use_`` ids: listed in time order among the account's usage events
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    idempotency_key: Mapped[str] = mapped_column(String(200))
    usage_event_id: Mapped[str] = mapped_column(String(40))  # the recorded event that keeps the key
    body_hash: Mapped[str] = mapped_column(String(64))
    recorded_body_hash: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime]
    component: Mapped[str] = mapped_column(String(40))
    quantity_micro: Mapped[int] = mapped_column(BigInteger)
    provider: Mapped[str | None] = mapped_column(String(60))
    model: Mapped[str | None] = mapped_column(String(120))
    agent_id: Mapped[str | None] = mapped_column(String(40))
    conversation_id: Mapped[str | None] = mapped_column(String(40))
    turn_id: Mapped[str | None] = mapped_column(String(60))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint(
            "account_id", "idempotency_key", "body_hash", name="uq_usage_event_conflicts_account_key_body"
        ),
        Index("ix_usage_event_conflicts_account_id_occurred_at", "account_id", "occurred_at"),
    )


class UsageDaily(Base):
    """Daily roll-up, recomputed idempotently from ``usage_events`` (null dimensions stored as '')."""

    __tablename__ = "usage_daily"

    id: Mapped[str] = id_column()
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    day: Mapped[str] = mapped_column(String(10))  # YYYY-MM-DD (UTC)
    component: Mapped[str] = mapped_column(String(40))
    provider: Mapped[str] = mapped_column(String(60))
    model: Mapped[str] = mapped_column(String(120))
    agent_id: Mapped[str] = mapped_column(String(40))
    events: Mapped[int] = mapped_column(Integer)
    quantity_micro: Mapped[int] = mapped_column(BigInteger)
    credits_micros: Mapped[int] = mapped_column(BigInteger)
    covered_micros: Mapped[int] = mapped_column(BigInteger)
    cost_picousd: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("account_id", "day", "component", "provider", "model", "agent_id", name="uq_usage_daily_key"),
        Index("ix_usage_daily_day", "day"),
    )


class Invoice(TimestampMixin, Base):
    """A monthly usage invoice; unique per (account, period) so a re-run never bills twice."""

    __tablename__ = "invoices"

    id: Mapped[str] = id_column()
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    period: Mapped[str] = mapped_column(String(7))  # YYYY-MM
    period_start: Mapped[datetime]
    period_end: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(20))  # draft | open | paid | payment_failed | no_charge | void
    currency: Mapped[str] = mapped_column(String(3))
    amount_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    total_credits_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    billable_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    lines: Mapped[list[Any]] = mapped_column(default=list)
    stripe_invoice_id: Mapped[str | None] = mapped_column(String(80))
    hosted_invoice_url: Mapped[str | None] = mapped_column(String(500))
    error: Mapped[str | None] = mapped_column(Text)
    finalized_at: Mapped[datetime | None]
    paid_at: Mapped[datetime | None]
    notified_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("account_id", "period", name="uq_invoices_account_period"),
        Index("ix_invoices_stripe_invoice_id", "stripe_invoice_id"),
    )


class Payment(TimestampMixin, Base):
    """A credit top-up through a Stripe PaymentIntent; credited once, on payment_intent.succeeded."""

    __tablename__ = "payments"

    id: Mapped[str] = id_column()
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    idempotency_key: Mapped[str] = mapped_column(String(200))
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(80))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    credits_micros: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(30))
    credited_at: Mapped[datetime | None]
    # Refunds and disputes of this top-up's charge (cents, cumulative) and the credits taken back for them
    # (micro-credits, cumulative: always round_half_up(credits * min(amount, refunded + disputed) / amount)).
    refunded_cents: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    disputed_cents: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    clawed_back_micros: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))

    __table_args__ = (
        UniqueConstraint("idempotency_key", name="uq_payments_idempotency_key"),
        UniqueConstraint("stripe_payment_intent_id", name="uq_payments_stripe_payment_intent_id"),
        Index("ix_payments_account_id", "account_id"),
    )


class StripeEvent(Base):
    """Each Stripe event id is processed exactly once: its row is inserted in the same transaction as its effect."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    type: Mapped[str] = mapped_column(String(80))
    account_id: Mapped[str | None] = mapped_column(String(40))
    outcome: Mapped[str] = mapped_column(String(20))  # processed | ignored
    stripe_created: Mapped[int | None] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
