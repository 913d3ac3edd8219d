"""The built-in tools in a turn, with the offline responder as the LLM (it calls a tool the caller names):
transfer_call on a channel that can transfer (the turn carries the transfer and ends the call ``transferred``), and
query_knowledge_base (retrieval on demand instead of on every turn)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from airies.agents.config import AgentConfig
from airies.conversations.http_turns import ListSink
from airies.conversations.turns import TransferRequest, TurnEngines, TurnInput, TurnMode, TurnResult, TurnRunner
from airies.llm.vendors.base import StreamEnd, ToolCall, Usage
from airies.llm.vendors.offline import OfflineResponder
from tests.doubles.conv_engines import FakeTTS

DESK = "+15551234567"


def turn(config: AgentConfig, text: str, *, can_transfer: bool = False, retrieve: Any = None) -> TurnResult:
    engines = TurnEngines(llm=OfflineResponder().stream, tts=FakeTTS(), retrieve=retrieve)
    inp = TurnInput("turn_1", 1, TurnMode.TEXT, "acct_1", "conv_1", text=text, speak=False, can_transfer=can_transfer)
    return asyncio.run(TurnRunner(engines).run(config, [], inp, ListSink()))


def transfer_agent() -> AgentConfig:
    return AgentConfig(
        name="Desk",
        builtin_tools={"transfer_call": {"enabled": True, "destinations": [DESK], "message": "Connecting you now."}},
    )


def test_transfer_call_hands_the_call_over_where_the_channel_can():
    result = turn(transfer_agent(), "Please transfer call to a person", can_transfer=True)
    assert result.transfer == TransferRequest(DESK, "Connecting you now.")
    assert result.end_call == "transferred" and result.agent_text == "Connecting you now."
    [call] = result.tool_calls
    assert call["name"] == "transfer_call" and call["arguments"] == {"destination": DESK}
    assert call["status"] == "completed"


def test_transfer_call_elsewhere_is_answered_not_available():
    result = turn(transfer_agent(), "Please transfer call to a person")
    assert result.transfer is None and result.end_call is None
    assert result.tool_calls[0]["status"] == "unavailable"
    assert "not available on this channel" in result.agent_text  # the offline responder reads the result back


def test_a_transfer_to_an_unlisted_destination_is_refused():
    config = transfer_agent()

    async def llm(request):
        from tests.doubles.conv_engines import FakeLLM  # noqa: F401  (the interface the turn expects)

        if request.messages[-1]["role"] == "tool":
            yield StreamEnd(Usage(), "stop", "offline", "m")
            return
        yield StreamEnd(
            Usage(),
            "tool_calls",
            "offline",
            "m",
            tool_calls=(ToolCall("c1", "transfer_call", json.dumps({"destination": "+19005550000"})),),
        )

    engines = TurnEngines(llm=llm)
    inp = TurnInput("turn_1", 1, TurnMode.TEXT, "acct_1", "conv_1", text="hi", speak=False, can_transfer=True)
    result = asyncio.run(TurnRunner(engines).run(config, [], inp, ListSink()))
    assert result.transfer is None and result.tool_calls[0]["status"] == "refused"


def test_query_knowledge_base_retrieves_on_demand_only():
    queries: list[str] = []

    async def retrieve(account_id: str, kb_ids: list[str], query: str) -> list[dict[str, Any]]:
        queries.append(query)
        return [{"text": "We open at nine.", "document_name": "hours.md"}]

    config = AgentConfig(
        name="Desk", knowledge_base_ids=["kb_1"], builtin_tools={"query_knowledge_base": {"enabled": True}}
    )
    plain = turn(config, "Hello there", retrieve=retrieve)
    assert queries == [] and plain.tool_calls == []  # no retrieval on every turn
    result = turn(config, "query knowledge base opening hours", retrieve=retrieve)
    assert queries == ["opening hours"]
    [call] = result.tool_calls
    assert json.loads(call["result"]) == [{"text": "We open at nine.", "source": "hours.md"}]
    assert "We open at nine." in result.agent_text and result.passages == 1
