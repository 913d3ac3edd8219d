"""The built-in tools an agent can enable beside ``end_call``, in the OpenAI ``tools`` wire format, and the
definitions of an agent's custom tools in that format.

* ``transfer_call``: hands the call to a person: ``destination`` (one of the agent's configured E.164 numbers or SIP
  URIs) and an optional ``message`` said first. On a phone call the call is transferred and ends with end reason
  ``transferred``; on a channel without telephony the LLM is told the transfer is not available.
* ``query_knowledge_base``: retrieval on demand (``query``), instead of retrieval on every turn.
"""

from __future__ import annotations

from typing import Any

from airies.tools.schemas import BuiltinTools, ToolConfig

TRANSFER_CALL = "transfer_call"
QUERY_KNOWLEDGE_BASE = "query_knowledge_base"
TRANSFER_NOT_AVAILABLE = "Transfer is not available on this channel: tell the caller you cannot transfer them here."


def function(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


def transfer_call_definition(builtin: BuiltinTools) -> dict[str, Any]:
    transfer = builtin.transfer_call
    return function(
        TRANSFER_CALL,
        "Transfer the call to a person. Use it when the caller asks for a human or you cannot help.",
        {
            "type": "object",
            "properties": {
                "destination": {"type": "string", "enum": list(transfer.destinations), "description": "where to"},
                "message": {"type": "string", "description": "what to say to the caller before the transfer"},
            },
            "required": ["destination"],
        },
    )


def query_knowledge_base_definition() -> dict[str, Any]:
    return function(
        QUERY_KNOWLEDGE_BASE,
        "Search the knowledge base for facts you need to answer. Returns the most relevant passages.",
        {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "what to look up, in a few words"}},
            "required": ["query"],
        },
    )


def tool_definitions(tools: list[ToolConfig], builtin: BuiltinTools) -> list[dict[str, Any]]:
    """The agent's custom tools and enabled built-ins (``end_call`` is the agents capability's)."""
    definitions = [function(tool.name, tool.description, tool.parameters) for tool in tools]
    if builtin.transfer_call.enabled:
        definitions.append(transfer_call_definition(builtin))
    if builtin.query_knowledge_base.enabled:
        definitions.append(query_knowledge_base_definition())
    return definitions
