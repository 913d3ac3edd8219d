"""The raw-media cost model (benchmarks/cost_media_streams.py): the arithmetic behind docs/telephony.md's decision."""

from __future__ import annotations

import pytest

from benchmarks.cost_media_streams import Bridge, Call, per_minute_bridge, per_minute_direct
from benchmarks.cost_model import Prices


def test_direct_frames_cost_per_minute() -> None:
    lines = per_minute_direct()
    assert lines["api_gateway_messages_in"] == pytest.approx(3000 * 1.00 / 1e6)
    assert lines["lambda_requests"] == pytest.approx(3000 * 0.20 / 1e6)
    assert lines["dynamodb_writes"] == pytest.approx(3000 * 0.625 / 1e6)
    # the agent speaks half the minute, in 3,000 ms frames: 10 messages of four 32 KB units, what 40 frames of
    # 750 ms (one unit each) would cost
    assert Call().agent_units_per_message == 4 and Call(agent_chunk_ms=750).agent_units_per_message == 1
    assert lines["api_gateway_messages_out"] == pytest.approx(40 * 1.00 / 1e6)
    assert per_minute_direct(Call(agent_chunk_ms=750))["api_gateway_messages_out"] == pytest.approx(40 * 1.00 / 1e6)
    assert sum(lines.values()) == pytest.approx(0.00623, abs=0.00001)


def test_bridge_costs_less_and_shares_its_fixed_cost() -> None:
    one, ten, hundred = (sum(per_minute_bridge(n).values()) for n in (1, 10, 100))
    assert one == pytest.approx(0.00219, abs=0.00001) and ten == pytest.approx(0.00155, abs=0.00001)
    assert one > ten > hundred
    assert hundred < sum(per_minute_direct().values()) / 3 and one < 0.01
    # the always-on tasks scale out past min_tasks: 100 calls need 4 tasks of 25
    task_hour = Bridge().vcpu * 0.03238 + Bridge().memory_gb * 0.00356
    assert per_minute_bridge(100)["fargate_tasks"] == pytest.approx(4 * task_hour / 60 / 100)


def test_prices_come_from_the_conversation_cost_model() -> None:
    doubled = Prices(ws_message=2.00 / 1e6)
    assert per_minute_direct(Call(), doubled)["api_gateway_messages_in"] == pytest.approx(3000 * 2.00 / 1e6)
