"""Barge-in: the caller talks over the agent, by an ``interrupt`` frame or by voice (the server's VAD).

The turn being posted is marked cancelled in the live state and stops before its next frame (its invocation
answers ``interrupted``). A turn already posted whole (the client plays in real time, so it interrupts after
``turn_end``) is cut to what the caller heard, until the next turn starts.
"""

from __future__ import annotations

import json

from airies.conversations import protocol as wp
from airies.conversations.lifecycle import Lifecycle
from airies.conversations.live_runtime import Frame, LiveRuntime, Poster
from airies.conversations.sessions import LISTENING, SPEAKING, LiveSession
from airies.conversations.turns import SpokenSentence, heard_reply


def spoken_record(turn_id: str, sentences: list[SpokenSentence]) -> str:
    """A finished turn's sentences with their audio offsets, as kept in the live session."""
    rows = [[s.text, s.start_ms, s.end_ms, s.complete] for s in sentences]
    return json.dumps({"turn_id": turn_id, "sentences": rows}, separators=(",", ":"))


def spoken_sentences(record: str | None, turn_id: str) -> list[SpokenSentence] | None:
    """The sentences of ``turn_id`` from a ``spoken_record`` (None when the record is of another turn)."""
    data = json.loads(record) if record else {}
    if data.get("turn_id") != turn_id:
        return None
    return [SpokenSentence(text, start, end, complete) for text, start, end, complete in data["sentences"]]


class BargeIn:
    def __init__(self, runtime: LiveRuntime, lifecycle: Lifecycle) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.lifecycle = lifecycle

    def interrupt(self, conversation_id: str, played_ms: int | None) -> str | None:
        """Mark the turn in flight cancelled; the invocation speaking it stops before its next post. Returns the
        cancelled turn's id (None: nothing was being spoken)."""
        return self.store.cancel_turn(conversation_id, played_ms)

    def voice_interrupts(self, session: LiveSession, speech_ms: float) -> bool:
        """Does the caller's voice, counted into ``session`` while the agent thinks or speaks, interrupt the agent?

        Only on a speech chunk, once the speech heard since the turn began reaches ``interruption.voice_seconds``
        and the words it holds (estimated from its duration: the server's VAD transcribes nothing) reach
        ``min_words``; and not within ``backoff_seconds`` of the agent starting to speak (its first audio frame).
        """
        interruption = self.runtime.config(session).interruption
        if not interruption.enabled or speech_ms <= 0:
            return False
        needed_ms = max(interruption.speech_needed_ms(), 1)
        if session.barge_ms < needed_ms:
            return False
        if session.state == SPEAKING and session.speaking_at:
            return self.runtime.clock() - session.speaking_at >= interruption.backoff_seconds
        return True

    def handle_interrupt(self, ctx: Frame, poster: Poster, message: wp.InterruptFrame) -> None:
        """An ``interrupt`` frame. Naming an older turn than the last one is an error."""
        cid = ctx.conversation_id
        if self.store.cancel_turn(cid, message.played_ms, turn_id=message.turn_id) is not None:
            return
        session = self.store.get(cid)
        if session is None or session.turn_id is None:
            return  # nothing was said yet: nothing to interrupt
        target = message.turn_id or session.turn_id
        if session.turn_id != target:
            raise wp.ProtocolError(
                "turn_not_current",
                "that turn is over and a newer one has started: only the last turn can be interrupted",
                {"turn_id": target, "current_turn_id": session.turn_id},
            )
        if message.played_ms is None or session.state != LISTENING:
            return  # all of it was posted and nothing says less was heard; or a newer turn is being claimed
        cut = self.store.cancel_finished_turn(cid, target, message.played_ms)
        if cut is not None:
            self.cut_finished_turn(cut, target, poster)

    def cut_finished_turn(self, session: LiveSession, turn_id: str, poster: Poster | None) -> None:
        """Keep only what the caller heard of a finished turn (``session.played_ms`` of its audio): the stored
        agent text, and so the next turn's LLM history, then tell the connections (``interrupted``)."""
        sentences = spoken_sentences(session.spoken, turn_id)
        if sentences is None:
            return
        heard = heard_reply(sentences, session.played_ms)
        self.keep_heard(session.account_id, session.conversation_id, turn_id, heard, poster)

    def keep_heard(
        self,
        account_id: str,
        conversation_id: str,
        turn_id: str,
        heard: str,
        poster: Poster | None,
    ) -> None:
        """Store only ``heard`` as the turn's agent text (so the next turn's LLM history is what the caller heard)
        and tell the connections (``interrupted``). Callers pass what was played: a carrier's relay says what it
        spoke; a client's first ``played_ms`` (the store's condition) also shortens a turn the server's VAD cut with
        everything posted counted as heard."""
        with self.runtime.database.session() as db:
            turn = self.runtime.conversations(db).cut_turn(account_id, conversation_id, turn_id, heard)
            if turn is None:
                return
            heard = turn.agent_text or ""  # a turn cut before to less keeps that
        self.lifecycle.broadcast(conversation_id, wp.interrupted(turn_id, heard), poster)
