"""Server messages of a conversation: ``conversation.started``, ``turn.completed``, ``transcript.updated``,
``tool.called`` (one per tool call of a stored turn) and
``conversation.ended`` (the end-of-call report), handed to an injected publisher (the webhooks capability's).

An event is published only once the unit of work that caused it has committed (never for a rolled-back change, and
never while that transaction holds its locks), each under an idempotency key (the conversation or turn id and the
event type), so a retried invocation does not publish twice. Publishing never fails the call: the publisher logs
and swallows its own failures, and anything else raised here is logged too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from airies.conversations.models import Conversation, ConversationTurn
from airies.conversations.post_call import PostCallStarter
from airies.core.money import format_usd
from airies.webhooks.payloads import end_of_call_report

log = logging.getLogger(__name__)

STARTED = "conversation.started"
TURN_COMPLETED = "turn.completed"
TRANSCRIPT_UPDATED = "transcript.updated"
TOOL_CALLED = "tool.called"
ENDED = "conversation.ended"
COST_COMPONENTS = ("stt", "llm", "tts")
# Recording links in the end-of-call report outlive the call's delivery window (retries run for about a day).
RECORDING_URL_TTL_S = 24 * 3600


class EventPublisher(Protocol):
    """What publishes a server message (``airies.webhooks.service.WebhookPublisher``): returns the event id, or
    None when no endpoint wants it or publishing failed; never raises."""

    def publish(
        self,
        account_id: str,
        agent_id: str | None,
        event_type: str,
        data: dict[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> str | None: ...


# (bucket/key record of one stored recording, expires_in seconds) -> a presigned GET URL
Presigner = Callable[[dict[str, Any], int], str]


def transcript_entries(turn: ConversationTurn) -> list[dict[str, Any]]:
    """The transcript lines of one stored turn: the caller's words, then what the agent actually delivered."""
    entries: list[dict[str, Any]] = []
    if turn.user_text:
        entries.append({"role": "user", "text": turn.user_text, "at": turn.started_at.isoformat(), "seq": turn.seq})
    if turn.agent_text:
        entries.append(
            {
                "role": "agent",
                "text": turn.agent_text,
                "at": turn.ended_at.isoformat(),
                "seq": turn.seq,
                "interrupted": bool(turn.interrupted),
            }
        )
    return entries


