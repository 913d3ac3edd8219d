"""Tool round trip overhead: what the platform adds around a custom tool call inside a turn.

A real ``TurnRunner`` turn (text in, no speech) whose LLM (in process, no network) calls ``check_order`` and then,
given the result, answers; the tool runs on the local tool server (tests/doubles/tool_server.py, 127.0.0.1, signed
requests, through the URL guard's client with an allow-listed host). Measured per turn, on one clock:

* out: the LLM's tool call complete (just before its ``StreamEnd`` is yielded) -> the request read at the tool
  server (argument validation, the JSON body, the signature, the guarded client's DNS check and connection);
* back: the tool server about to write its answer -> the next LLM request sent (reading the answer, the result,
  the tool messages).

Baseline in the same run, interleaved turn by turn: a bare ``httpx.AsyncClient`` POST of the same body to the same
server on a kept-alive connection, as the runner's shared client keeps one (out: before ``post`` -> request read;
back: answer written -> ``post`` returned). Target: p95 of out + back < 10 ms; ratios to the baseline reported.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from benchmarks import harness

WARMUP = 20
DEFAULT_RUNS = 300


async def _measure(server: Any, runs: int) -> dict[str, Any]:
    import httpx

    from airies.agents.config import AgentConfig
    from airies.conversations.http_turns import ListSink
    from airies.conversations.turns import TurnEngines, TurnInput, TurnMode, TurnRunner
    from airies.core.url_guard import URLGuard, parse_allowed_hosts
    from airies.llm.vendors.base import LLMEvent, LLMRequest, StreamEnd, TextDelta, ToolCall, Usage
    from airies.tools.runner import ToolRunner

    config = AgentConfig.model_validate(
        {
            "name": "Bench",
            "tools": [
                {
                    "name": "check_order",
                    "parameters": {
                        "type": "object",
                        "properties": {"order_id": {"type": "string"}},
                        "required": ["order_id"],
                    },
                    "server": {"url": server.tool_url, "timeout_ms": 5000},
                }
            ],
        }
    )
    marks: dict[str, float] = {}

    async def llm(request: LLMRequest) -> AsyncIterator[LLMEvent]:
        if request.messages[-1]["role"] == "tool":
            marks["next_request"] = time.perf_counter()
            yield TextDelta("Order A1 ships Monday.")
            yield StreamEnd(Usage(), "stop", "bench", "bench")
            return
        call = ToolCall("call_1", "check_order", '{"order_id": "A1"}')
        marks["call_complete"] = time.perf_counter()
        yield StreamEnd(Usage(), "tool_calls", "bench", "bench", tool_calls=(call,))

    guard = URLGuard(https_only=False, allowed_hosts=parse_allowed_hosts(server.host))

    async def tool_turn(index: int) -> tuple[float, float]:
        runner = ToolRunner(
            guard, secret=lambda conversation_id: "whsec_bench"
        )  # a new runner per turn: the worst case
        engines = TurnEngines(llm=llm, tools=runner)
        inp = TurnInput(f"turn_{index}", 1, TurnMode.TEXT, "acct", "conv", text="Where is A1?", speak=False)
        result = await TurnRunner(engines).run(config, [], inp, ListSink())
        assert result.tool_calls[0]["status"] == "completed", result.tool_calls
        request = server.received[-1]
        return (
            (request.received_at - marks["call_complete"]) * 1000,
            (marks["next_request"] - request.answered_at) * 1000,
        )

    body = json.dumps(
        {
            "conversation_id": "conv",
            "turn_id": "t",
            "tool_call_id": "call_1",
            "name": "check_order",
            "arguments": {"order_id": "A1"},
        }
    ).encode()

    bare = httpx.AsyncClient()

    async def bare_post() -> tuple[float, float]:
        started = time.perf_counter()
        response = await bare.post(server.tool_url, content=body, headers={"content-type": "application/json"})
        returned = time.perf_counter()
        assert response.status_code == 200
        request = server.received[-1]
        return (request.received_at - started) * 1000, (returned - request.answered_at) * 1000

    for index in range(WARMUP):
        await tool_turn(index)
        await bare_post()
    out, back, total, base_out, base_back, base_total = [], [], [], [], [], []
    for index in range(runs):
        pairs = [tool_turn(index), bare_post()] if index % 2 else [bare_post(), tool_turn(index)]
        first = await pairs[0]
        second = await pairs[1]
        (tool_out, tool_back), (bare_out, bare_back) = (second, first) if index % 2 == 0 else (first, second)
        out.append(tool_out)
        back.append(tool_back)
        total.append(tool_out + tool_back)
        base_out.append(bare_out)
        base_back.append(bare_back)
        base_total.append(bare_out + bare_back)
    await bare.aclose()
    figures = {
        "runs": runs,
        "tool_out": harness.latency_stats(out),
        "tool_back": harness.latency_stats(back),
        "tool_round_trip_overhead": harness.latency_stats(total),
        "baseline_out": harness.latency_stats(base_out),
        "baseline_back": harness.latency_stats(base_back),
        "baseline_total": harness.latency_stats(base_total),
    }
    figures["ratio_p95"] = round(
        figures["tool_round_trip_overhead"]["p95_ms"] / max(figures["baseline_total"]["p95_ms"], 1e-6), 2
    )
    figures["ratio_p50"] = round(
        figures["tool_round_trip_overhead"]["p50_ms"] / max(figures["baseline_total"]["p50_ms"], 1e-6), 2
    )
    return figures


def run(args: Any = None) -> dict[str, Any]:
    sys.path.insert(0, str(harness.ROOT))
    from tests.doubles.tool_server import ToolServer

    runs = getattr(args, "runs", None) or DEFAULT_RUNS
    with ToolServer("whsec_bench") as server:
        server.responders["check_order"] = lambda arguments: {"result": {"order": arguments["order_id"], "eta": "Mon"}}
        figures = asyncio.run(_measure(server, runs))
    print(
        f"  tool call -> request at server p50 {figures['tool_out']['p50_ms']} ms (p95 {figures['tool_out']['p95_ms']}); "
        f"answer -> next LLM request p50 {figures['tool_back']['p50_ms']} ms (p95 {figures['tool_back']['p95_ms']}); "
        f"total p95 {figures['tool_round_trip_overhead']['p95_ms']} ms vs bare httpx POST p95 "
        f"{figures['baseline_total']['p95_ms']} ms (ratio {figures['ratio_p95']}x)"
    )
    figures["targets"] = [
        harness.target("tool round trip overhead p95", figures["tool_round_trip_overhead"]["p95_ms"], 10.0, "ms")
    ]
    return figures
