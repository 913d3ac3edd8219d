"""Agent testing (``POST /api/v1/agents/{id}/test``): run an agent's config against its LLM, by text.

* Text test: ``{"message": "..."}`` -> one turn.
* Scripted test: ``{"turns": [{"user": ..., "expect_contains": [...], "expect_not_contains": [...],
  "expect_regex": ..., "expect_tool_called": "name", "expect_tool_arguments": {...}, "expect_end_call": true|false,
  "tool_results": {...}}, ...], "tool_results": {...}}`` -> pass/fail per turn and per check.
  ``expect_tool_arguments`` passes when a call of ``expect_tool_called`` has those keys with those values.
  ``tool_results`` (tool name -> result) are canned answers for the agent's custom tools: the server is not called
  (a turn's own override the test's). Tools without one are called on their server as on a call (signed with the
  agent's server-message secret, through the URL guard); their results go back to the LLM as on a call
  (``airies.tools.dispatch``), and each call is reported with its status and result. Checks are case-insensitive for contains / not contains; the regex is searched with
  IGNORECASE. The pattern is user input run against model output, so its work is bounded: it is compiled (and
  rejected with 422 when invalid or longer than ``MAX_REGEX_LENGTH``) before any LLM call, searched in at most
  ``MAX_REGEX_SUBJECT_CHARS`` of the reply, and stopped after ``REGEX_TIMEOUT_S`` (the ``regex`` package's
  ``timeout``): a catastrophic pattern such as ``(a+)+$`` fails its check with ``"error": "regex_timeout"``
  instead of hanging the request. A turn with no expectations passes when it got a reply.
* ``use_draft`` (default true) runs the draft; false runs the published version (409 if there is none).

A turn is built exactly as a call turn is (``airies.agents.prompts``: system prompt + knowledge passages + the
voice-call instruction, the ``end_call`` tool, history): the agent's first message opens the history when the agent
speaks first; a user turn containing one of the agent's end-call phrases is answered with its end-call message
without calling the LLM (as on a call); the call also ends when the model calls ``end_call`` or says an end-call
phrase. Turns after the call ended are reported as skipped (failed). Knowledge passages come from an injectable
retriever ``(account_id, knowledge_base_ids, query) -> list[str | {"text": ...}]``; by default the knowledge
capability's ``build_knowledge_service(...).retrieve_for_agent``. End-call phrases match as on a call
(``airies.core.text.contains_phrase``).
Returned per turn: reply, tool calls, end_call, TTFT and total latency, usage (with ``engines``: the configured LLM
provider and the one that answered, see ``airies.agents.engines``), exact cost, provider and model.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import regex
from sqlalchemy import select
from sqlalchemy.orm import Session

from airies.agents.config import AgentConfig, FirstMessageMode
from airies.agents.engines import engine_report
from airies.agents.models import AgentVersion
from airies.agents.prompts import llm_request
from airies.agents.schemas import AgentTestRequest, AgentTestTurn
from airies.agents.service import AgentService
from airies.core.aio import run_sync
from airies.core.config import Settings
from airies.core.database import Database
from airies.core.errors import ConflictError, ValidationFailedError
from airies.core.money import format_usd
from airies.core.text import contains_phrase
from airies.core.url_guard import url_guard
from airies.knowledge.service import build_knowledge_service
from airies.llm.service import LLMService, build_llm_service
from airies.llm.vendors.base import StreamEnd, TextDelta
from airies.tools.dispatch import RoundResult, ToolDispatcher, ToolWait, tool_rounds
from airies.tools.runner import ToolRunner
from airies.webhooks.service import WebhookService

Retriever = Callable[[str, list[str], str], "Awaitable[list[Any]] | list[Any]"]


def default_retriever(settings: Settings, database: Database | None) -> Retriever:
    """The knowledge capability's ``retrieve_for_agent`` (built on first use: most tests have no knowledge base)."""

    def retrieve(account_id: str, kb_ids: list[str], query: str) -> list[Any]:
        return build_knowledge_service(settings, database).retrieve_for_agent(account_id, kb_ids, query)

    return retrieve


def passage_dict(passage: Any) -> dict[str, Any]:
    """A passage as ``{"text", ...}`` whatever the retriever returned (str, dict, or a dataclass with ``text``)."""
    if isinstance(passage, dict):
        return passage
    if isinstance(passage, str):
        return {"text": passage}
    if dataclasses.is_dataclass(passage) and not isinstance(passage, type):
        return dataclasses.asdict(passage)
    return {"text": str(getattr(passage, "text", passage))}


