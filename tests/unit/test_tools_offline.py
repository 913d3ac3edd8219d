"""The offline responder's documented tool rule: it calls a tool the caller names, with arguments from their words,
and reads a tool's result back."""

from __future__ import annotations

import asyncio
import json

import pytest

from airies.llm.vendors.base import LLMRequest, StreamEnd
from airies.llm.vendors.offline import OfflineResponder
from airies.tools.builtins import function

TOOLS = [
    function("end_call", "", {"type": "object", "properties": {}}),
    function(
        "check_order",
        "",
        {
            "type": "object",
            "properties": {"order_id": {"type": "string"}, "count": {"type": "integer"}, "gift": {"type": "boolean"}},
        },
    ),
    function("book-table", "", {"type": "object", "properties": {"size": {"type": "string", "enum": ["two", "four"]}}}),
]


def end_of(messages: list[dict]) -> StreamEnd:
    async def go() -> StreamEnd:
        events = [e async for e in OfflineResponder().stream(LLMRequest(model="m", messages=messages, tools=TOOLS))]
        return events[-1]

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("text", "name", "arguments"),
    [
        ("Could you check order A12 for 3 items?", "check_order", {"order_id": "A12", "count": 3, "gift": True}),
        ("CHECK_ORDER for me", "check_order", {"order_id": "for me", "count": 0, "gift": True}),
        ("book table please", "book-table", {"size": "two"}),
    ],
)
def test_a_named_tool_is_called_with_arguments_from_the_words(text, name, arguments):
    end = end_of([{"role": "user", "content": text}])
    [call] = end.tool_calls
    assert call.name == name and json.loads(call.arguments) == arguments and call.id == "call_offline_1"
    assert end.metadata["offline_reason"] == "tool_call" and end.finish_reason == "tool_calls"


def test_no_tool_named_no_call():
    end = end_of([{"role": "user", "content": "What about my order?"}])
    assert end.tool_calls == () and end.metadata["offline_reason"] == "no_model"


def test_a_tool_result_is_read_back():
    messages = [
        {"role": "user", "content": "check order A1"},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "tool", "tool_call_id": "c", "content": "shipped"},
    ]
    end = end_of(messages)
    assert end.metadata["offline_reason"] == "tool_result" and end.tool_calls == ()
