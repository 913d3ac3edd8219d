"""Programmatic ``alembic upgrade head`` (local server, tests, a deploy-time migration run)."""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

from airies.core.config import get_settings

ALEMBIC_INI = Path(__file__).with_name("alembic.ini")


def alembic_config(url: str) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(ALEMBIC_INI.parent))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_head(url: str) -> None:
    command.upgrade(alembic_config(url), "head")


def downgrade_base(url: str) -> None:
    command.downgrade(alembic_config(url), "base")


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else get_settings().resolved_database_url()
    upgrade_head(target)
    print("database at head")
