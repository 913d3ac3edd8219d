"""The tool runner against a real local tool server: signed wire format, validation, timeouts, failures, size cap,
redirects to private addresses, concurrency, async tools and canned results."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import pytest

from airies.core.url_guard import URLGuard, parse_allowed_hosts
from airies.tools.runner import ToolInvocation, ToolRunner
from airies.tools.schemas import ToolConfig
from tests.doubles.tool_server import ToolServer

SECRET = "whsec_tooltest"


@pytest.fixture
def server() -> Iterator[ToolServer]:
    with ToolServer(SECRET) as double:
        yield double


def guard_for(server: ToolServer) -> URLGuard:
    return URLGuard(https_only=False, allowed_hosts=parse_allowed_hosts(server.host))


def tool(server: ToolServer, name: str = "check_order", **server_fields) -> ToolConfig:
    return ToolConfig.model_validate(
        {
            "name": name,
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
            "server": {"url": server.tool_url, "headers": {"X-Api-Key": "k1"}, **server_fields},
        }
    )


def call(name: str = "check_order", arguments: str = '{"order_id": "A1"}', call_id: str = "call_1") -> ToolInvocation:
    return ToolInvocation("conv_1", "turn_1", call_id, name, arguments)


def run(runner: ToolRunner, *calls):
    return asyncio.run(runner.call_many(list(calls)))


def test_a_call_is_posted_signed_and_its_result_returned(server):
    server.responders["check_order"] = lambda arguments: {"result": {"status": "shipped", "id": arguments["order_id"]}}
    runner = ToolRunner(guard_for(server), secret=lambda conversation_id: SECRET)
    [outcome] = run(runner, (tool(server), call()))
    assert outcome.status == "completed" and outcome.http_status == 200
    assert json.loads(outcome.result) == {"status": "shipped", "id": "A1"}
    [request] = server.received
    assert request.verified and request.path == "/tools"
    assert request.call == {
        "conversation_id": "conv_1",
        "turn_id": "turn_1",
        "tool_call_id": "call_1",
        "name": "check_order",
        "arguments": {"order_id": "A1"},
    }
    assert request.headers["x-api-key"] == "k1" and request.headers["airies-tool-call-id"] == "call_1"
    assert outcome.record()["arguments"] == {"order_id": "A1"}


def test_a_wrong_secret_does_not_verify(server):
    runner = ToolRunner(guard_for(server), secret=lambda conversation_id: "whsec_other")
    run(runner, (tool(server), call()))
    assert not server.received[0].verified


@pytest.mark.parametrize("arguments", ['{"order_id": 5}', "{}", "not json", '["A1"]'])
def test_invalid_arguments_are_never_sent(server, arguments):
    [outcome] = run(ToolRunner(guard_for(server)), (tool(server), call(arguments=arguments)))
    assert outcome.status == "refused" and "not made" in outcome.result
    assert server.received == []


def test_a_slow_server_times_out(server):
    server.delay = 1.0
    [outcome] = run(ToolRunner(guard_for(server)), (tool(server, timeout_ms=200), call()))
    assert outcome.status == "timeout" and "200 ms" in outcome.result


def test_a_failing_server_is_reported(server):
    server.status = 503
    [outcome] = run(ToolRunner(guard_for(server)), (tool(server), call()))
    assert outcome.status == "failed" and outcome.http_status == 503 and "503" in outcome.result


def test_an_oversized_answer_fails_and_is_not_kept(server):
    server.oversize = 200_000
    [outcome] = run(ToolRunner(guard_for(server), max_response_bytes=10_000), (tool(server), call()))
    assert outcome.status == "failed" and "too large" in outcome.result
    assert len(outcome.record()["result"]) < 100


def test_a_long_result_is_capped(server):
    server.responders["check_order"] = lambda arguments: {"result": "y" * 20_000}
    [outcome] = run(ToolRunner(guard_for(server)), (tool(server), call()))
    assert outcome.status == "completed" and len(outcome.result) == 4000


@pytest.mark.parametrize("target", ["http://10.0.0.1/steal", "http://169.254.169.254/latest/meta-data", "loopback"])
def test_a_redirect_to_a_private_address_is_refused(server, target):
    with ToolServer() as other:
        other.responders["check_order"] = lambda arguments: {"result": "secret"}
        server.redirect_to = f"{other.tool_url}" if target == "loopback" else target
        [outcome] = run(ToolRunner(guard_for(server)), (tool(server), call()))
        assert outcome.status == "refused" and outcome.error and "non-public" in outcome.error
        assert other.received == []


def test_an_address_not_allowed_at_call_time_is_refused(server):
    strict = URLGuard(https_only=False)  # the operator's allow-list no longer has the host
    [outcome] = run(ToolRunner(strict), (tool(server), call()))
    assert outcome.status == "refused" and server.received == []


def test_calls_of_one_turn_run_concurrently(server):
    arrived = threading.Barrier(3, timeout=10)

    def together(arguments):
        try:
            arrived.wait()  # answers only once all three requests are in flight at the same time
            return {"result": "together"}
        except threading.BrokenBarrierError:
            return {"result": "alone"}

    server.responders["check_order"] = together
    calls = [(tool(server), call(call_id=f"call_{i}")) for i in range(3)]
    outcomes = run(ToolRunner(guard_for(server)), *calls)
    assert [o.result for o in outcomes] == ["together"] * 3
    assert [o.tool_call_id for o in outcomes] == ["call_0", "call_1", "call_2"]


def test_an_async_tool_is_sent_and_not_waited_for(server):
    server.delay = 0.3
    async_tool = ToolConfig.model_validate({**tool(server).model_dump(), "async": True})

    async def scenario():
        runner = ToolRunner(guard_for(server))
        [outcome] = await runner.call_many([(async_tool, call())])
        await runner.drain()
        return outcome

    outcome = asyncio.run(scenario())
    assert outcome.status == "sent"
    assert len(server.received) == 1


def test_canned_results_skip_the_server(server):
    runner = ToolRunner(guard_for(server), canned={"check_order": {"status": "delivered"}})
    [outcome] = run(runner, (tool(server), call()))
    assert outcome.status == "canned" and json.loads(outcome.result) == {"status": "delivered"}
    assert server.received == []


def test_a_schema_that_cannot_be_applied_refuses_the_call(server):
    remote = ToolConfig.model_validate(
        {**tool(server).model_dump(), "parameters": {"type": "object", "$ref": "https://example.com/schema.json"}}
    )
    [outcome] = run(ToolRunner(guard_for(server)), (remote, call()))
    assert outcome.status == "refused" and "cannot be applied" in outcome.result
    assert server.received == []


def test_one_runner_serves_turns_on_several_event_loops(server):
    """A container keeps a turn's engines for a while and runs turns on more than one event loop."""
    reads: list[str] = []

    def lookup(conversation_id: str) -> str:
        reads.append(conversation_id)
        return SECRET

    runner = ToolRunner(guard_for(server), secret=lookup)
    async_tool = ToolConfig.model_validate({**tool(server).model_dump(), "async": True})

    async def turn() -> list:
        runner.prefetch("conv_1")
        outcomes = await runner.call_many([(tool(server), call()), (async_tool, call(call_id="call_2"))])
        await runner.drain()
        return outcomes

    for _ in range(3):  # a new loop each time, as asyncio.run makes
        assert [o.status for o in asyncio.run(turn())] == ["completed", "sent"]
    assert reads == ["conv_1"]  # read once, kept for the runner's life
    assert len(server.received) == 6 and all(r.verified for r in server.received)


def test_a_cookie_one_server_sets_never_travels_with_a_later_call(server):
    server.extra_headers = {"set-cookie": "session=account-a; Path=/"}

    async def two_calls() -> None:
        runner = ToolRunner(guard_for(server))  # runners share the client of the event loop
        await runner.call_many([(tool(server), call())])
        await ToolRunner(guard_for(server)).call_many([(tool(server), call(call_id="call_2"))])

    asyncio.run(two_calls())
    assert len(server.received) == 2
    assert "cookie" not in server.received[1].headers
