"""Timers and sweeping: max duration and the silence timeout (one reminder, then end), checked on the caller's
frames and by the scheduled sweeper, which also ends calls abandoned by their caller, ended or deleted elsewhere,
and closes conversation rows that never connected or went stale.

The sweeper reads only the live sessions that are due (``SessionStore.due_sessions``: a Query of the sparse
live-sessions index by ``sweep_at``, bounded per run) and writes each one's next deadline back.
"""

from __future__ import annotations

import logging

from airies.conversations import protocol as wp
from airies.conversations.lifecycle import Lifecycle
from airies.conversations.live_runtime import LiveRuntime, Poster
from airies.conversations.orchestrator import TurnOrchestrator, TurnRequest
from airies.conversations.sessions import ENDED, LISTENING, LiveSession
from airies.conversations.turns import TurnMode

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(self, runtime: LiveRuntime, lifecycle: Lifecycle, orchestrator: TurnOrchestrator) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.lifecycle = lifecycle
        self.orchestrator = orchestrator

    def check_timers(self, session: LiveSession, poster: Poster | None = None) -> str | None:
        """Max duration and silence timeout (one reminder, then end). Returns what it did, if anything."""
        if session.state == ENDED:
            return None
        config = self.runtime.config(session)
        now = self.runtime.clock()
        poster = poster or self.runtime.poster_for(session)
        if session.started_at and now - session.started_at >= config.max_duration_seconds:
            self.lifecycle.end(session.conversation_id, "max_duration", poster)
            return "max_duration"
        if session.state != LISTENING or not session.last_activity:
            return None
        if now - session.last_activity < config.silence_timeout_seconds:
            return None
        if not session.reminder_sent and config.silence_reminder_message:
            if self.store.mark_reminded(session.conversation_id, session.last_activity) and poster is not None:
                fresh = self.store.get(session.conversation_id)
                if fresh is not None:
                    reminder = TurnRequest(
                        TurnMode.NONE, scripted=config.silence_reminder_message, expected_utt=fresh.utt
                    )
                    self.orchestrator.run(fresh, poster, reminder)
            return "reminder"
        self.lifecycle.end(session.conversation_id, "silence_timeout", poster)
        return "silence_timeout"

    def sweep(self) -> dict[str, int]:
        """Scheduled: timers of every live session, sessions abandoned by their caller (no connection came back
        within the resume window) or whose conversation was ended or deleted elsewhere, stale DB rows. One failing
        session never stops the sweep (counted as ``errors``, logged)."""
        done: dict[str, int] = {}

        def count(action: str | None) -> None:
            if action:
                done[action] = done.get(action, 0) + 1

        now = self.runtime.clock()
        sessions = self.store.due_sessions(now, limit=self.runtime.settings.sweeper_max_sessions_per_run)
        closed = self._closed_elsewhere([s.conversation_id for s in sessions])
        for session in sessions:
            try:
                if session.conversation_id in closed:
                    self.lifecycle.end(session.conversation_id, closed[session.conversation_id], None)
                    count("closed_elsewhere")
                elif session.caller_gone(now, self.runtime.settings.ws_resume_window_seconds):
                    self.lifecycle.end(session.conversation_id, "caller_disconnected", None)
                    count("caller_disconnected")
                elif not self._has_config(session):  # its state expired: nothing to time a call by
                    self.lifecycle.end(session.conversation_id, "stale", None)
                    count("stale")
                else:
                    action = self.check_timers(session)
                    count(action)
                    if action in (None, "reminder"):
                        self.store.reschedule(session.conversation_id, self.next_deadline(session, now, action))
            except Exception:
                log.exception("sweep: session %s failed", session.conversation_id)
                count("errors")
        # Conversations never connected (token expired) or whose live state expired: close the rows.
        with self.runtime.database.session() as db:
            abandoned = self.runtime.conversations(db).abandoned()
        for account_id, conversation_id, reason in abandoned:
            try:  # one unit of work per row: a failure leaves the others to end
                with self.runtime.database.session() as db:
                    self.runtime.conversations(db).end_conversation(account_id, conversation_id, reason)
                count(reason)
            except Exception:
                log.exception("sweep: ending %s failed", conversation_id)
                count("errors")
        return done

    def _has_config(self, session: LiveSession) -> bool:
        try:
            self.runtime.config(session)
        except wp.ProtocolError:
            return False
        return True

    def next_deadline(self, session: LiveSession, now: float, action: str | None = None) -> float:
        """When the sweeper must look at this session next: its max duration, its silence timeout (from the
        reminder just sent), or the end of its resume window when no connection is left; never before the next run.
        Activity only moves a deadline later, so an early one merely costs a look."""
        config = self.runtime.config(session)
        last_activity = now if action == "reminder" else session.last_activity
        deadlines = [last_activity + config.silence_timeout_seconds]
        if session.started_at:
            deadlines.append(session.started_at + config.max_duration_seconds)
        if not session.connections:
            deadlines.append(
                (session.disconnected_at or session.last_activity) + self.runtime.settings.ws_resume_window_seconds
            )
        return max(min(deadlines), now + 1)

    def _closed_elsewhere(self, conversation_ids: list[str]) -> dict[str, str]:
        """Of these live conversations, those whose row is ended (-> its end reason) or gone (-> ``deleted``): a
        REST end or delete whose live-session close did not get through is caught up at the session's next
        deadline."""
        if not conversation_ids:
            return {}
        try:
            with self.runtime.database.session() as db:
                return self.runtime.conversations(db).closed_among(conversation_ids)
        except Exception:
            log.exception("sweep: could not read the conversations of the live sessions")
            return {}
