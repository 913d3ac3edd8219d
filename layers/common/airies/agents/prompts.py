"""What an agent sends its LLM on every turn, on a call and in an agent test alike: the messages (system prompt,
knowledge passages, the voice-call instruction, history, the caller's words), the tools (``end_call``, the
agent's own, its enabled built-ins), and the whole request (``llm_request``)."""

from __future__ import annotations

from typing import Any

from airies.agents.config import AgentConfig
from airies.llm.vendors.base import LLMRequest
from airies.tools.builtins import tool_definitions

END_CALL_TOOL = {
    "type": "function",
    "function": {
        "name": "end_call",
        "description": "Hang up the call. Use it only when the caller is done or asks to end the call.",
        "parameters": {
            "type": "object",
            "properties": {"reason": {"type": "string", "description": "why the call ends"}},
            "required": [],
        },
    },
}


def agent_tools(config: AgentConfig) -> list[dict[str, Any]]:
    """The tools the LLM is offered: ``end_call``, the agent's custom tools and its enabled built-ins."""
    return [END_CALL_TOOL, *tool_definitions(config.tools, config.builtin_tools)]


def build_messages(
    config: AgentConfig, history: list[dict[str, str]], user_text: str | None, passages: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    system = config.system_prompt
    if passages:
        context = "\n\n".join(f"[{i + 1}] {p.get('text', '')}" for i, p in enumerate(passages))
        system += (
            "\n\nAnswer from these knowledge base passages when they are relevant; say so when they do not cover "
            f"the question.\n{context}"
        )
    system += "\n\nYou are speaking on a voice call: answer in short spoken sentences, no markdown or lists."
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}, *history]
    if user_text:
        messages.append({"role": "user", "content": user_text})
    return messages


def llm_request(
    config: AgentConfig,
    history: list[dict[str, str]],
    user_text: str | None,
    passages: list[dict[str, Any]],
    *,
    metadata: dict[str, Any] | None = None,
) -> LLMRequest:
    """The request of one turn: the agent's model and its fallbacks, the messages and the tools; ``metadata`` (e.g.
    the call's ids) goes along with what the offline responder answers from (first message, passages, end call)."""
    return LLMRequest(
        model=config.llm.model,
        messages=build_messages(config, history, user_text, passages),
        temperature=config.llm.temperature,
        max_tokens=config.llm.max_tokens,
        tools=agent_tools(config),
        provider=config.llm.provider,
        fallbacks=tuple((fb.provider, fb.model) for fb in config.llm.fallbacks),
        metadata={
            **(metadata or {}),
            "knowledge_passages": passages,
            "first_message": config.first_message or "",
            "end_call_phrases": list(config.end_call_phrases),
            "end_call_message": config.end_call_message or "",
        },
    )
