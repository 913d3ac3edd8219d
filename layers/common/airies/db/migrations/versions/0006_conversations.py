"""conversations capability tables (owned by its issue; empty until it lands)

Revision ID: 0006_conversations
Revises: 0005_billing
"""

from __future__ import annotations

revision = "0006_conversations"
down_revision = "0005_billing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
