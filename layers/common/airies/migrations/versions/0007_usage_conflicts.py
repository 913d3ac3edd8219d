"""usage conflicts: the hash of each usage event's body, and the events refused because their key had another body

Revision ID: 0007_usage_conflicts
Revises: 0006_conversations
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from airies.core.models import UTCDateTime

revision = "0007_usage_conflicts"
down_revision = "0006_conversations"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    # Events recorded before this revision have no hash: a later body with their key cannot be compared.
    op.add_column("usage_events", sa.Column("body_hash", sa.String(64), nullable=True))
    op.create_table(
        "usage_event_conflicts",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("usage_event_id", sa.String(40), nullable=False),
        sa.Column("body_hash", sa.String(64), nullable=False),
        sa.Column("recorded_body_hash", sa.String(64), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("component", sa.String(40), nullable=False),
        sa.Column("quantity_micro", sa.BigInteger(), nullable=False),
        sa.Column("provider", sa.String(60), nullable=True),
        sa.Column("model", sa.String(120), nullable=True),
        sa.Column("agent_id", sa.String(40), nullable=True),
        sa.Column("conversation_id", sa.String(40), nullable=True),
        sa.Column("turn_id", sa.String(60), nullable=True),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint(
            "account_id", "idempotency_key", "body_hash", name="uq_usage_event_conflicts_account_key_body"
        ),
    )
    op.create_index(
        "ix_usage_event_conflicts_account_id_occurred_at", "usage_event_conflicts", ["account_id", "occurred_at"]
    )


def downgrade() -> None:
    op.drop_table("usage_event_conflicts")
    with op.batch_alter_table("usage_events") as batch:
        batch.drop_column("body_hash")
