"""billing capability tables (owned by its issue; empty until it lands)

Revision ID: 0005_billing
Revises: 0004_knowledge
"""

from __future__ import annotations

revision = "0005_billing"
down_revision = "0004_knowledge"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