def check_turn(
    turn: AgentTestTurn, reply: str, tool_calls: list[dict[str, Any]], end_call: bool
) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    lowered = reply.lower()
    for expected in turn.expect_contains:
        checks.append({"check": "contains", "expected": expected, "passed": expected.lower() in lowered})
    for unwanted in turn.expect_not_contains:
        checks.append({"check": "not_contains", "expected": unwanted, "passed": unwanted.lower() not in lowered})
    if turn.expect_regex is not None:
        checks.append(regex_check(turn.expect_regex, reply))
    if turn.expect_tool_called is not None:
        called = [c for c in tool_calls if c["name"] == turn.expect_tool_called]
        checks.append({"check": "tool_called", "expected": turn.expect_tool_called, "passed": bool(called)})
        if turn.expect_tool_arguments is not None:
            wanted = turn.expect_tool_arguments
            matches = any(
                isinstance(c["arguments"], dict)
                and all(k in c["arguments"] and c["arguments"][k] == v for k, v in wanted.items())
                for c in called
            )
            checks.append({"check": "tool_arguments", "expected": wanted, "passed": matches})
    if turn.expect_end_call is not None:
        checks.append(
            {"check": "end_call", "expected": turn.expect_end_call, "passed": end_call == turn.expect_end_call}
        )
    return checks


MAX_REGEX_LENGTH = 500
MAX_REGEX_SUBJECT_CHARS = 10_000  # a spoken reply is far shorter; the cap bounds what a slow pattern scans
REGEX_TIMEOUT_S = 0.25


def _compile(pattern: str) -> Any:
    return regex.compile(pattern, regex.IGNORECASE)  # VERSION0: the syntax and semantics of ``re``


def regex_check(pattern: str, reply: str) -> dict[str, Any]:
    """Search ``pattern`` in the reply with bounded work: a timeout fails the check, it never hangs the test."""
    check: dict[str, Any] = {"check": "regex", "expected": pattern, "passed": False}
    try:
        check["passed"] = _compile(pattern).search(reply[:MAX_REGEX_SUBJECT_CHARS], timeout=REGEX_TIMEOUT_S) is not None
    except TimeoutError:
        check["error"] = "regex_timeout"
        check["message"] = f"the pattern did not finish within {REGEX_TIMEOUT_S:g} s (catastrophic backtracking?)"
    return check


def validate_expectations(turns: list[AgentTestTurn]) -> None:
    """Reject a bad regex before any LLM call (422), instead of failing half-way with a 500."""
    problems = []
    for index, turn in enumerate(turns):
        if turn.expect_regex is None:
            continue
        field = f"turns.{index}.expect_regex"
        if len(turn.expect_regex) > MAX_REGEX_LENGTH:
            problems.append({"field": field, "code": "too_long", "message": f"at most {MAX_REGEX_LENGTH} characters"})
            continue
        try:
            _compile(turn.expect_regex)
        except (regex.error, ValueError, OverflowError) as exc:
            problems.append({"field": field, "code": "invalid_regex", "message": str(exc)})
    if problems:
        raise ValidationFailedError("invalid test expectations", details=problems)


