"""voice capability tables (owned by its issue; empty until it lands)

Revision ID: 0003_voice
Revises: 0002_llm
"""

from __future__ import annotations

revision = "0003_voice"
down_revision = "0002_llm"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
