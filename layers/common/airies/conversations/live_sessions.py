"""The live-sessions facade: what REST routes and the sweeper ask of live calls, without the WebSocket edge.

End a call's live session (its conversation was ended or deleted over REST), interrupt the turn being spoken, tell
whether callers still hold their calls and when one was last active, and sweep (timers, abandoned calls, stale
rows). :class:`~airies.conversations.live.WebSocketService` is this plus the socket edge.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session

from airies.conversations.barge_in import BargeIn
from airies.conversations.engines import build_engines
from airies.conversations.events import EventPublisher
from airies.conversations.lifecycle import Lifecycle
from airies.conversations.live_runtime import EngineFactory, LiveRuntime, Poster, Recorder
from airies.conversations.models import Conversation
from airies.conversations.orchestrator import TurnOrchestrator
from airies.conversations.service import ConversationTokens, CreditGate, UsageSink
from airies.conversations.sessions import SessionStore
from airies.conversations.sweeping import Sweeper
from airies.conversations.turn_metrics import TurnMetrics
from airies.core.config import Settings
from airies.core.database import Database


class LiveSessions:
    def __init__(
        self,
        settings: Settings,
        database: Database,
        store: SessionStore,
        *,
        poster_factory: Callable[[str], Poster] | None = None,
        engines: EngineFactory | None = None,
        usage_sink: Callable[[Session], UsageSink | None] | None = None,
        credit_gate: Callable[[Session], CreditGate | None] | None = None,
        recorder: Recorder | None = None,
        tokens: ConversationTokens | None = None,
        publisher: EventPublisher | None = None,
        turn_metrics: TurnMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Nothing is built or fetched here (no client, no secret): each dependency on first use."""
        self.runtime = LiveRuntime(
            settings,
            database,
            store,
            poster_factory=poster_factory,
            engines=engines
            or (lambda session, account_id, config: build_engines(settings, session, account_id, config, database)),
            usage_sink=usage_sink,
            credit_gate=credit_gate,
            recorder=recorder,
            tokens=tokens,
            publisher=publisher,
            turn_metrics=turn_metrics,
            clock=clock,
        )
        self.lifecycle = Lifecycle(self.runtime)
        self.barge_in = BargeIn(self.runtime, self.lifecycle)
        self.orchestrator = TurnOrchestrator(self.runtime, self.lifecycle, self.barge_in)
        self.sweeper = Sweeper(self.runtime, self.lifecycle, self.orchestrator)
        self._wire()

    def _wire(self) -> None:
        """Parts a subclass builds on the ones above (the WebSocket service: endpointing and the socket edge)."""

    def close_live_session(self, conversation_id: str, reason: str, conversation: Conversation | None = None) -> bool:
        """End the live session of a conversation ended or deleted outside the socket: every connection gets
        ``ended`` (totals from ``conversation``, the row the caller just ended) and is closed. The caller ends the
        row itself. False when there was no live session to end."""
        return self.lifecycle.close(conversation_id, reason, conversation)

    def interrupt(self, account_id: str, conversation_id: str, played_ms: int | None) -> str | None:
        """Barge-in from outside the socket: mark the account's live turn cancelled (a foreign or unknown
        conversation: 404). Returns the cancelled turn's id (None: nothing was being spoken)."""
        with self.runtime.database.session() as db:
            self.runtime.conversations(db).get(account_id, conversation_id)
        return self.barge_in.interrupt(conversation_id, played_ms)

    def holding_callers(self, conversation_ids: list[str]) -> dict[str, bool]:
        """Of these conversations, those with a live session -> whether a caller still holds it."""
        return self.lifecycle.holding_callers(conversation_ids)

    def live_activity(self, conversation_id: str) -> datetime | None:
        """The live session's last activity (None without one): a REST end bills the minutes to it."""
        return self.lifecycle.live_activity(conversation_id)

    def sweep(self) -> dict[str, int]:
        """Scheduled: timers, abandoned and closed-elsewhere calls, stale rows (``sweeping.Sweeper.sweep``)."""
        return self.sweeper.sweep()
