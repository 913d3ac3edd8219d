"""benchmarks/bench_sweeper.py: its DynamoDB accounting, and the flat-cost property on a tiny table (counts, not
time)."""

from __future__ import annotations

import pytest

from benchmarks.bench_sweeper import flatness, measure, parse_sizes, read_units
from benchmarks.harness import item_bytes


def test_item_sizes_and_read_units_follow_dynamodb_rules() -> None:
    item = {"pk": {"S": "conv#abc"}, "sk": {"S": "chunk#000000001"}, "data": {"B": bytes(8000)}, "n": {"N": "12345"}}
    assert item_bytes(item) == (2 + 8) + (2 + 15) + (4 + 8000) + (1 + 4)
    # GetItem/BatchGetItem bill each item on its own, rounded up to 4 KB; eventually consistent reads half.
    assert read_units([item, item], consistent=True, one_read=False) == 4
    assert read_units([item], consistent=False, one_read=False) == 1
    # A Query page bills the items' total size, at least one unit, even when empty.
    small = {"pk": {"S": "conv#abc"}}
    assert read_units([small] * 10, consistent=False, one_read=True) == 0.5
    assert read_units([], consistent=False, one_read=True) == 0.5


def test_sizes_parse_from_the_knob() -> None:
    assert parse_sizes("50x0, 5_000x500_000") == [(50, 0), (5000, 500_000)]


def test_the_sweeper_reads_the_same_with_or_without_stale_items() -> None:
    empty = measure(6, 0, chunk_bytes=512)
    crowded = measure(6, 120, chunk_bytes=512)
    # The counting sees the sweeper's path: index queries, then the due sessions read in a batch and rescheduled;
    # a container reads each due conversation's agent config once (its own item, then cached).
    assert empty["calls"]["Query"] == 16 and empty["items_by_operation"]["BatchGetItem"] == 3
    assert empty["items_by_operation"]["GetItem"] == 3
    assert empty["due"] == 3 and empty["write_calls"] == 3 and empty["actions"] == {}
    assert "Scan" not in empty["calls"]
    assert crowded["table_items"] == empty["table_items"] + 120
    assert crowded["full_scan_read_units_estimate"] > empty["full_scan_read_units_estimate"]
    # Flat: stale items add no read.
    assert crowded["items_read"] == empty["items_read"] == 3 + 3 + 3
    assert crowded["read_units"] == empty["read_units"]
    ratio = flatness([empty, crowded])
    assert ratio == [{"live": 6, "stale": 120, "items_read_ratio": 1.0, "read_units_ratio": 1.0}]


@pytest.mark.parametrize("rows", [[{"live": 5, "stale": 10, "items_read": 1, "read_units": 1.0}], []])
def test_flatness_needs_a_run_without_stale_items(rows: list) -> None:
    assert flatness(rows) == []
