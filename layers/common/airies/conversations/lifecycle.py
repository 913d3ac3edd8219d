"""Ending a live call, once: the live state, the conversation row (bills the minutes), an ``ended`` frame to every
connection, then the sockets close. Also what REST asks of a live session: is a caller still holding it, and when
was its last activity."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from airies.conversations import protocol as wp
from airies.conversations.live_runtime import LiveRuntime, Poster, SocketSink
from airies.conversations.models import Conversation
from airies.conversations.sessions import ENDED, LiveSession
from airies.core.money import format_usd

log = logging.getLogger(__name__)

# How long ending a call waits for a turn in flight to be stored (it stops within one sentence; past this, e.g. an
# invocation that died, the call ends anyway and a late turn is still stored, as it started before the end).
TURN_SETTLE_S = 10.0


def ended_summary(conversation: Conversation | None) -> dict[str, Any]:
    """The ``ended`` frame's totals; zero for a conversation that is gone."""
    if conversation is None:
        return {"duration_seconds": 0.0, "turns": 0, "cost_usd": format_usd(0)}
    return {
        "duration_seconds": conversation.duration_seconds,
        "turns": conversation.turn_count,
        "cost_usd": format_usd(conversation.cost_usd or 0),
    }


class Lifecycle:
    def __init__(self, runtime: LiveRuntime) -> None:
        self.runtime = runtime
        self.store = runtime.store

    def end(
        self,
        conversation_id: str,
        reason: str,
        poster: Poster | None,
        *,
        active_until: float | None = None,
        transfer: dict[str, str] | None = None,
    ) -> bool:
        """End once: live state, the DB row (bills the minutes), an ``ended`` frame, then close the sockets.

        Minutes are billed to ``active_until`` (epoch seconds): the caller's last activity on the live session
        unless given (an explicit hang-up or end-call bills to now). A conversation deleted meanwhile, or a
        database failure, still ends the live session and closes the sockets (the summary is then zero, and the
        sweeper closes a row left open); it never raises past the live-state write. ``transfer``: where the agent
        handed the call (the ``ended`` frame carries it; a carrier's relay dials it).
        """
        session = self.store.end(conversation_id, reason)
        if session is None:
            return False
        if session.running:
            # A turn in flight stops at its next barge-in check (the session is ended) and is stored and billed:
            # the row ends after it, so the "ended" totals and whoever reads the conversation next include it.
            self.store.wait_for_turns(conversation_id, timeout_s=TURN_SETTLE_S)
        until = active_until if active_until is not None else session.last_activity
        summary = ended_summary(None)
        try:
            with self.runtime.database.session() as db:
                conversation = self.runtime.conversations(db).end_conversation(
                    session.account_id,
                    conversation_id,
                    reason,
                    active_until=datetime.fromtimestamp(until, UTC) if until else None,
                )
                summary = ended_summary(conversation)
        except Exception:
            log.exception("ending conversation %s in the database failed", conversation_id)
        if transfer is not None:
            summary = {**summary, "transfer": transfer}
        self.notify_ended(session, reason, summary, poster)
        return True

    def close(self, conversation_id: str, reason: str, conversation: Conversation | None = None) -> bool:
        """The conversation was ended or deleted outside the socket (REST): end its live session if one exists,
        send ``ended`` (summary from ``conversation``, the row the caller just ended) and close the sockets. The
        caller ends the row itself. False when there was no live session to end."""
        session = self.store.end(conversation_id, reason)
        if session is None:
            return False
        self.notify_ended(session, reason, ended_summary(conversation), None)
        return True

    def holding_callers(self, conversation_ids: list[str]) -> dict[str, bool]:
        """Of these conversations, those with a live session -> whether their caller still holds the call: a
        connection is open, or the last one dropped within the resume window. An ended live session holds
        nothing. Conversations without a live session are left out (the caller decides about them)."""
        now = self.runtime.clock()
        window = self.runtime.settings.ws_resume_window_seconds
        return {
            cid: session.state != ENDED and not session.caller_gone(now, window)
            for cid, session in self.store.get_many(conversation_ids).items()
        }

    def live_activity(self, conversation_id: str) -> datetime | None:
        """The live session's last activity, for billing a conversation ended outside the socket (None when
        there is no live session)."""
        session = self.store.get(conversation_id)
        if session is None or session.state == ENDED or not session.last_activity:
            return None
        return datetime.fromtimestamp(session.last_activity, UTC)

    def notify_ended(self, session: LiveSession, reason: str, summary: dict[str, Any], poster: Poster | None) -> None:
        try:
            poster = poster or self.runtime.poster_for(session)
        except Exception:
            log.exception("no poster for %s", session.conversation_id)
            poster = None
        data = wp.encode(wp.ended(reason, conversation_id=session.conversation_id, **summary))
        for connection_id in sorted(session.connections):
            self.runtime.connections.pop(connection_id, None)
            try:
                if poster is not None:
                    poster.post(connection_id, data)
                    poster.close(connection_id)
                self.store.drop_connection(connection_id)
            except Exception:  # one broken connection must not keep the others open
                log.exception("closing connection %s of %s failed", connection_id, session.conversation_id)

    def sink(self, conversation_id: str, turn_id: str, poster: Poster | None) -> SocketSink | None:
        """A sink to the live session's connections; None without a live session or a way to post to it."""
        session = self.store.get(conversation_id)
        if session is None:
            return None
        poster = poster or self.runtime.poster_for(session)
        if poster is None:
            return None
        return SocketSink(self.store, poster, conversation_id, turn_id, session.connections)

    def broadcast(self, conversation_id: str, message: dict[str, Any], poster: Poster | None = None) -> int:
        """Send a frame to every connection of a conversation; a 410 drops that connection only."""
        sink = self.sink(conversation_id, "-", poster)
        return sink.broadcast(message) if sink is not None else 0
