"""tools and analysis: each turn's tool calls, each conversation's post-call analysis

Revision ID: 0012_tools_and_analysis
Revises: 0011_telephony
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0012_tools_and_analysis"
down_revision = "0011_telephony"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("conversation_turns") as batch:
        batch.add_column(sa.Column("tool_calls", JSON, nullable=True))
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("analysis", JSON, nullable=True))
        batch.add_column(sa.Column("analysis_status", sa.String(20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("analysis_status")
        batch.drop_column("analysis")
    with op.batch_alter_table("conversation_turns") as batch:
        batch.drop_column("tool_calls")
