"""conversations: conversations and their turns (transcript, latency, usage, cost)

Revision ID: 0006_conversations
Revises: 0005_billing
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from airies.core.models import UTCDateTime

revision = "0006_conversations"
down_revision = "0005_billing"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
MONEY = sa.Numeric(18, 9)


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("agent_id", sa.String(40), sa.ForeignKey("agents.id", ondelete="SET NULL"), nullable=True),
        sa.Column("agent_version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("caller", JSON, nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.Column("end_reason", sa.String(40), nullable=True),
        sa.Column("duration_seconds", sa.Float(), nullable=False),
        sa.Column("turn_count", sa.Integer(), nullable=False),
        sa.Column("interruption_count", sa.Integer(), nullable=False),
        sa.Column("usage", JSON, nullable=False),
        sa.Column("cost_usd", MONEY, nullable=False),
        sa.Column("recording_enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_conversations_account_id_id", "conversations", ["account_id", "id"])
    op.create_index("ix_conversations_account_id_agent_id", "conversations", ["account_id", "agent_id"])
    op.create_index("ix_conversations_status_started_at", "conversations", ["status", "started_at"])
    op.create_table(
        "conversation_turns",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "conversation_id", sa.String(40), sa.ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("input_mode", sa.String(20), nullable=False),
        sa.Column("user_text", sa.Text(), nullable=True),
        sa.Column("agent_text", sa.Text(), nullable=False),
        sa.Column("agent_text_generated", sa.Text(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("interrupted", sa.Boolean(), nullable=False),
        sa.Column("latency", JSON, nullable=False),
        sa.Column("usage", JSON, nullable=False),
        sa.Column("cost", JSON, nullable=False),
        sa.Column("cost_usd", MONEY, nullable=False),
        sa.Column("recording", JSON, nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("conversation_id", "seq", name="uq_conversation_turns_conversation_seq"),
    )
    op.create_index("ix_conversation_turns_account_id_started_at", "conversation_turns", ["account_id", "started_at"])


def downgrade() -> None:
    op.drop_table("conversation_turns")
    op.drop_table("conversations")
