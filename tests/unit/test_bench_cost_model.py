"""benchmarks/cost_model.py: each added line follows its assumption, and the total says what it includes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from airies.core.config import Settings
from benchmarks.cost_model import Assumptions, Measured, Prices, breakdown

# Ten simulated minutes shaped like the conversation benchmark's (4 audio frames a second, ~5 turns a minute).
BASE = Measured(
    minutes=10.0,
    turns=50,
    lambda_invocations=2450,
    lambda_gb_seconds=30.0,
    turn_gb_seconds=10.0,
    ws_in_units=2400,
    ws_out_units=1200,
    ws_out_bytes=20_000_000,
    ddb_write_units=9000,
    ddb_read_units=3000,
    sqs_requests=60,
    stored_chunks=1120,
)
LAMBDA_LINE = "lambda (measured frames + turns at real vendor latency)"


def test_real_vendor_latency_replaces_the_doubles_turn_time() -> None:
    fast = breakdown(BASE, replace(Assumptions(), turn_lambda_seconds=0.2))["usd_per_minute"][LAMBDA_LINE]
    slow = breakdown(BASE, replace(Assumptions(), turn_lambda_seconds=4.0))["usd_per_minute"][LAMBDA_LINE]
    # 50 turns x 4 s x 0.5 GB = 100 GB-s replace the 10 GB-s measured in turns: +90 GB-s over 10 minutes
    assert slow - fast == pytest.approx((100 - 10) * Prices().lambda_gb_s / 10, rel=1e-3)


def test_the_scanning_sweeper_grows_with_chunks_and_is_kept_out_of_the_design_total() -> None:
    result = breakdown(BASE)
    scan = result["not_in_total"]["a sweeper scanning the table (before the index; chunks kept 2 hours)"]
    doubled = breakdown(replace(BASE, stored_chunks=2 * BASE.stored_chunks))
    assert doubled["not_in_total"][
        "a sweeper scanning the table (before the index; chunks kept 2 hours)"
    ] == pytest.approx(2 * scan, rel=1e-6)
    assert result["total_with_scanning_sweeper"] == pytest.approx(result["total"] + scan, abs=1e-8)
    # 112 chunks a minute, each 8 KB read 120 times by eventually consistent scans: ~$0.0014 a minute.
    assert 0.001 < scan < 0.002
    # The index sweeper does not depend on chunks at all.
    assert (
        doubled["usd_per_minute"]["sweeper (index query, per call)"]
        == result["usd_per_minute"]["sweeper (index query, per call)"]
    )


def test_deleting_a_chunk_costs_its_put_again() -> None:
    result = breakdown(BASE)
    delete = result["not_in_total"]["explicit delete of used chunks (a short TTL does it free)"]
    assert delete == pytest.approx(112 * 8 * Prices().ddb_write_unit, rel=1e-6)


def test_fixed_costs_are_amortised_over_the_stated_volume() -> None:
    small = breakdown(BASE, replace(Assumptions(), monthly_minutes=100_000))
    large = breakdown(BASE, replace(Assumptions(), monthly_minutes=1_000_000))
    assert small["fixed_per_minute_at_monthly_minutes"] == pytest.approx(
        10 * large["fixed_per_minute_at_monthly_minutes"], rel=1e-3
    )
    assert small["fixed_monthly_usd"]["nat gateways (hours)"] == pytest.approx(2 * 0.045 * 720, abs=0.01)
    assert large["total_with_fixed"] > large["total"]


def test_every_line_is_in_the_total() -> None:
    result = breakdown(BASE)
    assert result["total"] == pytest.approx(sum(result["usd_per_minute"].values()), abs=1e-7)
    names = " ".join(result["usd_per_minute"])
    for part in (
        "lambda",
        "websocket",
        "dynamodb",
        "sqs",
        "sweeper",
        "nat",
        "data transfer",
        "logs",
        "x-ray",
        "snapstart",
    ):
        assert part in names


def test_the_index_sweeper_line_reads_and_reschedules_each_due_call() -> None:
    """16 shared shard queries, then per due call: its 2 KB session read once (consistent) and written back (2 write
    units) with its old and new index entries (1 each)."""
    a, p = Assumptions(), Prices()
    line = breakdown(BASE)["usd_per_minute"]["sweeper (index query, per call)"]
    expected = (
        16 * 0.5 * p.ddb_read_unit / 100
        + 1 * p.ddb_read_unit
        + (2 + 2) * p.ddb_write_unit
        + (p.lambda_request + a.sweeper_seconds * 0.5 * p.lambda_gb_s) / 100
    )
    assert line == pytest.approx(expected, abs=1e-8)  # lines are rounded to 8 decimals
    twice = breakdown(BASE, replace(a, sweeps_per_call_minute=2.0))["usd_per_minute"]["sweeper (index query, per call)"]
    assert twice - line == pytest.approx(p.ddb_read_unit + 4 * p.ddb_write_unit, abs=2e-8)


def test_used_chunks_are_deleted_in_the_total_only_when_configured() -> None:
    assert Assumptions().delete_used_chunks is Settings.model_fields["ws_delete_used_chunks"].default
    kept = breakdown(BASE)
    deleted = breakdown(BASE, replace(Assumptions(), delete_used_chunks=True))
    delete = kept["not_in_total"]["explicit delete of used chunks (a short TTL does it free)"]
    assert deleted["usd_per_minute"]["dynamodb (delete used chunks: AIRIES_WS_DELETE_USED_CHUNKS)"] == delete
    assert "explicit delete of used chunks (a short TTL does it free)" not in deleted["not_in_total"]
    assert deleted["total"] == pytest.approx(kept["total"] + delete, abs=1e-7)
