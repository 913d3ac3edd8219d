"""publishable keys: the embeddable widget's keys and the conversations visitors started with them

Revision ID: 0009_publishable_keys
Revises: 0008_llm_custom_endpoints
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from airies.core.models import UTCDateTime

revision = "0009_publishable_keys"
down_revision = "0008_llm_custom_endpoints"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "publishable_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("key", sa.String(80), nullable=False),
        sa.Column("agent_ids", JSON, nullable=False),
        sa.Column("allowed_origins", JSON, nullable=False),
        sa.Column("visitor_conversations_per_hour", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("key", name="uq_publishable_keys_key"),
    )
    op.create_index("ix_publishable_keys_account_id", "publishable_keys", ["account_id"])
    op.create_table(
        "widget_conversations",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "publishable_key_id",
            sa.String(40),
            sa.ForeignKey("publishable_keys.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("conversation_id", sa.String(40), nullable=False),
        sa.Column("visitor", sa.String(64), nullable=False),
        sa.Column("origin", sa.String(300), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index(
        "ix_widget_conversations_key_visitor_created",
        "widget_conversations",
        ["publishable_key_id", "visitor", "created_at"],
    )
    op.create_index("ix_widget_conversations_account_id", "widget_conversations", ["account_id"])


def downgrade() -> None:
    op.drop_table("widget_conversations")
    op.drop_table("publishable_keys")
