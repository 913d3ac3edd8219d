"""The SQS path under moto, wired as template.yaml wires it: the API publishes to WebhookQueue, WebhookFunction (its
handler, loaded as Lambda loads it) POSTs to a real receiver, re-enqueues a retry with its delay, and sends an event
that failed for good to WebhookDeadLetterQueue. Also: the local stack consumes WebhookQueue like the other queues."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from airies.core.config import Settings, get_settings
from airies.core.database import get_database
from airies.local.event_sources import sqs_sources, start_queue_workers
from airies.local.invoke import LambdaContext, _clear_container_caches, load_handler, patched_environ, resolve_function
from airies.local.template import (
    DEFAULT_ENV_FILE,
    LocalContext,
    create_local_resources,
    function_environment,
    function_specs,
    load_env_file,
    load_template,
)
from airies.webhooks.routes import delivery_queue
from airies.webhooks.schemas import EndpointPut
from airies.webhooks.service import WebhookService, build_webhook_publisher
from tests.doubles.webhook_receiver import WebhookReceiver
from tests.kb_support import new_account

API = "/api/v1"
SPEC, CTX = resolve_function("WebhookFunction")
TEMPLATE_ENV = function_environment(SPEC, CTX)
QUEUE_URL = TEMPLATE_ENV["AIRIES_WEBHOOK_QUEUE_URL"]
DLQ_URL = TEMPLATE_ENV["AIRIES_WEBHOOK_DEAD_LETTER_QUEUE_URL"]


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as running:
        yield running


@pytest.fixture
def sqs() -> Iterator[object]:
    with mock_aws():
        client = boto3.client("sqs", region_name="us-east-1")
        for url in (QUEUE_URL, DLQ_URL):
            assert url is not None
            client.create_queue(QueueName=url.rsplit("/", 1)[1])
        yield client


@pytest.fixture
def settings(tmp_path, receiver, sqs) -> Settings:
    return Settings(
        stage="local",
        data_dir=tmp_path,
        allow_public_signup=True,
        url_guard_allowed_hosts=receiver.host,
        webhook_queue_url=QUEUE_URL,
        webhook_dead_letter_queue_url=DLQ_URL,
        webhook_retry_base_s=1,
    )


def receive(sqs, url: str, wait_s: int = 0) -> list[dict]:
    messages = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_s, MessageSystemAttributeNames=["All"]
    ).get("Messages", [])
    for message in messages:
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return messages


def sqs_event(messages: list[dict]) -> dict:
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m["Attributes"],  # what Lambda hands over; the Parser model requires them
                "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:airies-local-webhook-queue",
                "awsRegion": "us-east-1",
            }
            for m in messages
        ]
    }


@pytest.fixture
def worker(database, settings, receiver):
    """WebhookFunction's handler with its template environment, on the test database and data dir (one key file)."""
    env = {
        **TEMPLATE_ENV,
        "DATABASE_URL": database.url,
        "AIRIES_DATA_DIR": str(settings.data_dir),
        "AIRIES_URL_GUARD_ALLOWED_HOSTS": receiver.host,
        "AIRIES_WEBHOOK_RETRY_BASE_S": "1",
    }
    with patched_environ(env):
        _clear_container_caches()
        handler, module = load_handler(SPEC)
        try:
            yield lambda messages: handler(sqs_event(messages), LambdaContext(SPEC))
        finally:
            if module.deliverer.built is not None:
                module.deliverer.built.close()
            _clear_container_caches()


