"""The Alembic chain must create exactly what the ORM models describe, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from airies.core.models import Base
from airies.migrations.runner import alembic_config


def test_single_head(database):
    script = ScriptDirectory.from_config(alembic_config(database.url))
    assert len(script.get_heads()) == 1


def test_models_match_migrations(database):
    with database.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": False})
        diff = compare_metadata(context, Base.metadata)
    # Extension-managed objects (e.g. pgvector tables created conditionally) opt out by name.
    diff = [d for d in diff if not (isinstance(d, tuple) and "alembic_version" in str(d))]
    assert diff == [], diff


def test_schema_is_at_head(database):
    script = ScriptDirectory.from_config(alembic_config(database.url))
    with database.engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    assert current == script.get_current_head()
