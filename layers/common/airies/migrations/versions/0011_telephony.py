"""telephony: imported phone numbers and the calls they carried

Revision ID: 0011_telephony
Revises: 0010_webhooks
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from airies.core.models import UTCDateTime

revision = "0011_telephony"
down_revision = "0010_webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "phone_numbers",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("number", sa.String(20), nullable=False),
        sa.Column("carrier", sa.String(20), nullable=False),
        sa.Column("carrier_account_sid", sa.String(64), nullable=False),
        sa.Column("carrier_number_sid", sa.String(64), nullable=False),
        sa.Column("credentials", sa.String(20), nullable=False),
        sa.Column("token_ciphertext", sa.Text(), nullable=True),
        sa.Column("token_data_key", sa.Text(), nullable=True),
        sa.Column("token_key_ref", sa.String(300), nullable=True),
        sa.Column("agent_id", sa.String(40), sa.ForeignKey("agents.id", ondelete="SET NULL"), nullable=True),
        sa.Column("friendly_name", sa.String(100), nullable=True),
        sa.Column("voice_url", sa.String(500), nullable=False),
        sa.Column("status_callback_url", sa.String(500), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("number", name="uq_phone_numbers_number"),
    )
    op.create_index("ix_phone_numbers_account_id", "phone_numbers", ["account_id"])
    op.create_table(
        "phone_calls",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
        sa.Column(
            "phone_number_id", sa.String(40), sa.ForeignKey("phone_numbers.id", ondelete="SET NULL"), nullable=True
        ),
        sa.Column("conversation_id", sa.String(40), nullable=False),
        sa.Column("call_sid", sa.String(64), nullable=True),
        sa.Column("direction", sa.String(20), nullable=False),
        sa.Column("from_number", sa.String(300), nullable=False),
        sa.Column("to_number", sa.String(300), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("duration_seconds", sa.Integer(), nullable=True),
        sa.Column("answered_by", sa.String(40), nullable=True),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("call_sid", name="uq_phone_calls_call_sid"),
    )
    op.create_index("ix_phone_calls_account_id_id", "phone_calls", ["account_id", "id"])
    op.create_index("ix_phone_calls_conversation_id", "phone_calls", ["conversation_id"])


def downgrade() -> None:
    op.drop_table("phone_calls")
    op.drop_table("phone_numbers")
