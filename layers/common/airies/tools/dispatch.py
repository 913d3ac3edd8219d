"""One round of an LLM's tool calls, the same on a call (``airies.conversations.turns``) and in an agent test
(``airies.agents.testing``): custom tools through the runner, built-ins here, all concurrently.

* custom tools: ``caller`` (``ToolRunner.call_many``); the waiting messages (``messages.request_start`` of the
  blocking tools called) are for the caller to speak *before* awaiting ``run``; the failure messages
  (``messages.request_failed`` of those that failed or timed out) come back in ``RoundResult.say``.
* ``transfer_call``: the destination must be one of the agent's; on a channel that can transfer, the round's
  ``transfer`` is set (destination, message) and the call is over; elsewhere the LLM is told it is not available.
* ``query_knowledge_base``: ``retrieve(account_id, knowledge_base_ids, query)``; the passages go back as JSON.
* anything else: refused (the LLM is told there is no such tool).

``tool_rounds`` is the loop around it: the LLM answers, its tool calls run, their results go back to it and it answers
again, for at most ``MAX_TOOL_ROUNDS`` rounds.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from airies.llm.vendors.base import LLMEvent, LLMRequest, StreamEnd, TextDelta, ToolCall, ToolCallDelta
from airies.tools.builtins import QUERY_KNOWLEDGE_BASE, TRANSFER_CALL, TRANSFER_NOT_AVAILABLE
from airies.tools.runner import ToolCaller, ToolInvocation, ToolOutcome, cap, parse_arguments
from airies.tools.schemas import BuiltinTools, ToolConfig

# Rounds of tool calls in one turn: the LLM calls tools, reads their results, and may call again at most this often.
MAX_TOOL_ROUNDS = 3
# (account_id, knowledge_base_ids, query) -> passages [{"text", "document_name", ...}]
Retriever = Callable[[str, list[str], str], Awaitable[list[dict[str, Any]]]]
LLMStreamer = Callable[[LLMRequest], AsyncIterator[LLMEvent]]


@dataclass
class RoundResult:
    outcomes: list[ToolOutcome]  # in the calls' order
    say: list[str] = field(default_factory=list)  # failure messages, then the transfer message
    transfer: tuple[str, str] | None = None  # (destination, message) when the call is handed over
    passages: int = 0


@dataclass(frozen=True)
class ToolWait:
    """A round's tools are about to run: ``messages`` are to be said while they do."""

    calls: list[ToolCall]
    messages: list[str]


def tool_messages(said: str, calls: Sequence[ToolCall], outcomes: Sequence[ToolOutcome]) -> list[dict[str, Any]]:
    """The OpenAI-format messages that hand a round's results back to the LLM: its own message with the calls, then
    one ``tool`` message per call."""
    assistant: dict[str, Any] = {
        "role": "assistant",
        "content": said or None,
        "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments or "{}"}}
            for call in calls
        ],
    }
    return [assistant, *({"role": "tool", "tool_call_id": o.tool_call_id, "content": o.result} for o in outcomes)]


