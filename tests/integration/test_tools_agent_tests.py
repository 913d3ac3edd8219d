"""Agent tests with tools: assert a tool was called with given arguments, answer it with a canned result (no server),
or call the real server; the result goes back to the LLM (the OpenAI wire double) as on a call."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from airies.core.config import Settings
from tests.doubles.openai_server import OpenAIDouble, Reply
from tests.doubles.tool_server import ToolServer
from tests.integration.test_llm_api import fresh_health  # noqa: F401  (autouse: fresh provider health per test)


@pytest.fixture
def double() -> Iterator[OpenAIDouble]:
    with OpenAIDouble() as server:
        yield server


@pytest.fixture
def tool_server() -> Iterator[ToolServer]:
    with ToolServer() as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, double: OpenAIDouble, tool_server: ToolServer) -> Settings:
    return Settings(
        stage="local",
        data_dir=tmp_path,
        allow_public_signup=True,
        openai_api_key="sk-platform",
        openai_base_url=double.base_url,
        url_guard_allowed_hosts=tool_server.host,
    )


def agent(client, auth, server: ToolServer) -> str:
    body = {
        "name": "Orders",
        "system_prompt": "You check orders.",
        "first_message": "Hello!",
        "tools": [
            {
                "name": "check_order",
                "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
                "server": {"url": server.tool_url},
                "messages": {"request_start": "One moment."},
            }
        ],
    }
    response = client.post("/api/v1/agents", json=body, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def respond(body):
    last = body["messages"][-1]
    if last["role"] == "tool":
        return Reply(text=f"Result: {last['content']}")
    order = "A1" if "A1" in last["content"] else "B2"
    return Reply(
        text="", tool_calls=[{"id": "call_1", "name": "check_order", "arguments": f'{{"order_id": "{order}"}}'}]
    )


def test_canned_results_and_argument_assertions(client, auth, double, tool_server):
    double.responder = respond
    agent_id = agent(client, auth, tool_server)
    turns = [
        {
            "user": "Where is A1?",
            "expect_tool_called": "check_order",
            "expect_tool_arguments": {"order_id": "A1"},
            "expect_contains": ["shipped"],
        },
        {
            "user": "And B2?",
            "expect_tool_called": "check_order",
            "expect_tool_arguments": {"order_id": "A1"},
            "tool_results": {"check_order": "lost"},
        },  # the arguments check fails on purpose
    ]
    response = client.post(
        f"/api/v1/agents/{agent_id}/test",
        json={"turns": turns, "tool_results": {"check_order": {"status": "shipped"}}},
        headers=auth,
    )
    assert response.status_code == 200, response.text
    first, second = response.json()["turns"]
    assert first["passed"] is True
    assert first["reply"] == 'One moment. Result: {"status": "shipped"}'
    [call] = first["tool_calls"]
    assert call["status"] == "canned" and call["arguments"] == {"order_id": "A1"}
    assert second["passed"] is False
    assert [(c["check"], c["passed"]) for c in second["checks"]] == [("tool_called", True), ("tool_arguments", False)]
    assert second["tool_calls"][0]["result"] == "lost"
    assert tool_server.received == []  # canned: the server was never called
    # the tool's result went back to the LLM in the second request of the turn
    assert double.chat_requests[1].body["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": '{"status": "shipped"}',
    }


def test_without_a_canned_result_the_server_is_called(client, auth, double, tool_server):
    double.responder = respond
    tool_server.responders["check_order"] = lambda arguments: {"result": f"{arguments['order_id']} is on its way"}
    agent_id = agent(client, auth, tool_server)
    response = client.post(
        f"/api/v1/agents/{agent_id}/test",
        json={"turns": [{"user": "Where is A1?", "expect_contains": ["on its way"]}]},
        headers=auth,
    )
    assert response.status_code == 200, response.text
    [turn] = response.json()["turns"]
    assert turn["passed"] is True and turn["tool_calls"][0]["status"] == "completed"
    assert tool_server.calls("check_order")[0]["arguments"] == {"order_id": "A1"}


def test_bad_tool_expectations_are_422(client, auth, double, tool_server):
    agent_id = agent(client, auth, tool_server)
    bad = client.post(
        f"/api/v1/agents/{agent_id}/test",
        json={"turns": [{"user": "hi", "expect_tool_arguments": "A1"}]},
        headers=auth,
    )
    assert bad.status_code == 422
    assert double.chat_requests == []
