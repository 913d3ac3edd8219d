"""Running an agent's analysis plan on a finished conversation.

``AnalysisRunner.run`` asks the LLM router (the agent's LLM settings: provider, model, fallbacks) once per enabled
step. A JSON step (structured data, success evaluation) whose answer is not JSON or does not validate against its
schema is asked again once, with the error; a second invalid answer fails the step, and its output stays ``null``:
nothing is invented. A provider that refuses the request fails the step; a transient provider failure is raised
(the state machine retries the task).

``PostCallAnalysis`` is what runs after a call: ``analyse`` (run the plan unless a result is stored, store it once,
bill it), ``mark_failed`` (the state machine gave up) and ``publish_ended`` (the ``conversation.ended`` report, with
the analysis). Every attempt's tokens are billed as LLM usage under keys derived from the conversation, the step and
the attempt, so a retried execution never bills twice: a stored result is billed again with the same keys, which the
ledger counts once.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy.orm import Session

from airies.agents.config import AgentConfig, AnalysisPlan, LLMConfig
from airies.analysis import prompts
from airies.billing.schemas import UsageComponent, UsageEvent
from airies.billing.usage import build_usage_publisher
from airies.conversations.events import ENDED, ConversationEvents, EventPublisher, Presigner
from airies.conversations.models import Conversation
from airies.conversations.service import ANALYSIS_FINAL, ConversationService, default_recorder
from airies.core.aio import run_sync
from airies.core.config import Settings
from airies.core.database import Database
from airies.core.errors import AiriesError, ProviderError
from airies.core.json_schemas import best_schema_error
from airies.core.models import utcnow
from airies.core.money import format_usd
from airies.llm.service import build_llm_service
from airies.llm.vendors.base import LLMRequest, LLMResponse, Usage
from airies.webhooks.service import build_webhook_publisher

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2  # a JSON answer that does not validate is asked for once more
MAX_TOKENS = 1024  # at least this much room for an answer, whatever the agent's max_tokens for spoken replies
TEMPERATURE = 0.0  # the same transcript gives the same analysis as far as the model allows
USAGE_SOURCE = "post_call_analysis"
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


class LLMClient(Protocol):
    """What answers an analysis request: ``airies.llm.service.LLMService`` (the router)."""

    async def generate_response(self, request: LLMRequest) -> LLMResponse: ...


class InvalidOutput(ValueError):
    pass


@dataclass
class Attempt:
    provider: str
    model: str
    usage: Usage
    cost: Decimal
    offline: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "prompt_tokens": self.usage.prompt_tokens,
            "cached_tokens": self.usage.cached_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "cost_usd": format_usd(self.cost),
        }


@dataclass
class StepResult:
    status: str = "failed"  # completed | failed
    output: Any = None
    error: str | None = None
    attempts: list[Attempt] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "error": self.error, "attempts": [a.as_dict() for a in self.attempts]}


def parse_json(text: str, schema: dict[str, Any]) -> Any:
    """The JSON value of an answer (a fenced code block is unwrapped), valid against ``schema``."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    try:
        value = json.loads(fenced.group(1) if fenced else stripped)
    except ValueError as exc:
        raise InvalidOutput(f"the answer is not JSON ({exc.args[0][:100]})") from None
    error = best_schema_error(schema, value)
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        raise InvalidOutput(f"the answer does not match the schema at {where}: {error.message[:200]}")
    return value


def analysis_status(steps: dict[str, StepResult]) -> str:
    if not steps:
        return "skipped"
    return "completed" if all(step.status == "completed" for step in steps.values()) else "failed"


def analysis_document(steps: dict[str, StepResult]) -> dict[str, Any]:
    """What is stored on the conversation: each step's output (``null`` when it failed or did not run), and how it
    ran (status, error, each attempt's provider, model, tokens and cost)."""
    attempts = [attempt for step in steps.values() for attempt in step.attempts]
    return {
        "summary": steps["summary"].output if "summary" in steps else None,
        "structured_data": steps["structured_data"].output if "structured_data" in steps else None,
        "success_evaluation": steps["success_evaluation"].output if "success_evaluation" in steps else None,
        "steps": {name: step.as_dict() for name, step in steps.items()},
        "cost_usd": format_usd(sum((a.cost for a in attempts), Decimal(0))),
        "offline": any(a.offline for a in attempts),
        "completed_at": utcnow().isoformat(),
    }


