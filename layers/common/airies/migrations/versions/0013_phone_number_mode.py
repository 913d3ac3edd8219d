"""phone numbers: telephony mode (ConversationRelay, or raw media through the media bridge)

Revision ID: 0013_phone_number_mode
Revises: 0012_tools_and_analysis
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_phone_number_mode"
down_revision = "0012_tools_and_analysis"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("phone_numbers") as batch:
        batch.add_column(sa.Column("telephony_mode", sa.String(20), nullable=False, server_default="relay"))


def downgrade() -> None:
    with op.batch_alter_table("phone_numbers") as batch:
        batch.drop_column("telephony_mode")
