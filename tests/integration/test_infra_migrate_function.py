"""MigrateFunction (functions/migrate/handler.py) under the local invoker: the stack's DatabaseMigrations custom
resource and the direct ``make migrate`` invocation, on an empty SQLite and an empty PostgreSQL database.

CloudFormation's side is played by a local HTTP server that receives the answer PUT to the request's
``ResponseURL``, as CloudFormation's presigned S3 URL would.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from airies.local.invoke import invoke_function
from airies.migrations.runner import alembic_config
from tests.conftest import PG_ADMIN_URL, _pg_url


class CloudFormationDouble:
    """Receives the custom resource's answers (PUT to the presigned ResponseURL)."""

    def __init__(self) -> None:
        self.answers: list[dict[str, Any]] = []
        self.content_types: list[str | None] = []
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                double.answers.append(json.loads(body))
                double.content_types.append(self.headers.get("Content-Type"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/cfn-response?X-Amz-Signature=local"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def cloudformation() -> Iterator[CloudFormationDouble]:
    double = CloudFormationDouble()
    yield double
    double.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database no migration has touched yet."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    name = f"airies_migrate_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield _pg_url(name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def cfn_event(request_type: str, response_url: str, physical_id: str | None = None) -> dict[str, Any]:
    event = {
        "RequestType": request_type,
        "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:m",
        "ResponseURL": response_url,
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/airies-dev/0f0f",
        "RequestId": str(uuid.uuid4()),
        "LogicalResourceId": "DatabaseMigrations",
        "ResourceType": "Custom::DatabaseMigrations",
        "ResourceProperties": {
            "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:m",
            "MigrationsLayer": "v1",
        },
    }
    if physical_id:
        event["PhysicalResourceId"] = physical_id
    return event


def revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if "alembic_version" not in inspect(conn).get_table_names():
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    finally:
        engine.dispose()


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def head(url: str) -> str:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def migrate(event: dict[str, Any], url: str) -> Any:
    return invoke_function("MigrateFunction", event, env={"DATABASE_URL": url})


def test_create_migrates_an_empty_database_and_answers_cloudformation(empty_database_url, cloudformation):
    url = empty_database_url
    assert revision(url) is None
    event = cfn_event("Create", cloudformation.url)
    result = migrate(event, url)
    assert result["status"] == "upgraded" and result["previous"] is None
    assert revision(url) == head(url)
    assert {"accounts", "agents", "conversations", "invoices"} <= tables(url)
    (answer,) = cloudformation.answers
    assert answer["Status"] == "SUCCESS", answer
    assert answer["PhysicalResourceId"] == "airies-database-migrations"
    assert (answer["RequestId"], answer["StackId"]) == (event["RequestId"], event["StackId"])
    assert answer["LogicalResourceId"] == "DatabaseMigrations"
    assert answer["Data"]["revision"] == head(url)
    assert cloudformation.content_types == [""], "the presigned URL signs no content type"

    # The next deployment (a new layer version) sends Update: nothing to do, still a success, same resource.
    again = migrate(cfn_event("Update", cloudformation.url, answer["PhysicalResourceId"]), url)
    assert again["status"] == "at_head"
    assert cloudformation.answers[-1]["Status"] == "SUCCESS"
    assert cloudformation.answers[-1]["PhysicalResourceId"] == "airies-database-migrations"


def test_a_database_ahead_of_the_code_is_left_alone(empty_database_url, cloudformation):
    """A rollback to older code sends Update with the old layer: it must neither fail nor downgrade."""
    url = empty_database_url
    migrate(cfn_event("Create", cloudformation.url), url)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00d_from_newer_code'"))
    engine.dispose()
    result = migrate(cfn_event("Update", cloudformation.url, "airies-database-migrations"), url)
    assert result["status"] == "ahead"
    assert cloudformation.answers[-1]["Status"] == "SUCCESS"
    assert revision(url) == "f00d_from_newer_code"


def test_delete_keeps_schema_and_data(empty_database_url, cloudformation):
    url = empty_database_url
    migrate(cfn_event("Create", cloudformation.url), url)
    before = tables(url)
    result = migrate(cfn_event("Delete", cloudformation.url, "airies-database-migrations"), url)
    assert result == {"status": "kept"}
    assert cloudformation.answers[-1]["Status"] == "SUCCESS"
    assert tables(url) == before and revision(url) == head(url)


def test_a_failed_migration_answers_failed_instead_of_leaving_cloudformation_waiting(cloudformation):
    unreachable = "postgresql+pg8000://postgres@127.0.0.1:1/nothing_listens_here"
    result = migrate(cfn_event("Create", cloudformation.url), unreachable)
    assert result == {"status": "failed"}
    (answer,) = cloudformation.answers
    assert answer["Status"] == "FAILED"
    assert answer["Reason"].startswith("migration failed:")


def test_direct_invocation_migrates_and_reports(empty_database_url):
    url = empty_database_url
    first = invoke_function("MigrateFunction", {"action": "upgrade"}, env={"DATABASE_URL": url})
    assert first == {"status": "upgraded", "revision": head(url), "previous": None}
    second = invoke_function("MigrateFunction", {}, env={"DATABASE_URL": url})
    assert second == {"status": "at_head", "revision": head(url), "previous": head(url)}
    with pytest.raises(ValueError, match="malformed migration event"):
        invoke_function("MigrateFunction", {"action": "downgrade"}, env={"DATABASE_URL": url})
