"""PostgreSQL on AWS: TLS by default, and credentials from the secret read per connection (never at import), read
again once when the database refuses them (a rotated secret)."""

from __future__ import annotations

import json
import ssl
import uuid
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import event, text

from airies.core.config import SecretCredentials, Settings
from airies.core.database import Database, database_ssl_context, is_authentication_failure

PG = "postgresql+pg8000://postgres@127.0.0.1:5432/postgres"


class Stop(Exception):
    """Raised by the test's connect hook once it has seen the connection parameters."""


def connect_params(database: Database) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    @event.listens_for(database.engine, "do_connect")
    def _capture(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        seen.update(cparams)
        raise Stop

    with pytest.raises(Stop):
        database.engine.connect()
    database.dispose()
    return seen


def test_engine_speaks_tls_outside_the_local_stage(tmp_path) -> None:  # type: ignore[no-untyped-def]
    verify = connect_params(Database.from_settings(Settings(stage="prod", data_dir=tmp_path, database_url=PG)))
    context = verify["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname

    settings = Settings(stage="prod", data_dir=tmp_path, database_url=PG, database_ssl="require")
    required = connect_params(Database.from_settings(settings))["ssl_context"]
    assert required.verify_mode == ssl.CERT_NONE and not required.check_hostname

    for plain in (
        Settings(stage="local", data_dir=tmp_path, database_url=PG),
        Settings(stage="prod", data_dir=tmp_path, database_url=PG, database_ssl="disable"),
    ):
        assert "ssl_context" not in connect_params(Database.from_settings(plain))
    assert database_ssl_context(Settings(stage="local", data_dir=tmp_path, database_ssl="verify")) is not None


def test_a_ca_file_is_what_verify_trusts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((FileNotFoundError, ssl.SSLError)):
        database_ssl_context(Settings(stage="prod", data_dir=tmp_path, database_ssl_ca_file=tmp_path / "none.pem"))


def test_a_rotated_secret_is_read_again_after_an_authentication_failure(tmp_path) -> None:  # type: ignore[no-untyped-def]
    name = f"airies/db-rotation-{uuid.uuid4().hex[:8]}"
    stale = {"username": f"rotated_away_{uuid.uuid4().hex[:8]}", "password": "old", "host": "127.0.0.1", "port": 5432}
    with mock_aws():
        secrets = boto3.client("secretsmanager", region_name="us-east-1")
        settings = Settings(stage="prod", data_dir=tmp_path, database_secret_arn=name, database_ssl="disable")
        database = Database.from_settings(settings)  # before the secret even exists: nothing is read here
        secrets.create_secret(Name=name, SecretString=json.dumps({**stale, "dbname": "postgres"}))
        assert SecretCredentials(name).connect_params()["user"] == stale["username"]  # now in the 5-minute cache
        secrets.put_secret_value(
            SecretId=name,
            SecretString=json.dumps(
                {"username": "postgres", "password": "new", "host": "127.0.0.1", "port": 5432, "dbname": "postgres"}
            ),
        )  # rotated: the old user is gone, the cache still holds it
        try:
            with database.engine.connect() as conn:
                assert conn.execute(text("SELECT current_user")).scalar_one() == "postgres"
        finally:
            database.dispose()


def test_only_sqlstate_class_28_counts_as_an_authentication_failure() -> None:
    assert is_authentication_failure(Exception({"C": "28P01", "M": "password authentication failed"}))
    assert is_authentication_failure(Exception({"C": "28000", "M": 'role "x" does not exist'}))
    assert not is_authentication_failure(Exception({"C": "57P03", "M": "the database system is starting up"}))
    assert not is_authentication_failure(Exception("connection refused"))
