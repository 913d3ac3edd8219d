"""A usage event whose idempotency key was already recorded with another body: the first body stays recorded and
billed, the other is kept as a conflict (status ``conflict`` in ``GET /usage/events``), logged with both bodies'
hashes and counted in a metric; never charged, never silently dropped. On both databases."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from airies.billing.metering import USAGE_CONFLICTS_METRIC, usage_body_hash
from airies.billing.schemas import UsageEvent
from airies.billing.usage import UsageService
from airies.core.metrics import MonitoringService

NOW = datetime.now(UTC).replace(microsecond=0)


def usage_event(account_id: str, key: str, tokens: str, **kw: Any) -> UsageEvent:
    fields: dict[str, Any] = {"provider": "openai", "model": "gpt-4o", "occurred_at": NOW, **kw}
    return UsageEvent(
        idempotency_key=key, account_id=account_id, component="llm_output_tokens", quantity=Decimal(tokens), **fields
    )


@pytest.fixture
def metrics(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    service = MonitoringService(namespace="AiriesTest", service="usage")
    service.metrics.clear_metrics()
    yield service
    service.metrics.clear_metrics()


def conflict_metrics(out: str) -> list[dict[str, Any]]:
    docs = [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"_aws"' in line]
    return [d for d in docs if USAGE_CONFLICTS_METRIC in d]


@pytest.fixture
def account(client, auth) -> str:  # type: ignore[no-untyped-def]
    return client.get("/api/v1/accounts/me", headers=auth).json()["id"]


def events(client, auth, **params: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    response = client.get("/api/v1/usage/events", params=params, headers=auth)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_a_key_seen_with_another_body_keeps_the_first_and_records_the_conflict(  # type: ignore[no-untyped-def]
    client, auth, account, database, metrics, capsys, caplog
) -> None:
    usage = UsageService(database, monitoring=metrics)
    first, other = usage_event(account, "turn-1:out", "1000"), usage_event(account, "turn-1:out", "9000")
    assert usage.track_usage([first]).accepted == 1
    balance = client.get("/api/v1/billing/balance", headers=auth).json()["balance"]
    capsys.readouterr()

    with caplog.at_level(logging.WARNING, logger="airies.billing.metering"):
        result = usage.track_usage([other])
    assert (result.accepted, result.duplicates, result.conflicts, result.charged_micros) == (0, 0, 1, 0)
    assert client.get("/api/v1/billing/balance", headers=auth).json()["balance"] == balance  # not charged

    # Logged with both bodies' hashes, and counted.
    (record,) = [r for r in caplog.records if "usage event conflict" in r.getMessage()]
    assert usage_body_hash(first) in record.getMessage() and usage_body_hash(other) in record.getMessage()
    assert record.refused_body_hash == usage_body_hash(other) and record.recorded_body_hash == usage_body_hash(first)
    (metric,) = conflict_metrics(capsys.readouterr().out)
    assert metric[USAGE_CONFLICTS_METRIC] == [1.0] and metric["component"] == "llm_output_tokens"

    listed = events(client, auth)
    assert [(e["status"], e["quantity"]) for e in listed] == [("conflict", "9000"), ("recorded", "1000")]
    conflict, recorded = listed
    assert conflict["conflicts_with"] == recorded["id"] and recorded["conflicts_with"] is None
    assert conflict["idempotency_key"] == recorded["idempotency_key"] == "turn-1:out"
    assert conflict["credits"] == "0.000000" and recorded["credits"] == "1.500000"
    assert [e["id"] for e in events(client, auth, status="conflict")] == [conflict["id"]]
    assert [e["id"] for e in events(client, auth, status="recorded")] == [recorded["id"]]
    page = client.get("/api/v1/usage/events?limit=1", headers=auth).json()
    assert [e["id"] for e in page["data"]] == [conflict["id"]] and page["has_more"]
    rest = events(client, auth, limit="1", cursor=page["next_cursor"])
    assert [e["id"] for e in rest] == [recorded["id"]]

    # Redeliveries: the first body is a duplicate; the conflicting body is kept, logged and counted once.
    capsys.readouterr()
    again = usage.track_usage([first, other])
    assert (again.accepted, again.duplicates, again.conflicts) == (0, 1, 1)
    assert conflict_metrics(capsys.readouterr().out) == []
    assert len(events(client, auth)) == 2


def test_a_conflicting_body_in_the_same_batch_is_recorded_too(client, auth, account, database, metrics) -> None:  # type: ignore[no-untyped-def]
    usage = UsageService(database, monitoring=metrics)
    result = usage.track_usage(
        [usage_event(account, "turn-2:out", "1000"), usage_event(account, "turn-2:out", "1000", model="gpt-4o-mini")]
    )
    assert (result.accepted, result.conflicts) == (1, 1)
    listed = events(client, auth)
    assert sorted((e["status"], e["model"]) for e in listed) == [("conflict", "gpt-4o-mini"), ("recorded", "gpt-4o")]


def test_the_same_fact_sent_again_later_is_a_duplicate_not_a_conflict(client, auth, account, database, metrics) -> None:  # type: ignore[no-untyped-def]
    """What is compared is what the event bills; a rebuilt event has a new time and may carry other metadata."""
    usage = UsageService(database, monitoring=metrics)
    usage.track_usage([usage_event(account, "turn-3:out", "1000", metadata={"try": 1})])
    later = usage_event(account, "turn-3:out", "1000.0", occurred_at=NOW + timedelta(seconds=5), metadata={"try": 2})
    result = usage.track_usage([later])
    assert (result.accepted, result.duplicates, result.conflicts) == (0, 1, 0)
    assert [e["status"] for e in events(client, auth)] == ["recorded"]


def test_another_account_with_the_same_key_is_its_own_event(client, auth, account, database, metrics) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import signup

    other_auth = signup(client)
    other = client.get("/api/v1/accounts/me", headers=other_auth).json()["id"]
    usage = UsageService(database, monitoring=metrics)
    usage.track_usage([usage_event(account, "shared:key", "1000")])
    result = usage.track_usage([usage_event(other, "shared:key", "5000")])
    assert (result.accepted, result.conflicts) == (1, 0)
    assert [e["status"] for e in events(client, other_auth)] == ["recorded"]
