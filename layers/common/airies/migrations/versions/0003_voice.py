"""voice capability tables: voices owned by an account (cloned voices)

Revision ID: 0003_voice
Revises: 0002_llm
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from airies.core.models import UTCDateTime

revision = "0003_voice"
down_revision = "0002_llm"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "voices",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("provider", sa.String(40), nullable=False),
        sa.Column("voice_id", sa.String(200), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("language", sa.String(16), nullable=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("sample_count", sa.Integer(), nullable=False),
        sa.Column("sample_bytes", sa.Integer(), nullable=False),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("deleted_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("account_id", "provider", "voice_id", name="uq_voices_account_provider_voice"),
    )
    op.create_index("ix_voices_account_id_provider", "voices", ["account_id", "provider"])


def downgrade() -> None:
    op.drop_index("ix_voices_account_id_provider", table_name="voices")
    op.drop_table("voices")
