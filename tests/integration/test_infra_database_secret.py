"""On Lambda the database URL comes from the Secrets Manager secret (RDS's JSON shape), through Powertools
Parameters: exercised under moto, then used for a real connection to the machine's PostgreSQL."""

from __future__ import annotations

import json
import uuid

import boto3
from moto import mock_aws
from sqlalchemy import make_url, text

from airies.core.config import Settings
from airies.core.database import Database


def test_database_url_from_an_rds_style_secret_connects_to_postgresql(tmp_path) -> None:  # type: ignore[no-untyped-def]
    password = "p@ss:/w rd%?#"  # every character that must be quoted in a URL
    with mock_aws():
        secrets = boto3.client("secretsmanager", region_name="us-east-1")
        arn = secrets.create_secret(
            Name=f"airies/db-{uuid.uuid4().hex[:8]}",
            SecretString=json.dumps(
                {
                    "engine": "postgres",
                    "username": "postgres",
                    "password": password,
                    "host": "127.0.0.1",
                    "port": 5432,
                    "dbname": "postgres",
                }
            ),
        )["ARN"]
        settings = Settings(stage="prod", data_dir=tmp_path, database_url=None, database_secret_arn=arn)
        url = settings.resolved_database_url()

    parsed = make_url(url)
    assert (parsed.drivername, parsed.username, parsed.password) == ("postgresql+pg8000", "postgres", password)
    assert (parsed.host, parsed.port, parsed.database) == ("127.0.0.1", 5432, "postgres")
    database = Database(url)  # trust auth on this machine: the password is carried, not checked
    try:
        with database.engine.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar_one() == "postgres"
    finally:
        database.dispose()


def test_an_explicit_database_url_wins_over_the_secret(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(
        stage="prod", data_dir=tmp_path, database_url="sqlite:///x.db", database_secret_arn="arn:aws:secretsmanager:x"
    )
    assert settings.resolved_database_url() == "sqlite:///x.db"
