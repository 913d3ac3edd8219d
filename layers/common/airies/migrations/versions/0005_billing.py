"""billing: billing accounts, credit ledger, usage events, daily roll-up, invoices, payments, Stripe events

Revision ID: 0005_billing
Revises: 0004_knowledge
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from airies.core.models import UTCDateTime

revision = "0005_billing"
down_revision = "0004_knowledge"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def _account_fk() -> sa.Column:
    return sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "billing_accounts",
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("tier", sa.String(40), nullable=False),
        sa.Column("balance_micros", sa.BigInteger(), nullable=False),
        sa.Column("last_debit_micros", sa.BigInteger(), nullable=False),
        sa.Column("monthly_grant_period", sa.String(7), nullable=True),
        sa.Column("minutes_period", sa.String(7), nullable=True),
        sa.Column("minutes_used_micro", sa.BigInteger(), nullable=False),
        sa.Column("stripe_customer_id", sa.String(80), nullable=True),
        sa.Column("subscription_id", sa.String(80), nullable=True),
        sa.Column("subscription_status", sa.String(30), nullable=True),
        sa.Column("subscription_tier", sa.String(40), nullable=True),
        sa.Column("subscription_period_end", UTCDateTime(), nullable=True),
        sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False),
        sa.Column("subscription_event_created", sa.BigInteger(), nullable=True),
        sa.Column("owed_micros", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("stripe_customer_id", name="uq_billing_accounts_stripe_customer_id"),
    )
    op.create_table(
        "credit_ledger",
        sa.Column("id", sa.String(40), primary_key=True),
        _account_fk(),
        sa.Column("entry_type", sa.String(20), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("reference_type", sa.String(40), nullable=True),
        sa.Column("reference_id", sa.String(120), nullable=True),
        sa.Column("description", sa.String(300), nullable=True),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("account_id", "idempotency_key", name="uq_credit_ledger_account_idempotency_key"),
    )
    op.create_index("ix_credit_ledger_account_id_id", "credit_ledger", ["account_id", "id"])
    op.create_table(
        "usage_events",
        sa.Column("id", sa.String(40), primary_key=True),
        _account_fk(),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("component", sa.String(40), nullable=False),
        sa.Column("quantity_micro", sa.BigInteger(), nullable=False),
        sa.Column("provider", sa.String(60), nullable=True),
        sa.Column("model", sa.String(120), nullable=True),
        sa.Column("agent_id", sa.String(40), nullable=True),
        sa.Column("conversation_id", sa.String(40), nullable=True),
        sa.Column("turn_id", sa.String(60), nullable=True),
        sa.Column("tier", sa.String(40), nullable=False),
        sa.Column("priced", sa.Boolean(), nullable=False),
        sa.Column("cost_picousd", sa.BigInteger(), nullable=False),
        sa.Column("credits_micros", sa.BigInteger(), nullable=False),
        sa.Column("covered_micros", sa.BigInteger(), nullable=False),
        sa.Column("ledger_entry_id", sa.String(40), nullable=True),
        sa.Column("late", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("invoice_id", sa.String(40), nullable=True),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("account_id", "idempotency_key", name="uq_usage_events_account_idempotency_key"),
    )
    op.create_index("ix_usage_events_account_id_occurred_at", "usage_events", ["account_id", "occurred_at"])
    op.create_index("ix_usage_events_occurred_at", "usage_events", ["occurred_at"])
    op.create_index("ix_usage_events_invoice_id", "usage_events", ["invoice_id"])
    op.create_table(
        "usage_daily",
        sa.Column("id", sa.String(40), primary_key=True),
        _account_fk(),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("component", sa.String(40), nullable=False),
        sa.Column("provider", sa.String(60), nullable=False),
        sa.Column("model", sa.String(120), nullable=False),
        sa.Column("agent_id", sa.String(40), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("quantity_micro", sa.BigInteger(), nullable=False),
        sa.Column("credits_micros", sa.BigInteger(), nullable=False),
        sa.Column("covered_micros", sa.BigInteger(), nullable=False),
        sa.Column("cost_picousd", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint(
            "account_id", "day", "component", "provider", "model", "agent_id", name="uq_usage_daily_key"
        ),
    )
    op.create_index("ix_usage_daily_day", "usage_daily", ["day"])
    op.create_table(
        "invoices",
        sa.Column("id", sa.String(40), primary_key=True),
        _account_fk(),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("period_start", UTCDateTime(), nullable=False),
        sa.Column("period_end", UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("total_credits_micros", sa.BigInteger(), nullable=False),
        sa.Column("billable_micros", sa.BigInteger(), nullable=False),
        sa.Column("lines", JSON, nullable=False),
        sa.Column("stripe_invoice_id", sa.String(80), nullable=True),
        sa.Column("hosted_invoice_url", sa.String(500), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("finalized_at", UTCDateTime(), nullable=True),
        sa.Column("paid_at", UTCDateTime(), nullable=True),
        sa.Column("notified_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("account_id", "period", name="uq_invoices_account_period"),
    )
    op.create_index("ix_invoices_stripe_invoice_id", "invoices", ["stripe_invoice_id"])
    op.create_table(
        "payments",
        sa.Column("id", sa.String(40), primary_key=True),
        _account_fk(),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("stripe_payment_intent_id", sa.String(80), nullable=True),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("credits_micros", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(30), nullable=False),
        sa.Column("credited_at", UTCDateTime(), nullable=True),
        sa.Column("refunded_cents", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("disputed_cents", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("clawed_back_micros", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("idempotency_key", name="uq_payments_idempotency_key"),
        sa.UniqueConstraint("stripe_payment_intent_id", name="uq_payments_stripe_payment_intent_id"),
    )
    op.create_index("ix_payments_account_id", "payments", ["account_id"])
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("type", sa.String(80), nullable=False),
        sa.Column("account_id", sa.String(40), nullable=True),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("stripe_created", sa.BigInteger(), nullable=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    for table in (
        "stripe_events",
        "payments",
        "invoices",
        "usage_daily",
        "usage_events",
        "credit_ledger",
        "billing_accounts",
    ):
        op.drop_table(table)
