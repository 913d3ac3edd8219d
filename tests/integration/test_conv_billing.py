"""Conversation billing and lifecycle in the service, on both databases: platform minutes billed up to the last
activity (never for a call that never connected), turns refused once a conversation ended or was deleted, and
cost per minute over the same conversations on both sides."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import select

from airies.accounts.service import AccountService
from airies.agents.schemas import AgentCreate
from airies.agents.service import AgentService
from airies.billing.schemas import UsageComponent
from airies.conversations.http_turns import HttpTurns
from airies.conversations.live import WebSocketService
from airies.conversations.models import Conversation, ConversationTurn
from airies.conversations.schemas import ConversationCreate
from airies.conversations.service import ConversationTokens, conversation_analytics
from airies.conversations.sessions import SessionStore
from airies.conversations.turns import TurnResult
from airies.core.errors import ConflictError, NotFoundError
from airies.core.models import utcnow
from tests.doubles.conv_engines import FakeLLM, fake_engines

AGENT = {
    "name": "Billing desk",
    "system_prompt": "You answer questions.",
    "first_message": "Hello.",
    "llm": {"provider": "openai", "model": "gpt-4o-mini"},
    "voice": {"provider": "elevenlabs", "voice_id": "21m00Tcm4TlvDq8ikWAM"},
    "transcriber": {"provider": "deepgram", "model": "nova-3"},
}
TOKENS = ConversationTokens(b"k" * 32)


class Rig:
    """An account with a deployed agent, and ConversationServices whose usage events land in ``events``."""

    def __init__(self, database: Any, settings: Any) -> None:
        self.database = database
        self.settings = settings
        self.events: list[Any] = []
        with database.session() as s:
            account, _ = AccountService(s).signup(name="Co", email=f"{uuid.uuid4().hex[:8]}@ex.com")
            agents = AgentService(s)
            agent = agents.create(account.id, AgentCreate(**AGENT))
            agents.deploy(account.id, agent.id)
            self.account_id = account.id
            self.agent_id = agent.id

    def service(self, session: Any) -> HttpTurns:
        return HttpTurns(
            session,
            self.settings,
            tokens=TOKENS,
            engines=lambda config: fake_engines(llm=FakeLLM(reply="Fine.")),
            usage_sink=self.events.extend,
        )

    def start(self, channel: str = "websocket", *, started_ago: timedelta | None = None) -> str:
        with self.database.session() as s:
            conversation, _, _ = self.service(s).start_conversation(
                self.account_id, ConversationCreate(agent_id=self.agent_id, channel=channel)
            )
            if started_ago is not None:
                conversation.started_at = utcnow() - started_ago
            return conversation.id

    def http_turn(self, cid: str, text: str = "hello") -> str:
        import asyncio

        with self.database.session() as s:
            turn, _, _ = asyncio.run(self.service(s).process_message(self.account_id, cid, text))
            return turn.id

    def place(self, cid: str, *, started_ago: timedelta, turn_ends_after: timedelta | None) -> Conversation:
        """Move the conversation's start (and its last turn's end) into the past, to exact instants."""
        with self.database.session() as s:
            conversation = s.get(Conversation, cid)
            assert conversation is not None
            conversation.started_at = utcnow() - started_ago
            if turn_ends_after is not None:
                turns = list(s.scalars(select(ConversationTurn).where(ConversationTurn.conversation_id == cid)))
                assert turns
                for turn in turns:
                    turn.started_at = conversation.started_at
                    turn.ended_at = conversation.started_at + turn_ends_after
            return conversation

    def minutes(self) -> list[Any]:
        return [e for e in self.events if e.component == UsageComponent.PLATFORM_MINUTES]

    def row(self, cid: str) -> Conversation:
        with self.database.session() as s:
            conversation = s.get(Conversation, cid)
            assert conversation is not None
            s.expunge(conversation)
            return conversation


def result(cid: str, *, total_ms: float = 0.0) -> TurnResult:
    return TurnResult(
        turn_id=f"turn_{uuid.uuid4().hex[:12]}",
        seq=99,
        mode="text",
        user_text="still there?",
        agent_text_generated="Yes.",
        agent_text="Yes.",
        status="completed",
        interrupted=False,
        latency={"total_ms": total_ms},
        usage={"prompt_tokens": 12, "completion_tokens": 3, "llm_provider": "openai", "llm_model": "gpt-4o-mini"},
        cost={"llm": "0.000010"},
        cost_usd=Decimal("0.000010"),
    )


@pytest.fixture
def rig(database, settings) -> Rig:  # type: ignore[no-untyped-def]
    return Rig(database, settings)


def test_minutes_run_to_the_last_turn_not_to_when_the_end_is_noticed(rig: Rig) -> None:
    cid = rig.start("http")
    rig.http_turn(cid)
    # The call started an hour ago; its last turn ended 95.5 s in; it is closed now.
    rig.place(cid, started_ago=timedelta(hours=1), turn_ends_after=timedelta(seconds=95.5))
    with rig.database.session() as s:
        ended = rig.service(s).end_conversation(rig.account_id, cid, "api_request")
        assert ended is not None and ended.duration_seconds == 95.5
    [event] = rig.minutes()
    assert event.quantity == Decimal("1.591667") and event.idempotency_key == f"{cid}:platform_minutes:final"
    assert event.conversation_id == cid and event.account_id == rig.account_id
    with rig.database.session() as s:  # ending again changes and bills nothing
        again = rig.service(s).end_conversation(rig.account_id, cid, "stale")
        assert again is not None and again.end_reason == "api_request" and again.duration_seconds == 95.5
    assert len(rig.minutes()) == 1


def test_connection_activity_extends_the_bill_but_never_past_now(rig: Rig) -> None:
    later = rig.start()
    rig.http_turn(later)
    start = rig.place(later, started_ago=timedelta(minutes=30), turn_ends_after=timedelta(seconds=60)).started_at
    with rig.database.session() as s:
        ended = rig.service(s).end_conversation(
            rig.account_id, later, "caller_disconnected", active_until=start + timedelta(seconds=200)
        )
        assert ended is not None and ended.duration_seconds == 200.0
    assert [e.quantity for e in rig.minutes()] == [Decimal("3.333333")]

    capped = rig.start()
    rig.http_turn(capped)
    start = rig.place(capped, started_ago=timedelta(seconds=120), turn_ends_after=timedelta(seconds=10)).started_at
    with rig.database.session() as s:
        ended = rig.service(s).end_conversation(
            rig.account_id, capped, "caller_disconnected", active_until=start + timedelta(days=1)
        )
        assert ended is not None and 120 <= ended.duration_seconds < 180  # now, not a day in the future


def test_a_call_without_activity_bills_nothing(rig: Rig) -> None:
    # Connected (active) but nothing happened and no activity is known: nothing to bill.
    quiet = rig.start()
    with rig.database.session() as s:
        conversation = s.get(Conversation, quiet)
        assert conversation is not None
        rig.service(s).mark_active(conversation)
        conversation.started_at = utcnow() - timedelta(minutes=20)
    with rig.database.session() as s:
        ended = rig.service(s).end_conversation(rig.account_id, quiet, "stale")
        assert ended is not None and ended.status == "ended" and ended.duration_seconds == 0.0
    assert rig.minutes() == []


def test_sweeper_bills_never_connected_nothing_and_stale_http_calls_to_their_last_turn(
    database, settings, rig: Rig
) -> None:  # type: ignore[no-untyped-def]
    never = rig.start("websocket", started_ago=timedelta(minutes=10))
    stale = rig.start("http")
    rig.http_turn(stale)
    rig.place(stale, started_ago=timedelta(hours=2, minutes=5), turn_ends_after=timedelta(seconds=90))
    with mock_aws():
        store = SessionStore(boto3.client("dynamodb", region_name="us-east-1"), f"ws-{uuid.uuid4().hex[:6]}")
        store.ensure_table()
        sweeper = WebSocketService(
            settings,
            database,
            store,
            usage_sink=lambda session: rig.events.extend,
            credit_gate=lambda session: None,
            tokens=TOKENS,
        )
        assert sweeper.sweep() == {"never_connected": 1, "stale": 1}
    assert rig.row(never).duration_seconds == 0.0 and rig.row(never).end_reason == "never_connected"
    assert rig.row(stale).duration_seconds == 90.0 and rig.row(stale).end_reason == "stale"
    assert [(e.conversation_id, e.quantity) for e in rig.minutes()] == [(stale, Decimal("1.500000"))]


def test_ending_a_missing_or_deleted_conversation_is_a_no_op(rig: Rig) -> None:
    cid = rig.start()
    with rig.database.session() as s:
        assert rig.service(s).end_conversation(rig.account_id, "conv_missing", "stale") is None
        rig.service(s).delete(rig.account_id, cid)
    with rig.database.session() as s:
        assert rig.service(s).end_conversation(rig.account_id, cid, "caller_disconnected") is None
    assert rig.minutes() == []  # deleted before it ever connected: nothing billed


def test_turns_are_refused_once_the_conversation_ended_or_was_deleted(rig: Rig) -> None:
    cid = rig.start("http")
    rig.http_turn(cid)
    with rig.database.session() as s:  # a live session's copy of the row, loaded before the call ended
        stale_copy = rig.service(s).get(rig.account_id, cid)
        s.expunge(stale_copy)
    with rig.database.session() as s:
        rig.service(s).end_conversation(rig.account_id, cid, "api_request")

    late = result(cid)
    with rig.database.session() as s, pytest.raises(ConflictError) as refused:
        rig.service(s).record_turn(s.merge(stale_copy, load=False), late)
    assert refused.value.code == "conversation_ended" and refused.value.status_code == 409
    # In flight when the call ended (started 5 s earlier): still stored.
    in_flight = result(cid, total_ms=5000)
    with rig.database.session() as s:
        rig.service(s).record_turn(s.merge(stale_copy, load=False), in_flight)
    with rig.database.session() as s:
        stored = set(s.scalars(select(ConversationTurn.id).where(ConversationTurn.conversation_id == cid)))
        assert in_flight.turn_id in stored and late.turn_id not in stored
        with pytest.raises(ConflictError):
            import asyncio

            asyncio.run(rig.service(s).process_message(rig.account_id, cid, "anyone?"))
    # The refused turn's provider work is billed once, under its own keys.
    late_keys = [e.idempotency_key for e in rig.events if e.turn_id == late.turn_id]
    assert sorted(late_keys) == [f"{late.turn_id}:llm_input_tokens", f"{late.turn_id}:llm_output_tokens"]

    with rig.database.session() as s:
        rig.service(s).delete(rig.account_id, cid)
    with rig.database.session() as s, pytest.raises(NotFoundError):
        rig.service(s).record_turn(s.merge(stale_copy, load=False), result(cid))
    with rig.database.session() as s:
        assert s.scalar(select(ConversationTurn.id).where(ConversationTurn.conversation_id == cid)) is None


def test_cost_per_minute_covers_the_same_conversations_on_both_sides(rig: Rig) -> None:
    ended, live = rig.start("http"), rig.start("http")
    with rig.database.session() as s:
        for cid, status, cost, seconds in ((ended, "ended", "0.30", 120.0), (live, "active", "1.00", 0.0)):
            conversation = s.get(Conversation, cid)
            assert conversation is not None
            conversation.status, conversation.cost_usd, conversation.duration_seconds = status, Decimal(cost), seconds
    with rig.database.session() as s:
        stats = conversation_analytics(s, rig.account_id, "24h")
    assert stats["cost_usd"]["total"] == "1.300000000" and stats["cost_usd"]["per_conversation"] == "0.650000000"
    assert stats["cost_usd"]["per_minute"] == "0.150000000"  # 0.30 over 2 minutes; the live call's 1.00 is not in it
