"""Tools in whole calls: over the WebSocket (the OpenAI wire double calls a tool, then answers from its result),
over REST ``/message`` with the production engines (the offline responder calls the tool; the request is signed
with the agent's server-message secret; ``tool.called`` is published), built-ins, failures and tenancy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airies.conversations.turns import TurnEngines
from airies.core.config import Settings
from airies.core.url_guard import URLGuard, parse_allowed_hosts
from airies.llm.vendors.openai_compat import OpenAICompatibleProvider
from airies.tools.runner import ToolRunner
from airies.webhooks.service import WebhookPublisher
from tests.doubles.conv_engines import FakeSTT, FakeTTS
from tests.doubles.openai_server import OpenAIDouble, Reply
from tests.doubles.tool_server import ToolServer
from tests.doubles.webhook_receiver import ListQueue, WebhookReceiver
from tests.integration.test_conv_events import deliver_all, received
from tests.integration.test_conv_handlers import Harness, aws, frames_of, types  # noqa: F401  (aws: a fixture)

SECRET = "whsec_calltest"


@pytest.fixture
def tool_server() -> Iterator[ToolServer]:
    with ToolServer(SECRET) as server:
        yield server


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as running:
        yield running


@pytest.fixture
def settings(tmp_path: Path, tool_server: ToolServer, receiver: WebhookReceiver) -> Settings:
    return Settings(
        stage="local",
        data_dir=tmp_path,
        allow_public_signup=True,
        url_guard_allowed_hosts=f"{tool_server.host},{receiver.host}",
    )


@pytest.fixture
def openai() -> Iterator[OpenAIDouble]:
    with OpenAIDouble() as server:
        yield server


def order_tool(server: ToolServer, **overrides: Any) -> dict[str, Any]:
    return {
        "name": "check_order",
        "description": "Look up an order",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
        "server": {"url": server.tool_url, "timeout_ms": 2000},
        "messages": {"request_start": "One moment while I check.", "request_failed": "Sorry, I could not check."},
        **overrides,
    }


def socket_engines(openai: OpenAIDouble, server: ToolServer, settings: Settings) -> TurnEngines:
    llm = OpenAICompatibleProvider("openai", base_url=openai.base_url, api_key="sk-test")
    runner = ToolRunner(
        URLGuard(https_only=False, allowed_hosts=parse_allowed_hosts(settings.url_guard_allowed_hosts)),
        secret=lambda conversation_id: SECRET,
    )
    return TurnEngines(llm=llm.stream, stt=FakeSTT(), tts=FakeTTS(), tools=runner)


def connected_call(
    database: Any, settings: Settings, openai: OpenAIDouble, server: ToolServer, **agent: Any
) -> tuple[Harness, str, str]:
    """A web call connected to an agent that waits for the caller, its LLM the wire double and its tools guarded:
    the harness, the conversation's id and the connection's id."""
    h = Harness(
        database,
        settings,
        socket_engines(openai, server, settings),
        first_message_mode="assistant_waits_for_user",
        **agent,
    )
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    return h, cid, conn


@pytest.mark.usefixtures("aws")
def test_a_websocket_call_runs_a_tool_and_answers_from_its_result(database, settings, openai, tool_server):
    tool_server.responders["check_order"] = lambda arguments: {
        "result": {"order": arguments["order_id"], "eta": "Monday"}
    }
    openai.script(
        Reply(
            text="Let me see.", tool_calls=[{"id": "call_a", "name": "check_order", "arguments": '{"order_id": "A1"}'}]
        ),
        Reply(text="Order A1 arrives Monday."),
    )
    h, cid, conn = connected_call(database, settings, openai, tool_server, tools=[order_tool(tool_server)])
    h.send(conn, {"action": "text", "text": "Where is my order A1?"})
    frames = frames_of(conn)
    said = [f["delta"].strip() for f in frames if f["type"] == "agent_text"]
    # What the LLM said before calling, the waiting message while the request ran, then the answer.
    assert said == ["Let me see.", "One moment while I check.", "Order A1 arrives Monday."]
    assert "audio" in types(frames) and frames[-1]["type"] == "turn_end"
    [request] = tool_server.received
    assert request.verified and request.call["arguments"] == {"order_id": "A1"}
    assert request.call["conversation_id"] == cid and request.call["tool_call_id"] == "call_a"
    # The first LLM request offered the tool; the second carried its result back.
    first, second = (r.body for r in openai.requests)
    assert [t["function"]["name"] for t in first["tools"]] == ["end_call", "check_order"]
    assistant, tool_message = second["messages"][-2:]
    assert assistant["tool_calls"][0]["function"] == {"name": "check_order", "arguments": '{"order_id": "A1"}'}
    assert tool_message == {"role": "tool", "tool_call_id": "call_a", "content": '{"order":"A1","eta":"Monday"}'}
    [turn] = h.turns(cid)
    assert turn.agent_text == "Let me see. One moment while I check. Order A1 arrives Monday."
    [stored] = turn.tool_calls
    assert stored["name"] == "check_order" and stored["status"] == "completed"
    assert stored["arguments"] == {"order_id": "A1"} and stored["result"] == '{"order":"A1","eta":"Monday"}'
    assert stored["duration_ms"] >= 0 and turn.latency["tool_ms"] >= stored["duration_ms"] - 1


@pytest.mark.usefixtures("aws")
def test_a_failing_tool_speaks_its_failure_message_and_the_llm_is_told(database, settings, openai, tool_server):
    tool_server.status = 500
    openai.script(
        Reply(text="", tool_calls=[{"id": "call_b", "name": "check_order", "arguments": '{"order_id": "B2"}'}]),
        Reply(text="Please try again later."),
    )
    h, cid, conn = connected_call(database, settings, openai, tool_server, tools=[order_tool(tool_server)])
    h.send(conn, {"action": "text", "text": "Where is B2?"})
    said = [f["delta"].strip() for f in frames_of(conn) if f["type"] == "agent_text"]
    assert said == ["One moment while I check.", "Sorry, I could not check.", "Please try again later."]
    assert openai.requests[1].body["messages"][-1]["content"] == "The server answered HTTP 500."
    [turn] = h.turns(cid)
    assert turn.tool_calls[0]["status"] == "failed" and turn.tool_calls[0]["http_status"] == 500


@pytest.mark.usefixtures("aws")
def test_transfer_on_a_web_call_is_answered_not_available(database, settings, openai, tool_server):
    openai.script(
        Reply(
            text="",
            tool_calls=[{"id": "call_t", "name": "transfer_call", "arguments": '{"destination": "+15551234567"}'}],
        ),
        Reply(text="I cannot transfer you from here."),
    )
    transfer = {"transfer_call": {"enabled": True, "destinations": ["+15551234567"]}}
    h, cid, conn = connected_call(database, settings, openai, tool_server, builtin_tools=transfer)
    h.send(conn, {"action": "text", "text": "Get me a human"})
    assert "transfer_call" in [t["function"]["name"] for t in openai.requests[0].body["tools"]]
    assert "not available on this channel" in openai.requests[1].body["messages"][-1]["content"]
    [turn] = h.turns(cid)
    assert turn.tool_calls[0]["status"] == "unavailable" and h.conversation(cid).status != "ended"


# -- REST /message with the production engines (offline responder, guarded runner, signed with the agent's secret) --
def agent_with_tool(client, auth, server: ToolServer, **extra: Any) -> str:
    body = {
        "name": "Orders",
        "system_prompt": "You check orders.",
        "first_message_mode": "assistant_waits_for_user",
        "tools": [order_tool(server)],
        **extra,
    }
    response = client.post("/api/v1/agents", json=body, headers=auth)
    assert response.status_code == 201, response.text
    agent_id = response.json()["id"]
    assert client.post(f"/api/v1/agents/{agent_id}/deploy", headers=auth).status_code == 201
    return agent_id


def test_a_rest_message_calls_the_tool_signed_and_publishes_tool_called(
    client, auth, app, database, settings, tool_server, receiver
):
    queue = ListQueue()
    app.state.webhook_publisher = WebhookPublisher(database, settings, queue)
    agent_id = agent_with_tool(client, auth, tool_server)
    put = client.put(
        f"/api/v1/agents/{agent_id}/webhook", json={"url": receiver.url, "events": ["tool.called"]}, headers=auth
    )
    assert put.status_code == 201, put.text
    receiver.secret = tool_server.secret = put.json()["secret"]
    tool_server.responders["check_order"] = lambda arguments: {"result": f"Order {arguments['order_id']} shipped."}
    cid = client.post("/api/v1/conversations", json={"agent_id": agent_id}, headers=auth).json()["id"]
    reply = client.post(f"/api/v1/conversations/{cid}/message", json={"text": "Please check order Z9"}, headers=auth)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["reply"] == "One moment while I check. Here is what I found: Order Z9 shipped."
    [request] = tool_server.received
    assert request.verified and request.call["arguments"] == {"order_id": "Z9"}
    [call] = body["turn"]["tool_calls"]
    assert call["status"] == "completed" and call["result"] == "Order Z9 shipped."
    assert body["turn"]["latency"]["tool_ms"] is not None
    detail = client.get(f"/api/v1/conversations/{cid}", headers=auth).json()
    assert detail["turns"][0]["tool_calls"] == [call]
    deliver_all(database, settings, queue)
    [event] = received(receiver)
    assert event["type"] == "tool.called"
    data = event["data"]
    assert data["conversation_id"] == cid and data["turn_id"] == body["turn"]["id"]
    assert data["name"] == "check_order" and data["arguments"] == {"order_id": "Z9"} and data["status"] == "completed"


def test_another_accounts_conversation_is_404_and_no_tool_is_called(client, auth, tool_server):
    from tests.conftest import signup

    agent_id = agent_with_tool(client, auth, tool_server)
    cid = client.post("/api/v1/conversations", json={"agent_id": agent_id}, headers=auth).json()["id"]
    other = signup(client)
    response = client.post(f"/api/v1/conversations/{cid}/message", json={"text": "check order Z9"}, headers=other)
    assert response.status_code == 404
    assert tool_server.received == []


def test_a_tool_url_refused_at_call_time_is_not_called(client, auth, app, settings, tool_server):
    agent_id = agent_with_tool(client, auth, tool_server)
    cid = client.post("/api/v1/conversations", json={"agent_id": agent_id}, headers=auth).json()["id"]
    app.state.settings = settings.model_copy(update={"url_guard_allowed_hosts": ""})  # the operator removed it
    reply = client.post(f"/api/v1/conversations/{cid}/message", json={"text": "check order Z9"}, headers=auth)
    assert reply.status_code == 200, reply.text
    [call] = reply.json()["turn"]["tool_calls"]
    assert call["status"] == "refused" and "non-public" in call["error"]
    assert reply.json()["reply"].startswith("One moment while I check. Sorry, I could not check.")
    assert tool_server.received == []
    assert json.dumps(reply.json())  # a JSON answer, never a 5xx