class AnalysisRunner:
    def __init__(self, llm: LLMClient, *, max_attempts: int = MAX_ATTEMPTS) -> None:
        self.llm = llm
        self.max_attempts = max_attempts

    async def run(self, plan: AnalysisPlan, llm: LLMConfig, transcript: str) -> dict[str, StepResult]:
        """Every enabled step of ``plan`` on ``transcript`` (``Caller:``/``Agent:`` lines), in plan order."""
        steps: dict[str, StepResult] = {}
        if plan.summary.enabled:
            steps["summary"] = await self.summary(plan.summary.prompt, llm, transcript)
        data = plan.structured_data
        if data.enabled and data.json_schema is not None:
            steps["structured_data"] = await self.json_step(data.prompt, data.json_schema, llm, transcript)
        evaluation = plan.success_evaluation
        if evaluation.enabled:
            prompt = prompts.evaluation_prompt(evaluation.prompt, evaluation.rubric)
            step = await self.json_step(prompt, prompts.RUBRICS[evaluation.rubric], llm, transcript)
            if step.output is not None:
                step.output = {"rubric": evaluation.rubric, **step.output}
            steps["success_evaluation"] = step
        return steps

    def request(
        self, llm: LLMConfig, messages: list[dict[str, str]], schema: dict[str, Any] | None = None
    ) -> LLMRequest:
        return LLMRequest(
            model=llm.model,
            messages=messages,
            temperature=TEMPERATURE,
            max_tokens=max(llm.max_tokens, MAX_TOKENS),
            provider=llm.provider,
            fallbacks=tuple((fb.provider, fb.model) for fb in llm.fallbacks),
            response_format={"type": "json_object"} if schema is not None else None,
            metadata={"json_schema": schema} if schema is not None else {"transcript_summary": True},
        )

    async def ask(self, request: LLMRequest, step: StepResult) -> str | None:
        """The answer's text, or None when the provider refused the request (the step fails with why)."""
        try:
            response = await self.llm.generate_response(request)
        except ProviderError as exc:
            if exc.retryable:
                raise
            step.error = f"the LLM provider refused the request: {exc.message}"[:500]
            return None
        end = response.end
        offline = end.metadata.get("is_language_model") is False
        step.attempts.append(Attempt(end.provider, end.model, end.usage, end.cost, offline))
        return response.text

    async def summary(self, prompt: str, llm: LLMConfig, transcript: str) -> StepResult:
        step = StepResult()
        text = await self.ask(self.request(llm, prompts.summary_messages(prompt, transcript)), step)
        if text is not None and text.strip():
            step.status, step.output = "completed", text.strip()
        elif text is not None:
            step.error = "the answer was empty"
        return step

    async def json_step(self, prompt: str, schema: dict[str, Any], llm: LLMConfig, transcript: str) -> StepResult:
        step = StepResult()
        messages = prompts.json_messages(prompt, schema, transcript)
        for _ in range(self.max_attempts):
            text = await self.ask(self.request(llm, messages, schema), step)
            if text is None:
                return step
            try:
                step.output = parse_json(text, schema)
            except InvalidOutput as exc:
                step.error = f"invalid output: {exc}"
                messages = [*messages, {"role": "assistant", "content": text}, prompts.retry_message(str(exc))]
                continue
            step.status, step.error = "completed", None
            return step
        return step


def usage_events(conversation: Conversation, analysis: dict[str, Any] | None) -> list[UsageEvent]:
    """The billing events of a stored analysis: each attempt's tokens, keyed by conversation, step and attempt."""
    events: list[UsageEvent] = []
    for name, step in ((analysis or {}).get("steps") or {}).items():
        for number, attempt in enumerate(step.get("attempts") or [], start=1):
            cached = int(attempt.get("cached_tokens", 0))
            rows = (
                (UsageComponent.LLM_INPUT_TOKENS, int(attempt.get("prompt_tokens", 0)) - cached),
                (UsageComponent.LLM_CACHED_TOKENS, cached),
                (UsageComponent.LLM_OUTPUT_TOKENS, int(attempt.get("completion_tokens", 0))),
            )
            events += [
                UsageEvent(
                    idempotency_key=f"{conversation.id}:analysis:{name}:{number}:{component.value}",
                    account_id=conversation.account_id,
                    component=component,
                    quantity=Decimal(quantity),
                    provider=attempt.get("provider"),
                    model=attempt.get("model"),
                    agent_id=conversation.agent_id,
                    conversation_id=conversation.id,
                    metadata={"source": USAGE_SOURCE, "step": name},
                )
                for component, quantity in rows
                if quantity > 0
            ]
    return events


class SessionSource(Protocol):
    def session(self) -> AbstractContextManager[Session]: ...


UsageSink = Callable[[Sequence[UsageEvent]], None]
# account_id -> the account's LLM service (its own keys, then the platform's; the offline responder without any)
LLMFactory = Callable[[str], LLMClient]


