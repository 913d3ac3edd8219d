"""The container's secret readers and what a SnapStart snapshot loads ahead, with the real SDK against moto."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from airies.core import aws
from airies.core.config import SecretCredentials

# boto3's service name -> the service id its client-class event names, where they differ
SERVICE_IDS = {"secretsmanager": "secrets-manager", "stepfunctions": "sfn", "events": "eventbridge"}


def _service_id(name: str) -> str:
    return SERVICE_IDS.get(name, name)


@pytest.fixture
def clients_built(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The service of every client boto3's default session builds during the test."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    aws.forget_providers()
    built: list[str] = []

    def record(event_name: str, **_: object) -> None:
        built.append(event_name.removeprefix("creating-client-class."))

    with mock_aws():  # (it resets boto3's default session: the recorder goes on the one it leaves)
        boto3.setup_default_session()
        assert boto3.DEFAULT_SESSION is not None
        boto3.DEFAULT_SESSION.events.register("creating-client-class", record)
        yield built
    aws.forget_providers()
    boto3.DEFAULT_SESSION = None


@pytest.mark.parametrize("initialization", ["on-demand", "provisioned-concurrency", None])
def test_nothing_is_built_ahead_outside_a_snapshot(
    monkeypatch: pytest.MonkeyPatch, clients_built: list[str], initialization: str | None
) -> None:
    if initialization is None:
        monkeypatch.delenv("AWS_LAMBDA_INITIALIZATION_TYPE", raising=False)
    else:
        monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", initialization)
    aws.prime_for_snapshot()
    assert clients_built == []
    aws.secrets_provider()  # built at first use instead
    assert clients_built == [_service_id("secretsmanager")]


def test_a_snapshot_holds_the_secret_readers_and_the_service_models(
    monkeypatch: pytest.MonkeyPatch, clients_built: list[str]
) -> None:
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start")
    aws.prime_for_snapshot()
    assert sorted(clients_built) == sorted(map(_service_id, ("secretsmanager", "ssm", *aws.SNAPSHOT_SERVICES)))
    built_ahead = len(clients_built)
    # A restored container's first database connection reads the secret with what the snapshot holds.
    name = f"airies/db-{uuid.uuid4().hex[:8]}"
    secret = {"username": "app", "password": "pw", "host": "db.internal", "port": 5432, "dbname": "airies"}
    boto3.client("secretsmanager").create_secret(Name=name, SecretString=json.dumps(secret))
    del clients_built[built_ahead:]  # the test's own client
    assert SecretCredentials(name).connect_params() == {
        "user": "app",
        "password": "pw",
        "host": "db.internal",
        "port": 5432,
        "database": "airies",
    }
    assert len(clients_built) == built_ahead  # no client built for the read


def test_the_readers_cache_and_read_again_when_asked(clients_built: list[str]) -> None:
    name = f"airies/db-{uuid.uuid4().hex[:8]}"
    client = boto3.client("secretsmanager")
    client.create_secret(Name=name, SecretString=json.dumps({"username": "old", "host": "h"}))
    credentials = SecretCredentials(name)
    assert credentials.connect_params()["user"] == "old"
    client.put_secret_value(SecretId=name, SecretString=json.dumps({"username": "new", "host": "h"}))
    assert credentials.connect_params()["user"] == "old"  # cached
    assert credentials.connect_params(refresh=True)["user"] == "new"
    ssm = boto3.client("ssm")
    ssm.put_parameter(Name="/airies/keys/groq_api_key", Value="gsk-1", Type="SecureString")
    assert aws.ssm_provider().get("/airies/keys/groq_api_key", decrypt=True) == "gsk-1"
