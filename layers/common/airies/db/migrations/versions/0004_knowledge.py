"""knowledge capability tables (owned by its issue; empty until it lands)

Revision ID: 0004_knowledge
Revises: 0003_voice
"""

from __future__ import annotations

revision = "0004_knowledge"
down_revision = "0003_voice"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
