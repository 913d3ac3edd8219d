"""Conversations: start (token + WebSocket URL), turns over HTTP or WebSocket, history, cost and analytics.

The per-turn pipeline lives in ``airies.conversations.turns``; live state in ``airies.conversations.sessions``; the socket
edge in ``airies.conversations.live``. This module owns the rows that outlive a call and the wiring to the other
capabilities (LLM, voice, knowledge, billing), each injected so tests pass local doubles.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import json
import logging
import os
import secrets
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from airies.agents.config import AgentConfig
from airies.agents.models import Agent
from airies.agents.versions import published_version
from airies.conversations import protocol as wp
from airies.conversations.events import ConversationEvents, EventPublisher
from airies.conversations.models import Conversation, ConversationTurn
from airies.conversations.post_call import PostCallStarter, post_call_starter
from airies.conversations.turn_metrics import TurnMetrics
from airies.core.bootstrap import after_snapstart_restore
from airies.core.config import Settings
from airies.core.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    UnauthorizedError,
    ValidationFailedError,
)
from airies.core.ids import new_id
from airies.core.models import utcnow
from airies.core.money import format_usd
from airies.core.schemas import check_metadata

if TYPE_CHECKING:
    # Request bodies (the API and telephony build them) and a turn's result (the turn pipeline makes it): this
    # module only passes them on, so the functions that end, sweep or analyse conversations load neither.
    from airies.conversations.schemas import ConversationCreate, ConversationUpdate
    from airies.conversations.turns import TurnResult

log = logging.getLogger(__name__)

PERIODS = {
    "24h": timedelta(hours=1 * 24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "90d": timedelta(days=90),
}
HISTORY_TURNS = 20
# Usage sink: billing's publisher (SQS on AWS). Receives billing UsageEvent objects.
UsageSink = Callable[[list[Any]], None]
# Credit gate: (account_id) -> (allowed, reason, message)
CreditGate = Callable[[str], tuple[bool, str | None, str | None]]


# --- tokens --------------------------------------------------------------------------------------------------------
class ConversationTokens:
    """Short-lived HMAC tokens bound to one conversation: ``$connect`` trusts nothing else."""

    def __init__(self, secret: bytes, *, ttl_seconds: int = 300, clock: Callable[[], float] = time.time) -> None:
        self.secret = secret
        self.ttl_seconds = ttl_seconds
        self.clock = clock

    def issue(self, conversation_id: str, account_id: str) -> tuple[str, datetime]:
        expires = int(self.clock()) + self.ttl_seconds
        claims = {"c": conversation_id, "a": account_id, "e": expires, "n": secrets.token_hex(4)}
        body = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).rstrip(b"=")
        sig = base64.urlsafe_b64encode(hmac.new(self.secret, body, hashlib.sha256).digest()).rstrip(b"=")
        return f"{body.decode()}.{sig.decode()}", datetime.fromtimestamp(expires, UTC)

    def verify(self, token: str | None, conversation_id: str | None = None) -> dict[str, Any]:
        if not token or "." not in token or len(token) > 1000:
            raise UnauthorizedError("missing or malformed conversation token", code="invalid_token")
        body, _, sig = token.partition(".")
        expected = base64.urlsafe_b64encode(hmac.new(self.secret, body.encode(), hashlib.sha256).digest()).rstrip(b"=")
        if not hmac.compare_digest(expected, sig.encode()):
            raise UnauthorizedError("conversation token signature is invalid", code="invalid_token")
        try:
            claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError as exc:
            raise UnauthorizedError("conversation token is malformed", code="invalid_token") from exc
        if claims.get("e", 0) < self.clock():
            raise UnauthorizedError("conversation token has expired", code="token_expired")
        if conversation_id and claims.get("c") != conversation_id:
            raise UnauthorizedError("token belongs to another conversation", code="invalid_token")
        return claims


def token_secret(settings: Settings) -> bytes:
    if settings.ws_token_secret:
        return settings.ws_token_secret.encode()
    if settings.on_aws:
        from airies.core.secrets import get_platform_secret

        value = get_platform_secret("ws_token_secret", settings)
        if not value:
            raise RuntimeError("ws_token_secret is missing from the platform secret")
        return value.encode()
    path = Path(settings.data_dir) / "ws_token_secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


# (queue URL, region, endpoint) -> the SQS usage publisher of this container: its boto3 client costs ~10 ms of CPU
# to build, once, not once per turn.
_usage_publishers: dict[tuple[str, str | None, str | None], Any] = {}
after_snapstart_restore(_usage_publishers.clear)  # a snapshot's pooled connections are stale after a restore


def billing_usage_sink(settings: Settings, session: Session | None) -> UsageSink | None:
    """Usage to the billing ledger: through SQS when the queue is configured (AWS), else tracked in this unit of work."""
    from airies.billing.metering import SqsUsagePublisher
    from airies.billing.usage import build_usage_service

    if settings.usage_queue_url:
        key = (settings.usage_queue_url, settings.aws_region, settings.aws_endpoint_url)
        publisher = _usage_publishers.get(key)
        if publisher is None:
            publisher = _usage_publishers[key] = SqsUsagePublisher(
                settings.usage_queue_url, region=settings.aws_region, endpoint_url=settings.aws_endpoint_url
            )
        return publisher.publish
    service = build_usage_service(settings)

    def track(events: list[Any]) -> None:
        service.track_usage(events, session=session)

    return track


def billing_credit_gate(settings: Settings, session: Session | None) -> CreditGate | None:
    from airies.billing.usage import build_usage_service

    service = build_usage_service(settings)

    def check(account_id: str) -> tuple[bool, str | None, str | None]:
        result = service.check_usage_limits(account_id, starting_conversation=False, session=session)
        return bool(result.allowed), result.reason, result.message

    return check


# (conversation ids) -> for those with a live session: does a caller still hold it (connected, or dropped within
# the resume window)? ``WebSocketService.holding_callers``.
HoldingCallers = Callable[[list[str]], dict[str, bool]]


def live_conversation_count(
    settings: Settings, session: Session, account_id: str, holding: HoldingCallers | None = None
) -> int:
    """The account's conversations that count against its plan's concurrent limit.

    Counted: one started whose token can still connect (older never-connected ones do not count); an active one
    whose caller holds it: connected, or within ``ws_resume_window_seconds`` of the last connection dropping; an
    active one without a live session (HTTP turns) while its last turn, or its start, is within that window.
    A call whose socket dropped without ``end`` therefore stops counting after the window, not when the sweeper
    gets to it. Without ``holding`` (or when the live state cannot be read) every active one counts.
    """
    now = utcnow()
    rows = session.execute(
        select(Conversation.id, Conversation.status).where(
            Conversation.account_id == account_id,
            (Conversation.status == "active")
            | (
                (Conversation.status == "created")
                & (Conversation.created_at >= now - timedelta(seconds=settings.ws_token_ttl_seconds))
            ),
        )
    ).all()
    active = [cid for cid, status in rows if status == "active"]
    count = len(rows) - len(active)
    if not active:
        return count
    states: dict[str, bool] = {}
    if holding is None:
        states = dict.fromkeys(active, True)
    else:
        try:
            states = holding(active)
        except Exception:  # the live state is unreachable: count conservatively
            log.exception("could not read the live sessions of account %s", account_id)
            states = dict.fromkeys(active, True)
    count += sum(states.values())
    without_session = [cid for cid in active if cid not in states]
    if without_session:
        since = now - timedelta(seconds=settings.ws_resume_window_seconds)
        last_turn = (
            select(func.max(ConversationTurn.ended_at))
            .where(ConversationTurn.conversation_id == Conversation.id)
            .scalar_subquery()
        )
        count += int(
            session.scalar(
                select(func.count())
                .select_from(Conversation)
                .where(
                    Conversation.id.in_(without_session),
                    func.coalesce(last_turn, Conversation.started_at) >= since,
                )
            )
            or 0
        )
    return count


def billing_start_check(
    settings: Settings, session: Session, account_id: str, holding: HoldingCallers | None = None
) -> None:
    """Before a conversation starts: credits, plan minutes and concurrent conversations (402/429 when refused)."""
    from airies.billing.usage import build_usage_service

    active = live_conversation_count(settings, session, account_id, holding)
    check = build_usage_service(settings).check_usage_limits(
        account_id, starting_conversation=True, active_conversations=active, session=session
    )
    check.raise_for_status()


def usage_events(conversation: Conversation, result: TurnResult) -> list[Any]:
    """The billing UsageEvents of one turn; keys derive from the turn id, so a retried turn is counted once."""
    from airies.billing.schemas import UsageComponent, UsageEvent

    u = result.usage
    cached = int(u.get("cached_tokens", 0))
    rows = [
        (UsageComponent.STT_SECONDS, Decimal(str(u.get("stt_seconds", 0))), u.get("stt_provider"), u.get("stt_model")),
        (
            UsageComponent.LLM_INPUT_TOKENS,
            Decimal(int(u.get("prompt_tokens", 0)) - cached),
            u.get("llm_provider"),
            u.get("llm_model"),
        ),
        (UsageComponent.LLM_CACHED_TOKENS, Decimal(cached), u.get("llm_provider"), u.get("llm_model")),
        (
            UsageComponent.LLM_OUTPUT_TOKENS,
            Decimal(int(u.get("completion_tokens", 0))),
            u.get("llm_provider"),
            u.get("llm_model"),
        ),
        (
            UsageComponent.TTS_CHARACTERS,
            Decimal(int(u.get("tts_characters", 0))),
            u.get("tts_provider"),
            u.get("tts_model"),
        ),
    ]
    return [
        UsageEvent(
            idempotency_key=f"{result.turn_id}:{component.value}",
            account_id=conversation.account_id,
            component=component,
            quantity=quantity,
            provider=provider,
            model=model,
            agent_id=conversation.agent_id,
            conversation_id=conversation.id,
            turn_id=result.turn_id,
        )
        for component, quantity, provider, model in rows
        if quantity > 0
    ]


def minutes_event(conversation: Conversation) -> Any:
    from airies.billing.schemas import UsageComponent, UsageEvent

    minutes = (Decimal(str(conversation.duration_seconds)) / 60).quantize(Decimal("0.000001"))
    return UsageEvent(
        idempotency_key=f"{conversation.id}:platform_minutes:final",
        account_id=conversation.account_id,
        component=UsageComponent.PLATFORM_MINUTES,
        quantity=minutes,
        agent_id=conversation.agent_id,
        conversation_id=conversation.id,
    )


PHONE_USAGE_KEY = "telephony"  # in a conversation's usage: its carrier minutes and their cost


def phone_minutes(seconds: int) -> int:
    """The minutes a carrier bills for a call of ``seconds``: whole minutes, rounded up."""
    return -(-seconds // 60)


def phone_minutes_events(conversation: Conversation, carrier: str, products: list[str], minutes: int) -> list[Any]:
    """A phone call's carrier minutes as usage events, one per product (the relay, the voice leg); keyed by the
    conversation and product, so a repeated status callback books nothing twice."""
    from airies.billing.schemas import UsageComponent, UsageEvent

    return [
        UsageEvent(
            idempotency_key=f"{conversation.id}:{UsageComponent.TELEPHONY_MINUTES.value}:{product}",
            account_id=conversation.account_id,
            component=UsageComponent.TELEPHONY_MINUTES,
            quantity=Decimal(minutes),
            provider=carrier,
            model=product,
            agent_id=conversation.agent_id,
            conversation_id=conversation.id,
        )
        for product in products
    ]


ANALYSIS_FINAL = frozenset({"completed", "failed", "skipped"})  # analysis_status values no later run replaces


# --- the service --------------------------------------------------------------------------------------------------
class ConversationService:
    def __init__(
        self,
        session: Session,
        settings: Settings,
        *,
        usage_sink: UsageSink | None = None,
        credit_gate: CreditGate | None = None,
        tokens: ConversationTokens | None = None,
        recorder: Any = None,
        start_check: Callable[[Session, str], None] | None = None,
        database: Any = None,
        publisher: EventPublisher | None = None,
        turn_metrics: TurnMetrics | None = None,
        clock: Callable[[], float] = time.time,
        post_call: PostCallStarter | None = None,
    ) -> None:
        """``post_call``: what starts the post-call analysis when a conversation ends (default: from settings, see
        ``airies.conversations.post_call``)."""
        self.session = session
        self.turn_metrics = turn_metrics
        presign = recorder.presign if recorder is not None else None
        post_call = post_call if post_call is not None else post_call_starter(settings)
        self.events = ConversationEvents(publisher, presign=presign, post_call=post_call)
        self.start_check = start_check
        self.database = database
        self.settings = settings
        self.usage_sink = usage_sink
        self.credit_gate = credit_gate
        self._tokens = tokens
        self.recorder = recorder
        self.clock = clock

    @property
    def tokens(self) -> ConversationTokens:
        """Built on first use: ending or reading a conversation never fetches the token secret."""
        if self._tokens is None:
            secret = token_secret(self.settings)
            self._tokens = ConversationTokens(secret, ttl_seconds=self.settings.ws_token_ttl_seconds)
        return self._tokens

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def start_conversation(self, account_id: str, body: ConversationCreate) -> tuple[Conversation, str, datetime]:
        # 404 for foreign or unknown agents, 400 for one never deployed: one read of the agent, one of the version.
        version = published_version(self.session, account_id, body.agent_id, body.agent_version)
        config = AgentConfig.model_validate(version.config)
        if self.start_check is not None:
            self.start_check(self.session, account_id)
        conversation = Conversation(
            id=new_id("conv"),
            account_id=account_id,
            agent_id=body.agent_id,
            agent_version=version.version,
            status="created",
            channel=body.channel,
            caller=body.caller.model_dump(exclude_none=True),
            metadata_=body.metadata,
            started_at=utcnow(),
            duration_seconds=0.0,
            turn_count=0,
            interruption_count=0,
            usage={},
            cost_usd=Decimal(0),
            recording_enabled=config.recording_enabled,
        )
        self.session.add(conversation)
        self.session.flush()
        self.events.started(self.session, conversation)
        token, expires = self.tokens.issue(conversation.id, account_id)
        return conversation, token, expires

    def ws_url(self, conversation_id: str, token: str) -> str:
        return wp.connection_url(self.settings.public_ws_url, conversation_id, token)

    def get(self, account_id: str, conversation_id: str, *, for_update: bool = False) -> Conversation:
        query = select(Conversation).where(Conversation.id == conversation_id, Conversation.account_id == account_id)
        if for_update and self.session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update()
        conversation = self.session.scalar(query)
        if conversation is None:
            raise NotFoundError("conversation", conversation_id)
        return conversation

    def find(self, account_id: str, conversation_id: str, *, for_update: bool = False) -> Conversation | None:
        try:
            return self.get(account_id, conversation_id, for_update=for_update)
        except NotFoundError:
            return None

    def store_analysis(
        self, account_id: str, conversation_id: str, status: str, analysis: dict[str, Any]
    ) -> Conversation | None:
        """Keep a post-call analysis result unless one is stored already (the first result wins: a retried
        analysis never replaces what was billed and sent). None when the conversation is gone."""
        conversation = self.find(account_id, conversation_id, for_update=True)
        if conversation is None:
            return None
        if conversation.analysis_status in ANALYSIS_FINAL:
            return conversation
        conversation.analysis, conversation.analysis_status = analysis, status
        self.session.flush()
        return conversation

    def end_reason(self, account_id: str, conversation_id: str) -> str:
        """Why a conversation ended, as stored (``api_request`` when it says nothing, or is gone)."""
        reason = self.session.scalar(
            select(Conversation.end_reason).where(
                Conversation.id == conversation_id, Conversation.account_id == account_id
            )
        )
        return reason or "api_request"

    def closed_among(self, conversation_ids: builtins.list[str]) -> dict[str, str]:
        """Of these conversations (any account: the sweeper's view), those ended (-> their end reason) or gone
        (-> ``deleted``)."""
        found: dict[str, tuple[str, str | None]] = {}
        for start in range(0, len(conversation_ids), 500):
            batch = conversation_ids[start : start + 500]
            for cid, status, reason in self.session.execute(
                select(Conversation.id, Conversation.status, Conversation.end_reason).where(Conversation.id.in_(batch))
            ):
                found[cid] = (status, reason)
        closed: dict[str, str] = {}
        for cid in conversation_ids:
            if cid not in found:
                closed[cid] = "deleted"
            elif found[cid][0] == "ended":
                closed[cid] = found[cid][1] or "api_request"
        return closed

    def abandoned(self, *, limit: int = 500) -> builtins.list[tuple[str, str, str]]:
        """Open conversations to close (the sweeper's view, any account), as (account_id, id, reason): WebSocket
        ones never connected within the token's life (``never_connected``), and active ones older than the live
        state's life (``stale``)."""
        now = utcnow().timestamp()
        cutoff_created = now - self.settings.ws_token_ttl_seconds - 60
        cutoff_active = now - self.settings.ws_state_ttl_seconds
        rows = self.session.execute(
            select(
                Conversation.account_id,
                Conversation.id,
                Conversation.status,
                Conversation.channel,
                Conversation.started_at,
            )
            .where(Conversation.status.in_(("created", "active")))
            .limit(limit)
        ).all()
        found: builtins.list[tuple[str, str, str]] = []
        for account_id, conversation_id, status, channel, started_at in rows:
            started = started_at.timestamp()
            if status == "created" and started < cutoff_created and channel == "websocket":
                found.append((account_id, conversation_id, "never_connected"))
            elif status == "active" and started < cutoff_active:
                found.append((account_id, conversation_id, "stale"))
        return found

    def config_for(self, conversation: Conversation) -> AgentConfig:
        agent_id = conversation.agent_id
        if agent_id is None:
            raise ConflictError("the agent of this conversation was deleted", code="agent_deleted")
        version = published_version(self.session, conversation.account_id, agent_id, conversation.agent_version)
        return AgentConfig.model_validate(version.config)

    def list(
        self,
        account_id: str,
        *,
        limit: int = 20,
        cursor: str | None = None,
        agent_id: str | None = None,
        status: str | None = None,
    ) -> tuple[builtins.list[Conversation], str | None]:
        query = select(Conversation).where(Conversation.account_id == account_id)
        if cursor:
            query = query.where(Conversation.id < cursor)
        if agent_id:
            query = query.where(Conversation.agent_id == agent_id)
        if status:
            query = query.where(Conversation.status == status)
        rows = list(self.session.scalars(query.order_by(Conversation.id.desc()).limit(limit + 1)))
        next_cursor = rows[limit - 1].id if len(rows) > limit else None
        return rows[:limit], next_cursor

    def update(
        self,
        account_id: str,
        conversation_id: str,
        body: ConversationUpdate,
        *,
        active_until: datetime | None = None,
    ) -> Conversation:
        """``active_until``: the live connection's last activity when it is known (minutes are billed to it)."""
        conversation = self.get(account_id, conversation_id)
        if body.metadata is not None:
            merged = {**(conversation.metadata_ or {}), **body.metadata}
            try:
                check_metadata(merged)  # the same limit as on create, on what would be stored
            except ValueError as exc:
                raise ValidationFailedError(
                    str(exc), details=[{"field": "metadata", "code": "metadata_too_large", "message": str(exc)}]
                ) from exc
            conversation.metadata_ = merged
        if body.caller is not None:
            conversation.caller = body.caller.model_dump(exclude_none=True)
        if body.status == "ended":
            self.end_conversation(account_id, conversation_id, "api_request", active_until=active_until)
        return conversation

    def delete(self, account_id: str, conversation_id: str, *, active_until: datetime | None = None) -> Conversation:
        """Ends (bills) then deletes the conversation; returns the deleted row (its final totals)."""
        conversation = self.get(account_id, conversation_id)
        if conversation.status != "ended":
            self.end_conversation(account_id, conversation_id, "deleted", active_until=active_until)
        self.session.delete(conversation)
        return conversation

    def mark_active(self, conversation: Conversation) -> None:
        if conversation.status == "created":
            conversation.status = "active"
            conversation.started_at = utcnow()

    def end_conversation(
        self, account_id: str, conversation_id: str, reason: str, *, active_until: datetime | None = None
    ) -> Conversation | None:
        """End a conversation and bill its platform minutes once (the event's key is per conversation).

        Idempotent: ending an ended conversation changes nothing and bills nothing twice. A conversation that is
        gone (deleted over REST while a live session still references it) is a no-op returning None, so a
        sweep that ends many sessions never stops at one of them.

        Billed time runs from ``started_at`` (the first connection or HTTP turn) to the last activity: the last
        stored turn's end, or ``active_until`` (the live connection's last activity, when the caller knows it),
        whichever is later, never past now. A conversation that never connected or never had any activity bills
        nothing, however late it is closed (the sweeper notices stale rows minutes or hours afterwards).
        """
        query = select(Conversation).where(Conversation.id == conversation_id, Conversation.account_id == account_id)
        if self.session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update()
        conversation = self.session.scalar(query)
        if conversation is None:
            return None
        if conversation.status == "ended":
            return conversation
        now = utcnow()
        conversation.duration_seconds = self.billable_seconds(conversation, now, active_until)
        conversation.status = "ended"
        conversation.ended_at = now
        conversation.end_reason = reason[:40]
        self.session.flush()
        self.events.ended(self.session, conversation)
        if self.usage_sink is not None and conversation.duration_seconds > 0:
            try:
                self.usage_sink([minutes_event(conversation)])
            except Exception:  # billing is retried by its queue; a failed publish must not keep a call open
                log.exception("usage publish failed for %s", conversation.id)
        return conversation

    def billable_seconds(
        self, conversation: Conversation, now: datetime, active_until: datetime | None = None
    ) -> float:
        """Seconds from the start of the call to its last activity (0 when it never connected nor had a turn)."""
        if conversation.status == "created":
            return 0.0  # never connected, never had a turn (both make it active)
        last_turn = self.session.scalar(
            select(func.max(ConversationTurn.ended_at)).where(ConversationTurn.conversation_id == conversation.id)
        )
        marks = [mark for mark in (last_turn, active_until) if mark is not None]
        if not marks:
            return 0.0
        until = min(max(marks), now)
        return round(max((until - conversation.started_at).total_seconds(), 0.0), 3)

    # -- turns ----------------------------------------------------------------------------------------------------
    def history_messages(self, conversation_id: str) -> builtins.list[dict[str, str]]:
        """LLM history from stored turns: the agent's side is what the caller actually received."""
        turns = list(
            self.session.scalars(
                select(ConversationTurn)
                .where(ConversationTurn.conversation_id == conversation_id)
                .order_by(ConversationTurn.seq.desc())
                .limit(HISTORY_TURNS)
            )
        )
        messages: builtins.list[dict[str, str]] = []
        for turn in reversed(turns):
            if turn.user_text:
                messages.append({"role": "user", "content": turn.user_text})
            if turn.agent_text:
                messages.append({"role": "assistant", "content": turn.agent_text})
        return messages

    def next_seq(self, conversation_id: str) -> int:
        current = self.session.scalar(
            select(func.max(ConversationTurn.seq)).where(ConversationTurn.conversation_id == conversation_id)
        )
        return int(current or 0) + 1

    def record_turn(self, conversation: Conversation, result: TurnResult) -> ConversationTurn:
        """Store one turn and roll it into the conversation totals; idempotent on the turn id."""
        existing = self.session.get(ConversationTurn, result.turn_id)
        if existing is not None:
            return existing
        now = utcnow()
        started_at = now - timedelta(milliseconds=float(result.latency.get("total_ms") or 0))
        self._check_open(conversation, result, started_at)
        seq = result.seq
        taken = self.session.scalar(
            select(ConversationTurn.id).where(
                ConversationTurn.conversation_id == conversation.id, ConversationTurn.seq == seq
            )
        )
        if taken is not None:
            seq = self.next_seq(conversation.id)
        recording: dict[str, Any] = {}
        if self.recorder is not None and conversation.recording_enabled:
            try:
                recording = self.recorder.store_turn(conversation, result)
            except Exception:  # the recording is optional: losing it must not lose the turn (and its bill)
                log.exception("recording failed for turn %s", result.turn_id)
                recording = {"error": "recording_failed"}
        turn = ConversationTurn(
            id=result.turn_id,
            conversation_id=conversation.id,
            account_id=conversation.account_id,
            seq=seq,
            input_mode=result.mode,
            user_text=result.user_text,
            agent_text=result.agent_text,
            agent_text_generated=result.agent_text_generated,
            status=result.status,
            interrupted=result.interrupted,
            latency=result.latency,
            usage={k: v for k, v in result.usage.items() if not isinstance(v, bytes)},
            cost=result.cost,
            cost_usd=result.cost_usd,
            recording=recording,
            tool_calls=result.tool_calls or None,
            started_at=started_at,
            ended_at=now,
        )
        self.session.add(turn)
        conversation.turn_count += 1
        conversation.interruption_count += int(result.interrupted)
        conversation.cost_usd = (conversation.cost_usd or Decimal(0)) + result.cost_usd
        totals = dict(conversation.usage or {})
        for key in ("stt_seconds", "prompt_tokens", "completion_tokens", "cached_tokens", "tts_characters"):
            value = result.usage.get(key) or 0
            totals[key] = (
                round(totals.get(key, 0) + value, 3) if isinstance(value, float) else totals.get(key, 0) + value
            )
        conversation.usage = totals
        self.session.flush()
        self._publish_turn_usage(conversation, result)
        self.events.turn_stored(self.session, conversation, turn)
        return turn

    def cut_turn(self, account_id: str, conversation_id: str, turn_id: str, heard: str) -> ConversationTurn | None:
        """A barge-in that arrived after the turn was stored: keep only ``heard`` as the agent's text (what the
        history and the next LLM call see) and count the interruption once. None when the turn is not stored.
        A turn already cut keeps the shorter text: what was played is never more than what was posted."""
        query = select(ConversationTurn).where(
            ConversationTurn.id == turn_id,
            ConversationTurn.conversation_id == conversation_id,
            ConversationTurn.account_id == account_id,
        )
        if self.session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update()
        turn = self.session.scalar(query)
        if turn is None:
            return None
        if turn.interrupted:
            if len(heard) < len(turn.agent_text or ""):
                turn.agent_text = heard
                self.session.flush()
            return turn
        conversation = self.get(account_id, conversation_id, for_update=True)
        turn.agent_text = heard
        turn.interrupted = True
        turn.status = "interrupted"
        conversation.interruption_count += 1
        self.session.flush()
        return turn

    def _publish_turn_usage(self, conversation: Conversation, result: TurnResult) -> None:
        if self.usage_sink is None:
            return
        try:
            events = usage_events(conversation, result)
            if events:
                self.usage_sink(events)
        except Exception:
            log.exception("usage publish failed for turn %s", result.turn_id)

    def _check_open(self, conversation: Conversation, result: TurnResult, started_at: datetime) -> None:
        """Refuse a turn of a deleted conversation (404) or one that started after the conversation ended (409).

        Reads the stored row, not the caller's copy: the conversation may have been ended or deleted over REST
        while a WebSocket turn ran. A turn already in flight when the call ended is still stored. A refused turn
        is not stored, but the provider work it already did is billed (its usage keys are per turn, so a retry
        bills nothing twice).
        """
        stored = self.session.execute(
            select(Conversation.status, Conversation.ended_at).where(
                Conversation.id == conversation.id, Conversation.account_id == conversation.account_id
            )
        ).first()
        if stored is None:
            self._publish_turn_usage(conversation, result)
            raise NotFoundError("conversation", conversation.id)
        status, ended_at = stored
        if status == "ended" and (ended_at is None or started_at >= ended_at):
            self._publish_turn_usage(conversation, result)
            raise ConflictError("this conversation has ended", code="conversation_ended")

    def check_credit(self, account_id: str) -> tuple[bool, str | None, str | None]:
        if self.credit_gate is None:
            return True, None, None
        return self.credit_gate(account_id)

    # -- reads ----------------------------------------------------------------------------------------------------
    def get_conversation_history(self, account_id: str, conversation_id: str) -> builtins.list[ConversationTurn]:
        self.get(account_id, conversation_id)
        return list(
            self.session.scalars(
                select(ConversationTurn)
                .where(ConversationTurn.conversation_id == conversation_id, ConversationTurn.account_id == account_id)
                .order_by(ConversationTurn.seq)
            )
        )

    def transcript_text(self, account_id: str, conversation_id: str) -> str:
        conversation = self.get(account_id, conversation_id)
        lines = [f"# Conversation {conversation.id} (agent {conversation.agent_id} v{conversation.agent_version})"]
        for turn in self.get_conversation_history(account_id, conversation_id):
            if turn.user_text:
                lines.append(f"Caller: {turn.user_text}")
            if turn.agent_text:
                suffix = " [interrupted]" if turn.interrupted else ""
                lines.append(f"Agent: {turn.agent_text}{suffix}")
        if conversation.end_reason:
            lines.append(f"[ended: {conversation.end_reason}]")
        return "\n".join(lines) + "\n"

    def book_phone_minutes(
        self, conversation: Conversation, *, carrier: str, products: builtins.list[str], seconds: int
    ) -> Decimal | None:
        """Once per phone call, when the carrier reports its duration: the carrier's per-minute prices (each
        product's, from the pricing table) for its billed minutes become the conversation's ``telephony`` cost
        component, and usage events. Returns the cost booked (None: already booked, or nothing to book)."""
        from airies.billing.pricing import get_pricing
        from airies.billing.schemas import UsageComponent

        usage = dict(conversation.usage or {})
        if PHONE_USAGE_KEY in usage or seconds <= 0:
            return None
        minutes = phone_minutes(seconds)
        pricing = get_pricing()
        cost = Decimal(0)
        for product in products:
            unit = pricing.provider_unit_cost(UsageComponent.TELEPHONY_MINUTES.value, carrier, product)
            cost += (unit or Decimal(0)) * minutes
        cost = cost.quantize(Decimal("0.000000001"))
        usage[PHONE_USAGE_KEY] = {"carrier": carrier, "minutes": minutes, "cost_usd": format_usd(cost)}
        conversation.usage = usage
        conversation.cost_usd = (conversation.cost_usd or Decimal(0)) + cost
        self.session.flush()
        if self.usage_sink is not None:
            try:
                self.usage_sink(phone_minutes_events(conversation, carrier, products, minutes))
            except Exception:  # billing is retried by its queue; the callback must still be answered
                log.exception("usage publish failed for the phone minutes of %s", conversation.id)
        return cost

    def calculate_conversation_cost(self, account_id: str, conversation_id: str) -> dict[str, Any]:
        """Exact provider cost of a conversation, by component: speech, LLM and voice from its stored turns, and
        the phone carrier's minutes (``telephony``) once a phone call has been booked."""
        conversation = self.get(account_id, conversation_id)
        turns = self.get_conversation_history(account_id, conversation_id)
        phone = (conversation.usage or {}).get(PHONE_USAGE_KEY) or {}
        parts = {"stt": Decimal(0), "llm": Decimal(0), "tts": Decimal(0)}
        usage = {
            "stt_seconds": 0.0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cached_tokens": 0,
            "tts_characters": 0,
        }
        for turn in turns:
            for key in parts:
                parts[key] += Decimal(str((turn.cost or {}).get(key, "0")))
            for key in usage:
                usage[key] += (turn.usage or {}).get(key, 0) or 0
        parts["telephony"] = Decimal(str(phone.get("cost_usd", "0")))
        total = sum(parts.values(), Decimal(0))
        return {
            "conversation_id": conversation_id,
            "currency": "USD",
            "components": {k: format_usd(v) for k, v in parts.items()},
            "total": format_usd(total),
            "usage": {
                **usage,
                "stt_seconds": round(usage["stt_seconds"], 3),
                "telephony_minutes": phone.get("minutes", 0),
            },
            "turns": len(turns),
        }

    def get_conversation_analytics(
        self, account_id: str, period: str = "7d", agent_id: str | None = None
    ) -> dict[str, Any]:
        return conversation_analytics(self.session, account_id, period, agent_id=agent_id)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index], 2)