def test_the_sqs_path_retries_with_a_delay_then_delivers(client, auth, receiver, sqs, worker):
    assert client.app.dependency_overrides.get(delivery_queue) is None  # the app's own SQS queue
    receiver.secret = client.put(f"{API}/webhooks/endpoint", json={"url": receiver.url}, headers=auth).json()["secret"]
    receiver.fail_first = 1
    event = client.post(f"{API}/webhooks/test", headers=auth).json()

    first = receive(sqs, QUEUE_URL)
    assert [json.loads(m["Body"])["attempt"] for m in first] == [1]
    assert worker(first) == {"batchItemFailures": []}  # a 500 is handled: the retry is a new message
    retry = receive(sqs, QUEUE_URL, wait_s=5)  # enqueued with DelaySeconds (1-2 s at this base)
    assert [json.loads(m["Body"]) for m in retry] == [
        {"delivery_id": event["id"], "attempt": 2, "client_errors": 0, "not_before": None}
    ]
    assert worker(retry) == {"batchItemFailures": []}
    assert receive(sqs, QUEUE_URL) == [] and receive(sqs, DLQ_URL) == []
    assert [r.verified for r in receiver.received] == [True, True]
    got = client.get(f"{API}/webhooks/deliveries/{event['id']}", headers=auth).json()
    assert got["status"] == "delivered" and got["attempts"] == 2 and got["last_status_code"] == 200


def test_an_event_that_failed_for_good_lands_in_the_dead_letter_queue(client, auth, receiver, sqs, worker):
    receiver.secret = client.put(f"{API}/webhooks/endpoint", json={"url": receiver.url}, headers=auth).json()["secret"]
    receiver.status = 410
    event = client.post(f"{API}/webhooks/test", headers=auth).json()
    assert worker(receive(sqs, QUEUE_URL)) == {"batchItemFailures": []}
    (dead,) = receive(sqs, DLQ_URL)
    body = json.loads(dead["Body"])
    assert body["delivery_id"] == event["id"] and "410" in body["reason"]
    assert client.get(f"{API}/webhooks/endpoint", headers=auth).json()["enabled"] is False


def test_the_local_stack_consumes_the_webhook_queue() -> None:
    template = load_template()
    sources = {s.queue_logical_id: s.function.logical_id for s in sqs_sources(function_specs(template), template)}
    assert sources["WebhookQueue"] == "WebhookFunction"


def test_the_local_stack_delivers_through_its_queue_worker(database, monkeypatch, tmp_path, receiver):
    """As under ``make run``: the template's queues under moto, WebhookFunction's handler polled by the local
    event source, a publish through the configured queue reaching a real receiver, verified."""

    class Stack:
        def __init__(self, ctx, settings, database) -> None:
            self.context, self.settings, self.database = ctx, settings, database
            self.aws_endpoint_url = None
            self.stopping = threading.Event()

    with patched_environ({}), mock_aws():
        ctx = LocalContext(template=load_template(), env_file=load_env_file(DEFAULT_ENV_FILE), region="us-east-1")
        create_local_resources(ctx)
        for key, value in TEMPLATE_ENV.items():  # the worker's environment, as make run applies it
            if value is not None and key.startswith("AIRIES_WEBHOOK"):
                monkeypatch.setenv(key, value)
        monkeypatch.setenv("DATABASE_URL", database.url)
        monkeypatch.setenv("AIRIES_DATA_DIR", str(tmp_path))
        monkeypatch.setenv("AIRIES_URL_GUARD_ALLOWED_HOSTS", receiver.host)
        get_settings.cache_clear()
        settings = get_settings()
        stack = Stack(ctx, settings, get_database(settings))
        try:
            start_queue_workers(stack)
            account_id = new_account(database)
            with database.session() as session:
                endpoint, _ = WebhookService(session, settings, queue=None).put_endpoint(
                    account_id, None, EndpointPut(url=receiver.url)
                )
            receiver.secret = endpoint.secret or ""
            event_id = build_webhook_publisher(settings, database).publish(
                account_id, None, "conversation.ended", {"conversation_id": "conv_local"}
            )
            deadline = time.monotonic() + 20
            while not receiver.received and time.monotonic() < deadline:
                time.sleep(0.1)
            (received,) = receiver.received
            assert received.verified and received.headers["Airies-Event-Id"] == event_id
        finally:
            stack.stopping.set()
            time.sleep(0.6)  # the poller notices within one idle sleep
            get_settings.cache_clear()