def latency_stages(latency: dict[str, Any] | None) -> dict[str, float]:
    """The numeric stages of a turn's latency waterfall (ms)."""
    return {
        stage: float(value)
        for stage, value in (latency or {}).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def turn_components(turn: ConversationTurn) -> dict[str, Decimal]:
    """A stored turn's cost by component (its ``cost`` also carries the ``total``)."""
    return {name: Decimal(str(amount)) for name, amount in (turn.cost or {}).items() if name != "total"}


def cost_components(turns: Sequence[ConversationTurn]) -> dict[str, Decimal]:
    parts = {name: Decimal(0) for name in COST_COMPONENTS}
    for turn in turns:
        for name, amount in turn_components(turn).items():
            parts[name] = parts.get(name, Decimal(0)) + amount
    return parts


def analysis_report(conversation: Conversation) -> dict[str, Any] | None:
    """The analysis in the end-of-call report: its status and result (None when no analysis ran)."""
    if conversation.analysis_status is None:
        return None
    return {"status": conversation.analysis_status, **(conversation.analysis or {})}


class ConversationEvents:
    def __init__(
        self,
        publisher: EventPublisher | None,
        *,
        presign: Presigner | None = None,
        post_call: PostCallStarter | None = None,
    ) -> None:
        self.publisher = publisher
        self.presign = presign
        self.post_call = post_call

    def _after_commit(self, session: Session, conversation: Conversation, event_type: str, key: str, data: Any) -> None:
        publisher = self.publisher
        if publisher is None:
            return
        account_id, agent_id = conversation.account_id, conversation.agent_id

        def publish(_session: Session) -> None:
            try:
                publisher.publish(account_id, agent_id, event_type, data, idempotency_key=key)
            except Exception:  # the call has committed: its caller must not see this failure
                log.exception("conversation event not published", extra={"event_type": event_type, "key": key})

        event.listen(session, "after_commit", publish, once=True)

    def started(self, session: Session, conversation: Conversation) -> None:
        data = {
            "conversation_id": conversation.id,
            "agent_id": conversation.agent_id,
            "agent_version": conversation.agent_version,
            "channel": conversation.channel,
            "started_at": conversation.started_at.isoformat(),
        }
        self._after_commit(session, conversation, STARTED, f"{conversation.id}:{STARTED}", data)

    def turn_stored(self, session: Session, conversation: Conversation, turn: ConversationTurn) -> None:
        if self.publisher is None:
            return
        completed = {
            "conversation_id": conversation.id,
            "turn_id": turn.id,
            "seq": turn.seq,
            "status": turn.status,
            "input_mode": turn.input_mode,
            "user_text": turn.user_text,
            "agent_text": turn.agent_text,
            "interrupted": bool(turn.interrupted),
            "latency_ms": latency_stages(turn.latency),
            "cost": {
                "total": format_usd(turn.cost_usd or 0),
                "components": {name: format_usd(v) for name, v in sorted(turn_components(turn).items())},
            },
        }
        self._after_commit(session, conversation, TURN_COMPLETED, f"{turn.id}:{TURN_COMPLETED}", completed)
        update = {"conversation_id": conversation.id, "turn_id": turn.id, "transcript": transcript_entries(turn)}
        self._after_commit(session, conversation, TRANSCRIPT_UPDATED, f"{turn.id}:{TRANSCRIPT_UPDATED}", update)
        for call in turn.tool_calls or []:
            called = {"conversation_id": conversation.id, "turn_id": turn.id, **call}
            key = f"{turn.id}:{str(call.get('id'))[:100]}:{TOOL_CALLED}"
            self._after_commit(session, conversation, TOOL_CALLED, key, called)

    def ended(self, session: Session, conversation: Conversation) -> None:
        """With a post-call analysis, start it once the end has committed: it sends ``conversation.ended`` (with
        the analysis) when it is done. Without one, or for a conversation being deleted, send the report now."""
        if self.post_call is not None and conversation.end_reason != "deleted":
            self._start_post_call(session, conversation, self.post_call)
            return
        if self.publisher is None:
            return
        try:
            data = self.report(session, conversation)
        except Exception:  # the call ends whatever the report's fate
            log.exception("end-of-call report failed for %s", conversation.id)
            return
        self._after_commit(session, conversation, ENDED, f"{conversation.id}:{ENDED}", data)

    def _start_post_call(self, session: Session, conversation: Conversation, post_call: PostCallStarter) -> None:
        """Mark the analysis pending and start it after the commit. Should the start fail, the report (analysis
        ``{"status": "pending"}``) is sent at once instead, so the receiver still hears that the call ended."""
        conversation.analysis_status = "pending"
        account_id, agent_id, conversation_id = conversation.account_id, conversation.agent_id, conversation.id
        publisher = self.publisher
        fallback: dict[str, Any] | None = None
        if publisher is not None:
            try:
                fallback = self.report(session, conversation)
            except Exception:
                log.exception("end-of-call report failed for %s", conversation_id)

        def start(_session: Session) -> None:
            try:
                post_call.start(account_id, conversation_id)
                return
            except Exception:  # the call has ended: its caller must not see this failure
                log.exception("post-call analysis not started for %s", conversation_id)
            if publisher is not None and fallback is not None:
                try:
                    key = f"{conversation_id}:{ENDED}"
                    publisher.publish(account_id, agent_id, ENDED, fallback, idempotency_key=key)
                except Exception:
                    log.exception("conversation event not published", extra={"event_type": ENDED})

        event.listen(session, "after_commit", start, once=True)

    def report(self, session: Session, conversation: Conversation) -> dict[str, Any]:
        turns = list(
            session.scalars(
                select(ConversationTurn)
                .where(ConversationTurn.conversation_id == conversation.id)
                .order_by(ConversationTurn.seq)
            )
        )
        assert conversation.ended_at is not None
        return end_of_call_report(
            conversation_id=conversation.id,
            end_reason=conversation.end_reason or "",
            started_at=conversation.started_at,
            ended_at=conversation.ended_at,
            transcript=[entry for turn in turns for entry in transcript_entries(turn)],
            cost_by_component=cost_components(turns),
            turn_latencies=[latency_stages(turn.latency) for turn in turns],
            recording_urls=self.recording_urls(conversation, turns),
            analysis=analysis_report(conversation),
        )

    def recording_urls(self, conversation: Conversation, turns: Sequence[ConversationTurn]) -> list[str]:
        if not conversation.recording_enabled or self.presign is None:
            return []
        urls: list[str] = []
        for turn in turns:
            for side in ("caller", "agent"):
                stored = (turn.recording or {}).get(side)
                if isinstance(stored, dict) and stored.get("key"):
                    urls.append(self.presign(stored, RECORDING_URL_TTL_S))
        return urls
