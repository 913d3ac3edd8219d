"""Usage through the pipeline: the SQS publisher, the UsageFunction consumer (redelivery, partial failures),
the REST routes (summary, events, balance, ledger, invoices) and tenancy."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import boto3
from moto import mock_aws
from sqlalchemy import func, select

from airies.billing.invoicing import InvoicingService
from airies.billing.metering import SqsUsagePublisher
from airies.billing.models import UsageEventRecord
from airies.billing.schemas import UsageEvent
from airies.billing.usage import UsageService
from airies.local.invoke import LambdaContext, _clear_container_caches, load_handler, patched_environ, resolve_function
from airies.local.template import function_environment
from tests.conftest import signup


def usage(account_id: str, key: str, **kw) -> UsageEvent:
    fields = {
        "component": "llm_input_tokens",
        "quantity": Decimal("1200"),
        "provider": "openai",
        "model": "gpt-4o-mini",
    }
    fields.update(kw)
    return UsageEvent(idempotency_key=key, account_id=account_id, **fields)


def account_of(client, auth) -> str:
    return client.get("/api/v1/billing/balance", headers=auth).json()["account_id"]


def sqs_event(messages: list[tuple[str, str]]) -> dict:
    return {
        "Records": [
            {
                "messageId": message_id,
                "receiptHandle": f"rh-{message_id}",
                "body": body,
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": "1764108000000",
                    "SenderId": "AIDAUSAGE",
                    "ApproximateFirstReceiveTimestamp": "1764108000001",
                },
                "messageAttributes": {},
                "md5OfBody": "00000000000000000000000000000000",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:usage",
                "awsRegion": "us-east-1",
            }
            for message_id, body in messages
        ]
    }


def test_sqs_publisher_and_consumer_count_redelivered_events_once(client, auth, database, capsys, monkeypatch):
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    account_id = account_of(client, auth)
    events = [usage(account_id, f"turn-{i}:in") for i in range(12)]
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        queue_url = sqs.create_queue(QueueName="usage")["QueueUrl"]
        SqsUsagePublisher(queue_url, sqs).publish(events)
        bodies = []
        while True:
            got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
            if not got:
                break
            bodies += [(m["MessageId"], m["Body"]) for m in got]
    assert len(bodies) == 12

    spec, ctx = resolve_function("UsageFunction")
    env = {**function_environment(spec, ctx), "DATABASE_URL": database.url}
    with patched_environ(env):
        _clear_container_caches()
        handler, module = load_handler(spec)
        try:
            # The batch, then a redelivery of part of it plus one poison message.
            capsys.readouterr()
            first = handler(sqs_event(bodies[:10]), LambdaContext(spec))
            second = handler(sqs_event([*bodies[5:], ("poison", "{not json")]), LambdaContext(spec))
        finally:
            module.usage.database.dispose()
            _clear_container_caches()
    assert first == {"batchItemFailures": []}
    assert second == {"batchItemFailures": [{"itemIdentifier": "poison"}]}
    # The EMF metric counts what was booked: 10, then the 2 new events of the redelivered batch (not its duplicates).
    booked = [
        sum(doc["UsageEventsBooked"]) if isinstance(doc["UsageEventsBooked"], list) else doc["UsageEventsBooked"]
        for doc in map(
            json.loads, filter(lambda line: '"UsageEventsBooked"' in line, capsys.readouterr().out.split("\n"))
        )
    ]
    assert booked == [10, 2]
    with database.session() as s:
        count = s.scalar(select(func.count()).where(UsageEventRecord.account_id == account_id))
    assert count == 12
    svc = UsageService(database)
    assert svc.ledger_sum(account_id) == svc.ensure_account(account_id).balance_micros


def test_usage_routes_summary_events_and_tenancy(client, auth, database):
    account_id = account_of(client, auth)
    other = signup(client)
    other_id = account_of(client, other)
    now = datetime.now(UTC)
    svc = UsageService(database)
    svc.track_usage(
        [
            usage(account_id, "a:in", agent_id="agt_1", occurred_at=now),
            usage(
                account_id,
                "a:out",
                component="llm_output_tokens",
                quantity=Decimal("300"),
                agent_id="agt_1",
                occurred_at=now,
            ),
            usage(
                account_id,
                "b:stt",
                component="stt_seconds",
                quantity=Decimal("12.5"),
                provider="deepgram",
                model="nova-3",
                agent_id="agt_2",
                occurred_at=now,
            ),
            usage(other_id, "x:in", occurred_at=now),
        ]
    )
    summary = client.get("/api/v1/usage", params={"group_by": "agent_id,component"}, headers=auth).json()
    keys = [(r["key"]["agent_id"], r["key"]["component"]) for r in summary["rows"]]
    assert keys == [("agt_1", "llm_input_tokens"), ("agt_1", "llm_output_tokens"), ("agt_2", "stt_seconds")]
    stt = summary["rows"][2]
    assert stt["quantity"] == "12.5"
    # deepgram $0.0043/min: 12.5 s = $0.000895833.. * 1.5 markup / $0.01 = 0.134375 credits (free tier)
    assert stt["credits"] == "0.134375"
    events = client.get("/api/v1/usage/events", params={"limit": 2}, headers=auth).json()
    assert len(events["data"]) == 2 and events["has_more"]
    rest = client.get("/api/v1/usage/events", params={"cursor": events["next_cursor"]}, headers=auth).json()
    assert len(rest["data"]) == 1 and not rest["has_more"]
    assert client.get("/api/v1/usage", params={"group_by": "password"}, headers=auth).status_code == 400
    ledger = client.get("/api/v1/billing/ledger", headers=auth).json()["data"]
    assert {e["entry_type"] for e in ledger} == {"grant", "usage_debit"}
    total = sum(Decimal(e["amount"]) for e in ledger)
    assert str(total) == client.get("/api/v1/billing/balance", headers=auth).json()["balance"]

    with database.session() as s:
        invoice = InvoicingService(s).prepare_invoice(other_id, now.strftime("%Y-%m"))
    assert client.get(f"/api/v1/billing/invoices/{invoice.id}", headers=auth).status_code == 404
    mine = client.get(f"/api/v1/billing/invoices/{invoice.id}", headers=other)
    assert mine.status_code == 200 and mine.json()["status"] == "no_charge"  # free tier usage is never invoiced
    assert client.get("/api/v1/billing/invoices", headers=other).json()["data"][0]["id"] == invoice.id
    assert client.get("/api/v1/billing/invoices", headers=auth).json()["data"] == []
    assert json.loads(client.get("/api/v1/billing/plans", headers=auth).text)["tiers"][0]["name"] == "free"