def conversation_analytics(
    session: Session, account_id: str, period: str = "7d", *, agent_id: str | None = None
) -> dict[str, Any]:
    """Real numbers from the conversation tables: volume, duration, end reasons, latency percentiles, cost."""
    if period not in PERIODS:
        raise BadRequestError(f"period must be one of {', '.join(PERIODS)}", code="invalid_period")
    since = utcnow() - PERIODS[period]
    query = select(Conversation).where(Conversation.account_id == account_id, Conversation.started_at >= since)
    if agent_id:
        query = query.where(Conversation.agent_id == agent_id)
    conversations = list(session.scalars(query))
    ids = [c.id for c in conversations]
    turns: list[ConversationTurn] = []
    for start in range(0, len(ids), 500):
        turns += list(
            session.scalars(
                select(ConversationTurn).where(
                    ConversationTurn.account_id == account_id,
                    ConversationTurn.conversation_id.in_(ids[start : start + 500]),
                )
            )
        )
    ended = [c for c in conversations if c.status == "ended"]
    durations = [c.duration_seconds for c in ended]
    reasons: dict[str, int] = {}
    for c in ended:
        reasons[c.end_reason or "unknown"] = reasons.get(c.end_reason or "unknown", 0) + 1
    latency: dict[str, dict[str, float | None]] = {}
    for key in (
        "endpointing_ms",
        "stt_ms",
        "retrieval_ms",
        "llm_first_token_ms",
        "tts_first_byte_ms",
        "first_audio_ms",
        "total_ms",
    ):
        values = [float(t.latency[key]) for t in turns if isinstance((t.latency or {}).get(key), (int, float))]
        latency[key] = {
            "p50": _pct(values, 0.5),
            "p90": _pct(values, 0.9),
            "p95": _pct(values, 0.95),
            "p99": _pct(values, 0.99),
            "mean": round(statistics.fmean(values), 2) if values else None,
            "count": len(values),
        }
    cost = sum((c.cost_usd or Decimal(0) for c in conversations), Decimal(0))
    # Per minute over the same conversations on both sides: ended ones (live ones have no final duration yet).
    ended_cost = sum((c.cost_usd or Decimal(0) for c in ended), Decimal(0))
    minutes = Decimal(str(sum(durations))) / 60 if durations else Decimal(0)
    return {
        "period": period,
        "since": since.isoformat(),
        "agent_id": agent_id,
        "conversations": {
            "total": len(conversations),
            "active": sum(1 for c in conversations if c.status == "active"),
            "ended": len(ended),
            "end_reasons": reasons,
        },
        "duration_seconds": {
            "total": round(sum(durations), 3),
            "mean": round(statistics.fmean(durations), 3) if durations else None,
            "p95": _pct(durations, 0.95),
        },
        "turns": {
            "total": len(turns),
            "interrupted": sum(1 for t in turns if t.interrupted),
            "failed": sum(1 for t in turns if t.status == "failed"),
            "per_conversation": round(len(turns) / len(conversations), 3) if conversations else None,
        },
        "latency_ms": latency,
        "cost_usd": {
            "total": format_usd(cost),
            "per_conversation": format_usd(cost / len(conversations)) if conversations else None,
            "per_minute": format_usd(ended_cost / minutes) if minutes > 0 else None,
        },
    }