class AgentTestService:
    def __init__(
        self,
        session: Session,
        settings: Settings,
        *,
        database: Database | None = None,
        llm: LLMService | None = None,
        retriever: Retriever | bool | None = True,
    ) -> None:
        self.session = session
        self.settings = settings
        self.database = database
        self.llm = llm
        # True = the default (knowledge capability if present); None/False = no retrieval; a callable = that.
        self.retriever: Retriever | None = (
            default_retriever(settings, database) if retriever is True else (retriever or None)
        )

    def load_config(self, account_id: str, agent_id: str, use_draft: bool) -> tuple[AgentConfig, str, int | None]:
        agent = AgentService(self.session).get(account_id, agent_id)
        if use_draft:
            return AgentConfig.model_validate(agent.draft_config), "draft", None
        if agent.current_version is None:
            raise ConflictError("agent has no published version: deploy it or test the draft (use_draft=true)")
        version = self.session.scalars(
            select(AgentVersion).where(
                AgentVersion.account_id == account_id,
                AgentVersion.agent_id == agent_id,
                AgentVersion.version == agent.current_version,
            )
        ).one()
        return AgentConfig.model_validate(version.config), "version", version.version

    async def _retrieve_passages(self, account_id: str, kb_ids: list[str], query: str) -> list[dict[str, Any]]:
        """``query_knowledge_base``: the retriever of the test, as the built-in calls it."""
        if not self.retriever:
            return []
        result = self.retriever(account_id, kb_ids, query)
        if inspect.isawaitable(result):
            result = await result
        return [passage_dict(passage) for passage in result or []]

    async def _retrieve(self, account_id: str, config: AgentConfig, query: str) -> list[Any]:
        if not config.knowledge_base_ids:
            return []
        return await self._retrieve_passages(account_id, list(config.knowledge_base_ids), query)

    async def run(self, account_id: str, agent_id: str, body: AgentTestRequest) -> dict[str, Any]:
        turns = list(body.turns)
        if body.message:
            turns.insert(0, AgentTestTurn(user=body.message))
        if not turns:
            raise ValidationFailedError(
                "give a message or turns",
                details=[
                    {"field": "message", "code": "missing", "message": "a message or at least one turn is required"}
                ],
            )
        validate_expectations(turns)
        config, source, version = self.load_config(account_id, agent_id, body.use_draft)
        llm = self.llm or build_llm_service(self.settings, self.database, account_id, session=self.session)

        history: list[dict[str, Any]] = []
        if config.first_message and config.first_message_mode == FirstMessageMode.assistant_speaks_first:
            history.append({"role": "assistant", "content": config.first_message})
        results: list[dict[str, Any]] = []
        ended = False
        totals = {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0}
        total_cost = Decimal(0)
        ttfts: list[float] = []
        is_language_model = True
        canned_per_turn = [{**body.tool_results, **turn.tool_results} for turn in turns]
        tools = self._tool_runner(account_id, agent_id, config, canned_per_turn)
        for index, turn in enumerate(turns):
            if ended:
                results.append(
                    {
                        "index": index,
                        "user": turn.user,
                        "skipped": True,
                        "passed": False,
                        "reason": "the call had already ended",
                    }
                )
                continue
            if tools is not None:
                tools.canned = canned_per_turn[index]
            outcome = await self._turn(llm, account_id, config, history, turn.user, tools, index)
            ended = outcome["end_call"]
            used_model = outcome.pop("is_language_model")
            if used_model is not None:
                is_language_model = is_language_model and used_model
            checks = check_turn(turn, outcome["reply"], outcome["tool_calls"], outcome["end_call"])
            usage = outcome["usage"]
            for key in totals:
                totals[key] += usage.get(key, 0)
            total_cost += Decimal(outcome["cost_usd"])
            if outcome["latency"]["ttft_ms"] is not None:
                ttfts.append(outcome["latency"]["ttft_ms"])
            results.append(
                {
                    "index": index,
                    "user": turn.user,
                    "skipped": False,
                    **outcome,
                    "checks": checks,
                    "passed": all(c["passed"] for c in checks)
                    and (bool(outcome["reply"]) or bool(outcome["tool_calls"])),
                }
            )
            history.append({"role": "user", "content": turn.user})
            history.append({"role": "assistant", "content": outcome["reply"]})
        first = results[0]
        return {
            "agent_id": agent_id,
            "config_source": source,
            "version": version,
            "mode": "scripted" if body.turns else "text",
            "first_message": config.first_message,
            "reply": first.get("reply"),
            "latency": first.get("latency"),
            "usage": first.get("usage"),
            "cost_usd": first.get("cost_usd"),
            "is_language_model": is_language_model,
            "turns": results,
            "passed": all(r["passed"] for r in results),
            "totals": {
                **totals,
                "cost_usd": format_usd(total_cost),
                "turns": len(results),
                "passed_turns": sum(1 for r in results if r["passed"]),
                "avg_ttft_ms": round(sum(ttfts) / len(ttfts), 2) if ttfts else None,
            },
        }

    def _tool_runner(
        self, account_id: str, agent_id: str, config: AgentConfig, canned_per_turn: list[dict[str, Any]]
    ) -> ToolRunner | None:
        """The runner of the agent's custom tools for every turn (each turn sets its canned results on it); the
        signing secret is read now, on this thread and session, only when a tool of some turn may reach its server."""
        if not config.tools:
            return None
        secret = None
        if any(tool.name not in canned for canned in canned_per_turn for tool in config.tools):
            secret = WebhookService(self.session, self.settings, queue=None).signing_secret_for(account_id, agent_id)
        return ToolRunner(url_guard(self.settings), secret=lambda _conversation_id: secret)

    async def _turn(
        self,
        llm: LLMService,
        account_id: str,
        config: AgentConfig,
        history: list[dict[str, Any]],
        user: str,
        tools: ToolRunner | None = None,
        index: int = 0,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        phrase = contains_phrase(user, config.end_call_phrases)
        if phrase is not None:  # as on a call: the caller said goodbye, the agent answers without the LLM
            return {
                "reply": config.end_call_message or "",
                "tool_calls": [],
                "end_call": True,
                "end_call_reason": "caller_end_call_phrase",
                "latency": {"ttft_ms": 0.0, "total_ms": round((time.perf_counter() - started) * 1000, 2)},
                "usage": {
                    "prompt_tokens": 0,
                    "completion_tokens": 0,
                    "cached_tokens": 0,
                    "estimated": False,
                    "engines": {},
                },
                "cost_usd": format_usd(0),
                "provider": None,
                "model": None,
                "passages": 0,
                "is_language_model": None,  # no model was asked
            }
        retrieval_error = None
        try:
            on_demand = config.builtin_tools.query_knowledge_base.enabled  # as on a call: the LLM asks for it
            passages = [] if on_demand else await self._retrieve(account_id, config, user)
        except Exception as exc:  # as on a call: answer without retrieval rather than fail the turn
            passages, retrieval_error = [], f"{type(exc).__name__}: {exc}"[:200]
        request = llm_request(config, history, user, passages)
        dispatcher = ToolDispatcher(
            config.tools,
            config.builtin_tools,
            config.knowledge_base_ids,
            caller=tools.call_many if tools is not None else None,
            retrieve=self._retrieve_passages,
        )
        parts: list[str] = []
        tool_calls: list[dict[str, Any]] = []
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0}
        cost = Decimal(0)
        first_end: StreamEnd | None = None
        end: StreamEnd | None = None
        rounds = tool_rounds(
            request,
            lambda req: llm.stream_response(req, account_id=account_id),
            dispatcher,
            account_id=account_id,
            conversation_id="agent_test",
            turn_id=f"agent_test_turn_{index}",
        )
        async for event in rounds:
            if isinstance(event, TextDelta):
                parts.append(event.text)
            elif isinstance(event, StreamEnd):
                end = event
                first_end = first_end or end
                for key in usage:
                    usage[key] += getattr(end.usage, key)
                cost += end.cost
                tool_calls += [
                    {"id": c.id, "name": c.name, "arguments": _json_or_text(c.arguments)}
                    for c in end.tool_calls
                    if c.name == "end_call"
                ]
            elif isinstance(event, ToolWait):
                parts += [f" {message} " for message in event.messages]
            elif isinstance(event, RoundResult):
                tool_calls += [outcome.record() for outcome in event.outcomes]
                parts += [f" {message} " for message in event.say]
        # the router always finishes with a StreamEnd or raises
        assert end is not None and first_end is not None
        reply = " ".join("".join(parts).split())
        end_reason = None
        if any(c["name"] == "end_call" for c in tool_calls):
            end_reason = "assistant_end_call_tool"
        elif contains_phrase(reply, config.end_call_phrases):
            end_reason = "assistant_end_call_phrase"
        return {
            "reply": reply,
            "tool_calls": tool_calls,
            "end_call": end_reason is not None,
            "end_call_reason": end_reason,
            "latency": {
                "ttft_ms": None if first_end.ttft_ms is None else round(first_end.ttft_ms, 2),
                "total_ms": round((time.perf_counter() - started) * 1000, 2),
            },
            "usage": {
                **usage,
                "estimated": end.usage.estimated,
                "engines": {"llm": engine_report("llm", config.llm.provider, end.provider)},
            },
            "cost_usd": format_usd(cost),
            "provider": end.provider,
            "model": end.model,
            "passages": len(passages),
            "retrieval_error": retrieval_error,
            "failover": bool(end.metadata.get("failover")),
            "is_language_model": bool(end.metadata.get("is_language_model", True)),
        }


def _json_or_text(arguments: str) -> Any:
    try:
        return json.loads(arguments) if arguments else {}
    except ValueError:
        return arguments


def run_agent_test(
    session: Session,
    settings: Settings,
    database: Database | None,
    account_id: str,
    agent_id: str,
    body: AgentTestRequest,
) -> dict[str, Any]:
    """Sync entry point for the (sync) agents router."""
    service = AgentTestService(session, settings, database=database)
    return run_sync(service.run, account_id, agent_id, body)
