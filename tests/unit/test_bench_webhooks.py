"""The webhook benchmark's cost model: each line from its assumption, in USD per conversation."""

from __future__ import annotations

import pytest

from benchmarks.bench_webhooks import Assumptions, Prices, cost_per_conversation


def test_every_line_follows_from_its_assumption() -> None:
    a, p = Assumptions(turns=10, batch_size=10, webhook_memory_gb=1.0), Prices()
    cost = cost_per_conversation(5.0, a, p)
    lines = cost["lines"]
    assert cost["events"] == 22  # started, two per turn, ended
    assert lines["webhooks: sqs (send per event, receive + delete per batch)"] == pytest.approx((22 + 2 * 2.2) * 0.4e-6)
    assert lines["webhooks: lambda requests (one per batch)"] == pytest.approx(2.2 * 0.2e-6)
    assert lines["webhooks: lambda time (measured per event)"] == pytest.approx(22 * 0.005 * 1.0 * p.lambda_gb_s)
    assert lines["analysis: step functions transitions"] == pytest.approx(4 * 0.025 / 1000)
    assert cost["total"] == pytest.approx(cost["webhooks"] + cost["analysis"])
    assert cost["total"] == pytest.approx(sum(lines.values()))


def test_slower_delivery_costs_more_and_more_turns_more_events() -> None:
    assert cost_per_conversation(50.0)["webhooks"] > cost_per_conversation(5.0)["webhooks"]
    assert cost_per_conversation(5.0, Assumptions(turns=30))["events"] == 62