def get_agent_analytics(session: Session, account_id: str, agent_id: str, period: str = "7d") -> dict[str, Any]:
    """Analytics of one agent (the agents router calls this); the caller has checked the agent belongs to the account."""
    agent = session.scalar(select(Agent).where(Agent.id == agent_id, Agent.account_id == account_id))
    if agent is None:
        raise NotFoundError("agent", agent_id)
    return conversation_analytics(session, account_id, period, agent_id=agent_id)


class S3Recorder:
    """Optional recording of both sides, one WAV per side per turn (the agent side is only what was sent)."""

    def __init__(self, client: Any, bucket: str, prefix: str = "recordings") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def store_turn(self, conversation: Conversation, result: TurnResult) -> dict[str, Any]:
        from airies.voice.audio.codecs import write_wav

        keys: dict[str, Any] = {}
        base = f"{self.prefix}/{conversation.account_id}/{conversation.id}/{result.seq:04d}-{result.turn_id}"
        for side, pcm in (("caller", result.user_pcm), ("agent", result.agent_pcm)):
            if pcm:
                key = f"{base}-{side}.wav"
                self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=write_wav(pcm, wp.SAMPLE_RATE), ContentType="audio/wav"
                )
                keys[side] = {"bucket": self.bucket, "key": key, "seconds": round(len(pcm) / wp.BYTES_PER_MS / 1000, 3)}
        return keys

    def presign(self, stored: dict[str, Any], expires_in: int) -> str:
        """A presigned GET of one stored side (``store_turn``'s record)."""
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": stored["bucket"], "Key": stored["key"], "ResponseContentType": "audio/wav"},
            ExpiresIn=expires_in,
        )
        return url


def build_recorder(settings: Settings) -> S3Recorder:
    import boto3

    client = boto3.client("s3", region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url)
    return S3Recorder(client, settings.storage_bucket, settings.conversation_recordings_prefix)


class LazyRecorder:
    """``build_recorder`` on first use: requests that record nothing never build an S3 client."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory
        self._recorder: Any = None

    def store_turn(self, conversation: Conversation, result: TurnResult) -> dict[str, Any]:
        if self._recorder is None:
            self._recorder = self.factory()
        recording: dict[str, Any] = self._recorder.store_turn(conversation, result)
        return recording

    def presign(self, stored: dict[str, Any], expires_in: int) -> str:
        if self._recorder is None:
            self._recorder = self.factory()
        url: str = self._recorder.presign(stored, expires_in)
        return url


def default_recorder(settings: Settings) -> LazyRecorder:
    """The recorder of the REST turns: the same S3 recorder (bucket and prefix) as the WebSocket runtime's."""
    return LazyRecorder(lambda: build_recorder(settings))
