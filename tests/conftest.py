"""Shared fixtures. Every test that takes ``database`` (or ``client``) runs on SQLite AND PostgreSQL.

PostgreSQL is required: if it cannot be reached the run fails, it never skips.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from airies.core.config import Settings
from airies.core.database import Database
from airies.llm.service import reset_health_trackers
from airies.local.moto_lock import linearize_in_process_moto
from airies.migrations.models import metadata
from airies.migrations.runner import upgrade_head

PG_ADMIN_URL = os.environ.get("AIRIES_TEST_PG_URL", "postgresql+pg8000://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgresql"]

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Airies")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
linearize_in_process_moto()  # a turn calls DynamoDB from several threads; moto's backends need one at a time


def _pg_url(name: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    name = f"airies_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.fail(f"PostgreSQL is required for the tests and is not reachable at {PG_ADMIN_URL}: {exc}")
    url = _pg_url(name)
    upgrade_head(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("db") / "airies.db"
    url = f"sqlite:///{path}"
    upgrade_head(url)
    return url


_databases: dict[str, Database] = {}


def _truncate(database: Database) -> None:
    tables = [table.name for table in reversed(metadata.sorted_tables)]
    with database.engine.begin() as conn:
        if database.dialect == "postgresql":
            existing = set(conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname='public'")).scalars())
            names = ", ".join(f'"{t}"' for t in tables if t in existing)
            if names:
                conn.execute(text(f"TRUNCATE {names} CASCADE"))
        else:
            for table in tables:
                conn.execute(text(f'DELETE FROM "{table}"'))


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest) -> Iterator[Database]:
    backend = request.param
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "postgres_url")
    if url not in _databases:
        _databases[url] = Database(url, pool_size=5, max_overflow=10)
    db = _databases[url]
    # Provider health lives per container and per database URL, and every test shares these URLs: a breaker one
    # test opened must not route the next test's calls.
    reset_health_trackers()
    yield db
    _truncate(db)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # The queues are pinned: a test's usage and events go straight to the ledger and the events table, whatever an
    # in-process invocation (a state machine's task on a worker thread) has set in the environment meanwhile.
    return Settings(
        stage="local", data_dir=tmp_path, allow_public_signup=True, usage_queue_url=None, webhook_queue_url=None
    )


@pytest.fixture
def app(settings: Settings, database: Database):  # type: ignore[no-untyped-def]
    from airies.api.app import create_app

    return create_app(settings, database)


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    with TestClient(app) as test_client:
        yield test_client


def signup(client, email: str | None = None) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Create an account and return its auth headers."""
    email = email or f"owner-{uuid.uuid4().hex[:8]}@example.com"
    response = client.post("/api/v1/accounts", json={"name": "Test Co", "email": email})
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['api_key']}"}


@pytest.fixture
def auth(client) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return signup(client)