class ToolDispatcher:
    def __init__(
        self,
        tools: Sequence[ToolConfig],
        builtin: BuiltinTools,
        knowledge_base_ids: Sequence[str] = (),
        *,
        caller: ToolCaller | None = None,
        retrieve: Retriever | None = None,
        can_transfer: bool = False,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.custom = {tool.name: tool for tool in tools}
        self.builtin = builtin
        self.knowledge_base_ids = list(knowledge_base_ids)
        self.caller = caller
        self.retrieve = retrieve
        self.can_transfer = can_transfer
        self.clock = clock

    def waiting_messages(self, calls: Sequence[ToolCall]) -> list[str]:
        """What to say while the round's requests are in flight (each message once)."""
        messages = [
            tool.messages.request_start
            for call in calls
            if (tool := self.custom.get(call.name)) is not None and not tool.async_ and tool.messages.request_start
        ]
        return list(dict.fromkeys(messages))

    async def run(
        self, calls: Sequence[ToolCall], *, account_id: str, conversation_id: str, turn_id: str
    ) -> RoundResult:
        invocations = [
            (self.custom[c.name], ToolInvocation(conversation_id, turn_id, c.id, c.name, c.arguments))
            for c in calls
            if c.name in self.custom
        ]
        result = RoundResult(outcomes=[])
        builtin = [call for call in calls if call.name not in self.custom]
        custom_outcomes, builtin_outcomes = await asyncio.gather(
            self._custom(invocations), asyncio.gather(*(self._builtin(c, account_id, result) for c in builtin))
        )
        by_id = {outcome.tool_call_id: outcome for outcome in [*custom_outcomes, *builtin_outcomes]}
        result.outcomes = [by_id[call.id] for call in calls]
        failed = [
            message
            for done in result.outcomes
            if not done.ok and done.name in self.custom and (message := self.custom[done.name].messages.request_failed)
        ]
        result.say += list(dict.fromkeys(failed))
        if result.transfer is not None and result.transfer[1]:
            result.say.append(result.transfer[1])
        return result

    async def _custom(self, invocations: list[tuple[ToolConfig, ToolInvocation]]) -> list[ToolOutcome]:
        if not invocations:
            return []
        if self.caller is None:
            return [
                ToolOutcome(
                    i.tool_call_id,
                    i.name,
                    parse_arguments(i.arguments)[0],
                    "failed",
                    "Tools are not available here.",
                    0.0,
                    error="no_tool_runner",
                )
                for _, i in invocations
            ]
        return await self.caller(invocations)

    async def _builtin(self, call: ToolCall, account_id: str, result: RoundResult) -> ToolOutcome:
        start = self.clock()
        arguments, problem = parse_arguments(call.arguments)
        args = arguments if isinstance(arguments, dict) else {}

        def outcome(status: str, text: str, **kwargs: Any) -> ToolOutcome:
            elapsed = round((self.clock() - start) * 1000, 2)
            return ToolOutcome(call.id, call.name, arguments, status, cap(text), elapsed, **kwargs)

        if problem is not None:
            return outcome("refused", f"The call was not made: {problem}.", error=problem)
        if call.name == TRANSFER_CALL and self.builtin.transfer_call.enabled:
            transfer = self.builtin.transfer_call
            destination = args.get("destination")
            if destination not in transfer.destinations:
                allowed = ", ".join(transfer.destinations)
                return outcome("refused", f"Unknown destination: choose one of {allowed}.", error="bad_destination")
            if not self.can_transfer:
                return outcome("unavailable", TRANSFER_NOT_AVAILABLE, error="transfer_not_available")
            message = args.get("message") if isinstance(args.get("message"), str) else None
            result.transfer = (str(destination), (message or transfer.message or "").strip())
            return outcome("completed", f"Transferring the call to {destination}.")
        if call.name == QUERY_KNOWLEDGE_BASE and self.builtin.query_knowledge_base.enabled:
            query = args.get("query")
            if not isinstance(query, str) or not query.strip():
                return outcome("refused", "The call was not made: a query is required.", error="no_query")
            if self.retrieve is None or not self.knowledge_base_ids:
                return outcome("failed", "The knowledge base is not available.", error="no_knowledge_base")
            try:
                passages = await self.retrieve(account_id, list(self.knowledge_base_ids), query)
            except Exception as exc:  # the LLM is told the search failed; the turn goes on
                return outcome("failed", "The knowledge base search failed.", error=str(exc)[:200])
            result.passages += len(passages)
            found = [{"text": p.get("text", ""), "source": p.get("document_name")} for p in passages]
            return outcome("completed", json.dumps(found) if found else "Nothing relevant was found.")
        return outcome("refused", f"There is no tool named {call.name}.", error="unknown_tool")


async def tool_rounds(
    request: LLMRequest,
    stream: LLMStreamer,
    dispatcher: ToolDispatcher,
    *,
    account_id: str,
    conversation_id: str,
    turn_id: str,
) -> AsyncIterator[LLMEvent | ToolWait | RoundResult]:
    """The LLM's reply, its tools run: the LLM's events as they come (one ``StreamEnd`` a round); when it calls tools
    other than ``end_call``, a ``ToolWait`` before they run and the round's ``RoundResult`` after, then the LLM answers
    again with their results. Stops when nothing is left to run, after ``MAX_TOOL_ROUNDS`` rounds of tools, or after
    a round that ends the call (``end_call`` among its calls, or a transfer)."""
    for tool_round in range(MAX_TOOL_ROUNDS + 1):
        said: list[str] = []
        calls: tuple[ToolCall, ...] = ()
        ending = False  # end_call, streamed or in the StreamEnd
        async for event in stream(request):
            if isinstance(event, TextDelta):
                said.append(event.text)
            elif isinstance(event, ToolCallDelta):
                ending = ending or event.name == "end_call"
            elif isinstance(event, StreamEnd):
                calls = event.tool_calls
                ending = ending or any(call.name == "end_call" for call in calls)
            yield event
        actionable = [call for call in calls if call.name != "end_call"]
        if not actionable or tool_round == MAX_TOOL_ROUNDS:
            return
        yield ToolWait(actionable, dispatcher.waiting_messages(actionable))
        done = await dispatcher.run(actionable, account_id=account_id, conversation_id=conversation_id, turn_id=turn_id)
        yield done
        if done.transfer is not None or ending:
            return  # the call is over: nothing more to ask the LLM
        request = replace(
            request, messages=[*request.messages, *tool_messages("".join(said), actionable, done.outcomes)]
        )
