"""llm capability: llm_custom_endpoints (accounts' own OpenAI-compatible endpoints, key encrypted)

Revision ID: 0008_llm_custom_endpoints
Revises: 0007_usage_conflicts
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from airies.core.models import UTCDateTime

revision = "0008_llm_custom_endpoints"
down_revision = "0007_usage_conflicts"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "llm_custom_endpoints",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("base_url", sa.String(2048), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=True),
        sa.Column("encrypted_data_key", sa.Text(), nullable=True),
        sa.Column("key_ref", sa.String(300), nullable=True),
        sa.Column("hint", sa.String(8), nullable=False),
        sa.Column("models", JSON, nullable=False),
        sa.Column("model_class", sa.String(20), nullable=False),
        sa.Column("stream_usage", sa.Boolean(), nullable=False),
        sa.Column("last_validated_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("account_id", "name", name="uq_llm_custom_endpoints_account_name"),
    )
    op.create_index("ix_llm_custom_endpoints_account_id", "llm_custom_endpoints", ["account_id"])


def downgrade() -> None:
    op.drop_index("ix_llm_custom_endpoints_account_id", table_name="llm_custom_endpoints")
    op.drop_table("llm_custom_endpoints")
