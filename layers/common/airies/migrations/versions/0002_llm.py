"""llm capability: provider_keys (encrypted account keys), provider_health (shared router statistics)

Revision ID: 0002_llm
Revises: 0001_foundation
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from airies.core.models import UTCDateTime

revision = "0002_llm"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provider_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("provider", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("encrypted_data_key", sa.Text(), nullable=False),
        sa.Column("key_ref", sa.String(300), nullable=False),
        sa.Column("hint", sa.String(8), nullable=False),
        sa.Column("last_validated_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("account_id", "provider", name="uq_provider_keys_account_provider"),
    )
    op.create_index("ix_provider_keys_account_id", "provider_keys", ["account_id"])
    op.create_table(
        "provider_health",
        sa.Column("provider", sa.String(80), primary_key=True),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("error_rate", sa.Float(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("breaker_open_until", UTCDateTime(), nullable=True),
        sa.Column("retry_after_until", UTCDateTime(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("provider_health")
    op.drop_index("ix_provider_keys_account_id", table_name="provider_keys")
    op.drop_table("provider_keys")
