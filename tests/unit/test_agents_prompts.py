"""The messages and the end_call tool of a turn: one builder for calls and agent tests."""

from __future__ import annotations

from airies.agents import testing
from airies.agents.config import AgentConfig
from airies.agents.prompts import END_CALL_TOOL, agent_tools, build_messages, llm_request
from airies.conversations import turns
from airies.tools import dispatch


def test_a_turn_is_built_the_same_on_a_call_and_in_an_agent_test() -> None:
    config = AgentConfig(name="Desk", system_prompt="You are the receptionist.")
    history = [{"role": "assistant", "content": "Hello!"}]
    passages = [{"text": "Open 9 to 5."}]
    messages = build_messages(config, history, "When are you open?", passages)
    assert messages[0]["role"] == "system" and "[1] Open 9 to 5." in messages[0]["content"]
    assert messages[0]["content"].endswith("answer in short spoken sentences, no markdown or lists.")
    assert messages[1:] == [*history, {"role": "user", "content": "When are you open?"}]
    assert build_messages(config, [], None, [])[-1]["role"] == "system"  # no user turn: nothing appended
    # Calls and agent tests build their request with the same builder and run the same tool rounds (one source).
    assert turns.llm_request is llm_request and testing.llm_request is llm_request
    assert turns.tool_rounds is dispatch.tool_rounds and testing.tool_rounds is dispatch.tool_rounds
    request = llm_request(config, history, "When are you open?", passages)
    assert request.messages == messages and request.tools == agent_tools(config)
    assert agent_tools(config) == [END_CALL_TOOL]  # no tools of its own: end_call only
