"""Typed edges: every handler parses its event with a Parser model; a malformed event is a clear logged error that
is answered (4xx, a partial batch failure) or raised as ``MalformedEvent`` (state machine tasks), never a crash loop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.parser.models import SqsRecordModel
from pydantic import BaseModel, Json

from airies.core.config import PROJECT_ROOT
from airies.core.events import MalformedEvent, parse_event
from airies.core.sqs_batch import BatchFailed, process_sqs_batch
from airies.local.invoke import invoke_function

EVENTS = PROJECT_ROOT / "infra" / "events"


def sample(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / f"{name}.json").read_text())


class Shape(BaseModel):
    days: list[int]


def test_parse_event_logs_locations_not_values(caplog) -> None:  # type: ignore[no-untyped-def]
    assert parse_event(Shape, {"days": [1, "2"]}).days == [1, 2]
    with pytest.raises(MalformedEvent) as caught:
        parse_event(Shape, {"days": ["secret-value"]}, source="test source")
    assert caught.value.errors[0]["loc"] == ["days", 0]
    assert "malformed test source event: days.0:" in str(caught.value)
    (record,) = [r for r in caplog.records if r.getMessage() == "malformed event"]
    assert record.source == "test source" and record.errors[0]["loc"] == ["days", 0]
    assert "secret-value" not in repr(record.__dict__)


def _sqs_record(message_id: str, body: str) -> dict[str, Any]:
    record = sample("IngestionFunction.s3-test-event")["Records"][0]
    return {**record, "messageId": message_id, "body": body}


class OrderMessage(SqsRecordModel):
    body: Json[Shape]  # type: ignore[assignment]


def _order_batch(*bodies: tuple[str, str]) -> dict[str, Any]:
    return {"Records": [_sqs_record(message_id, body) for message_id, body in bodies]}


def test_a_partial_batch_reports_the_records_that_failed_in_order(caplog) -> None:  # type: ignore[no-untyped-def]
    handled: list[list[int]] = []

    def handle(record: OrderMessage) -> None:
        if record.body.days == [13]:
            raise RuntimeError("unlucky day")
        handled.append(record.body.days)

    event = _order_batch(
        ("a", json.dumps({"days": [1]})),
        ("b", json.dumps({"days": ["secret-value"]})),
        ("c", json.dumps({"days": [13]})),
        ("d", json.dumps({"days": [2, 3]})),
    )
    assert process_sqs_batch(event, OrderMessage, handle) == {
        "batchItemFailures": [{"itemIdentifier": "b"}, {"itemIdentifier": "c"}]
    }
    assert handled == [[1], [2, 3]]
    failed = [r for r in caplog.records if r.getMessage() == "SQS record failed"]
    assert [r.message_id for r in failed] == ["b", "c"]
    assert all("secret-value" not in repr(r.__dict__) for r in caplog.records)


def test_a_batch_of_which_every_record_failed_raises() -> None:
    event = _order_batch(("a", "{oops"), ("b", json.dumps({"days": [13, "x"]})))
    with pytest.raises(BatchFailed, match="all 2 records"):
        process_sqs_batch(event, OrderMessage, lambda record: None)


def test_a_failed_record_without_a_message_id_fails_the_whole_batch() -> None:
    event = _order_batch(("a", json.dumps({"days": [1]})), ("b", "{oops"))
    del event["Records"][1]["messageId"]
    with pytest.raises(BatchFailed, match="no messageId"):
        process_sqs_batch(event, OrderMessage, lambda record: None)


@pytest.mark.parametrize("event", [{}, {"Records": "all of them"}, {"Records": None}])
def test_an_event_without_a_list_of_records_is_malformed(event: dict[str, Any]) -> None:
    with pytest.raises(MalformedEvent, match="Records"):
        process_sqs_batch(event, OrderMessage, lambda record: None)


def test_an_empty_batch_has_no_failures() -> None:
    assert process_sqs_batch({"Records": []}, OrderMessage, lambda record: None) == {"batchItemFailures": []}


def test_an_sqs_record_of_the_wrong_shape_fails_alone(database) -> None:  # type: ignore[no-untyped-def]
    test_event = sample("IngestionFunction.s3-test-event")["Records"][0]
    event = {
        "Records": [
            test_event,
            _sqs_record("not-json", "{oops"),
            _sqs_record("not-s3", json.dumps({"hello": "world"})),
        ]
    }
    result = invoke_function("IngestionFunction", event, env={"DATABASE_URL": database.url})
    assert result == {"batchItemFailures": [{"itemIdentifier": "not-json"}, {"itemIdentifier": "not-s3"}]}


def test_a_scrape_message_that_is_no_job_is_acknowledged(database) -> None:  # type: ignore[no-untyped-def]
    record = sample("ScrapeWorkerFunction.unknown-job")["Records"][0]
    event = {"Records": [{**record, "body": json.dumps({"type": "other"})}, {**record, "messageId": "x", "body": "[]"}]}
    result = invoke_function("ScrapeWorkerFunction", event, env={"DATABASE_URL": database.url})
    assert result == {"batchItemFailures": [{"itemIdentifier": "x"}]}


@pytest.mark.parametrize(
    ("function", "event"),
    [
        ("BillingInvoiceFunction", {"action": "refund_everyone"}),
        ("BillingInvoiceFunction", {"action": "finalize"}),  # no invoice_id
        ("IngestionTaskFunction", {"task": "embed", "document_id": "kdoc_1", "start": "a", "end": 2}),
        ("UsageRollupFunction", {"days": ["yesterday"]}),
        ("MigrateFunction", {"RequestType": "Create"}),  # no ResponseURL to answer: nothing else to do
    ],
)
def test_a_malformed_task_input_raises_malformed_event(database, function: str, event: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MalformedEvent):
        invoke_function(function, event, env={"DATABASE_URL": database.url})


@pytest.mark.parametrize(
    ("function", "base"),
    [
        ("VoiceConnectFunction", "VoiceConnectFunction.no-token"),
        ("VoiceMessageFunction", "VoiceMessageFunction.unknown-connection"),
        ("VoiceDisconnectFunction", "VoiceDisconnectFunction"),
    ],
)
def test_a_websocket_event_without_its_request_context_is_a_400(database, function: str, base: str) -> None:  # type: ignore[no-untyped-def]
    event = {key: value for key, value in sample(base).items() if key != "requestContext"}
    assert invoke_function(function, event, env={"DATABASE_URL": database.url}) == {"statusCode": 400}


@pytest.mark.parametrize("function", ["ApiFunction", "StripeWebhookFunction"])
def test_an_http_function_answers_a_non_http_event_with_a_json_400(database, function: str) -> None:  # type: ignore[no-untyped-def]
    response = invoke_function(function, {"hello": "world"}, env={"DATABASE_URL": database.url})
    assert response["statusCode"] == 400
    assert json.loads(response["body"])["error"]["code"] == "invalid_request"


def test_no_handler_reads_its_raw_event_with_get() -> None:
    for path in Path(PROJECT_ROOT / "functions").rglob("*.py"):
        assert "event.get(" not in path.read_text(), path