class PostCallAnalysis:
    """The post-call steps of one conversation, each safe to run again (the state machine retries them)."""

    def __init__(
        self,
        settings: Settings,
        database: SessionSource,
        *,
        llm: LLMFactory,
        usage_sink: UsageSink | None = None,
        publisher: EventPublisher | None = None,
        presign: Presigner | None = None,
    ) -> None:
        self.settings = settings
        self.database = database
        self.llm = llm
        self.usage_sink = usage_sink
        self.publisher = publisher
        self.presign = presign

    def conversations(self, session: Session) -> ConversationService:
        return ConversationService(session, self.settings, post_call=NO_POST_CALL)

    def analyse(self, account_id: str, conversation_id: str) -> str:
        """Run the plan once and store its result (``completed``, ``failed`` or ``skipped``); a stored result is
        kept (and billed again under the same keys: counted once). ``gone`` when the conversation was deleted."""
        config: AgentConfig | None = None
        stored: tuple[str, list[UsageEvent]] | None = None
        with self.database.session() as session:
            service = self.conversations(session)
            conversation = service.find(account_id, conversation_id)
            if conversation is None:
                return "gone"
            if conversation.analysis_status in ANALYSIS_FINAL:
                stored = str(conversation.analysis_status), usage_events(conversation, conversation.analysis)
            else:
                try:
                    config = service.config_for(conversation)
                except AiriesError:  # the agent was deleted: its plan is gone with it
                    config = None
                transcript = service.transcript_text(account_id, conversation_id)
                has_turns = conversation.turn_count > 0
        if stored is not None:
            self._bill(stored[1])  # outside the transaction: the ledger writes in its own
            return stored[0]
        if config is None or not has_turns:
            reason = "the agent was deleted" if config is None else "nothing was said on the call"
            return self._store(account_id, conversation_id, "skipped", {"reason": reason})
        steps = run_sync(AnalysisRunner(self.llm(account_id)).run, config.analysis, config.llm, transcript)
        document = analysis_document(steps)
        if not steps:
            document["reason"] = "the agent's analysis plan has no step enabled"
        return self._store(account_id, conversation_id, analysis_status(steps), document)

    def _store(self, account_id: str, conversation_id: str, status: str, document: dict[str, Any]) -> str:
        with self.database.session() as session:
            conversation = self.conversations(session).store_analysis(account_id, conversation_id, status, document)
            if conversation is None:
                return "gone"
            events, stored = usage_events(conversation, conversation.analysis), str(conversation.analysis_status)
        self._bill(events)  # once the result is committed: billed is never more than stored
        return stored

    def _bill(self, events: list[UsageEvent]) -> None:
        if events and self.usage_sink is not None:
            self.usage_sink(events)

    def mark_failed(self, account_id: str, conversation_id: str, error: str) -> str:
        """The analysis could not run (the state machine's retries are spent, or it timed out)."""
        document = {"error": error[:500], "completed_at": utcnow().isoformat()}
        return self._store(account_id, conversation_id, "failed", document)

    def publish_ended(self, account_id: str, conversation_id: str) -> str | None:
        """Send ``conversation.ended`` (the end-of-call report, with the analysis); its key makes a retry send it
        once. None when no endpoint wants it, or the conversation is gone."""
        if self.publisher is None:
            return None
        with self.database.session() as session:
            conversation = self.conversations(session).find(account_id, conversation_id)
            if conversation is None:
                return None
            data = ConversationEvents(self.publisher, presign=self.presign).report(session, conversation)
            agent_id = conversation.agent_id
        return self.publisher.publish(account_id, agent_id, ENDED, data, idempotency_key=f"{conversation_id}:{ENDED}")

    def run(self, account_id: str, conversation_id: str) -> str:
        """All of it in this process (no state machine): analyse, or mark failed, then send the report."""
        try:
            status = self.analyse(account_id, conversation_id)
        except Exception as exc:
            log.exception("post-call analysis failed for %s", conversation_id)
            status = self.mark_failed(account_id, conversation_id, f"{type(exc).__name__}: {exc}")
        self.publish_ended(account_id, conversation_id)
        return status


class _NoPostCall:
    """What the analysis' own conversation service starts: nothing (it never ends a conversation)."""

    def start(self, account_id: str, conversation_id: str) -> None:
        return None


NO_POST_CALL = _NoPostCall()


def build_post_call_analysis(settings: Settings, database: Database) -> PostCallAnalysis:
    """The platform's wiring: the account's LLM router, usage to the billing queue (or the ledger locally), the
    end-of-call report through the webhooks publisher, recording links presigned by the recorder."""
    return PostCallAnalysis(
        settings,
        database,
        llm=lambda account_id: build_llm_service(settings, database, account_id),
        usage_sink=build_usage_publisher(settings, database).publish,
        publisher=build_webhook_publisher(settings, database),
        presign=default_recorder(settings).presign,
    )
