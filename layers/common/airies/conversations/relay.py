"""The live edge of a carrier's text relay (Twilio ConversationRelay): a phone call on the same WebSocket API.

The carrier transcribes the caller and speaks the agent, so a phone turn is a text turn through the same turn
service as a web call (claimed, run, stored with its latency, usage and cost, billed), with its reply posted as
``text`` tokens as the LLM writes them (``relay_protocol`` maps the frames). The handshake, checked at
``$connect`` (``connections``), carries the conversation token (as a web call's) and the carrier's signature of the
URL.

- ``setup``: the call, checked against the conversation's (its call SID); nothing else is needed: the
  connection was bound to the conversation by the signed handshake.
- ``prompt`` with ``last: true``: a caller turn (partial prompts, ``last: false``, are not asked for and are
  ignored).
- ``dtmf``: a caller turn whose text is ``protocol.dtmf_text(digit)``.
- ``interrupt``: the turn being posted stops; the stored agent text becomes ``utteranceUntilInterrupt``, what the
  carrier actually spoke before the caller cut in (the barge-in's own cut, with the exact text).
- the agent ends the call: ``end``; it transfers the call: ``end`` with ``handoffData`` naming the destination.
"""

from __future__ import annotations

import logging

from airies.agents.config import welcome_greeting
from airies.conversations import relay_protocol as rp
from airies.conversations.barge_in import BargeIn
from airies.conversations.lifecycle import TURN_SETTLE_S, Lifecycle
from airies.conversations.live_runtime import Frame, LiveRuntime, Poster
from airies.conversations.orchestrator import TurnOrchestrator, TurnRequest
from airies.conversations.protocol import ProtocolError, dtmf_text
from airies.conversations.sessions import LiveSession
from airies.conversations.turns import TurnMode
from airies.core.errors import NotFoundError
from airies.core.ids import new_id

log = logging.getLogger(__name__)


class _Silent:
    """A poster that posts nothing: the relay speaks the greeting itself, the platform only records it."""

    def post(self, connection_id: str, data: bytes) -> bool:
        return True

    def close(self, connection_id: str) -> None:
        return None


class RelayEdge:
    def __init__(
        self,
        runtime: LiveRuntime,
        lifecycle: Lifecycle,
        barge_in: BargeIn,
        orchestrator: TurnOrchestrator,
    ) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.lifecycle = lifecycle
        self.barge_in = barge_in
        self.orchestrator = orchestrator

    # -- $default --------------------------------------------------------------------------------------------------
    def dispatch(self, ctx: Frame, poster: Poster, message: rp.RelayMessage) -> None:
        """One message from the carrier. Each counts against the control-frame limit, as a web call's control
        frames do; a caller turn (``prompt``, ``dtmf``) counts it in the turn's claim, from the live state this
        container last saw, with nothing read first (as a web call's typed turn)."""
        cid = ctx.conversation_id
        limit = self.runtime.settings.ws_control_frames_per_second
        text = self._turn_text(message)
        # The relay speaks its greeting itself (``_setup`` records it): a prompt never waits for a first message.
        hint = self.runtime.typed_turn_hint(cid, first_message=False)
        if text is not None and hint is not None:
            self._turn(ctx, poster, hint, text, count_limit=limit)
            return
        session = self.runtime.counted_session(cid, limit)  # the flood guard's count returns the live state
        if text is not None:
            self._turn(ctx, poster, session, text)
        elif isinstance(message, rp.SetupMessage):
            self._setup(session, message)
        elif isinstance(message, rp.InterruptMessage):
            self._interrupt(poster, session, message)
        elif isinstance(message, rp.ErrorMessage):
            log.warning("the relay of %s reported an error: %s", cid, message.description)

    @staticmethod
    def _turn_text(message: rp.RelayMessage) -> str | None:
        """The caller turn's text a message carries (None: it is no caller turn; a partial prompt is none)."""
        if isinstance(message, rp.PromptMessage) and message.last and message.voice_prompt:
            return message.voice_prompt
        if isinstance(message, rp.DtmfMessage):
            return dtmf_text(message.digit)
        return None

    def _setup(self, session: LiveSession, message: rp.SetupMessage) -> None:
        """The carrier's first message: its call must be the conversation's (when the call's id is known yet).
        The greeting the relay speaks is recorded once as the agent's first turn (posted nowhere), so the
        transcript and the LLM's history have it as a web call's first message."""
        with self.runtime.database.session() as db:
            try:
                conversation = self.runtime.conversations(db).get(session.account_id, session.conversation_id)
            except NotFoundError as exc:
                raise ProtocolError("conversation_ended", "this conversation is gone") from exc
            phone = (conversation.metadata_ or {}).get(rp.PHONE_METADATA_KEY) or {}
        expected = phone.get("call_sid")
        if expected and expected != message.call_sid:
            raise ProtocolError(
                "call_mismatch", "this relay's call is not the conversation's", {"call_sid": message.call_sid}
            )
        self.store.touch(session.conversation_id)
        greeting = welcome_greeting(self.runtime.config(session), phone.get(rp.FIRST_MESSAGE_KEY))
        if not greeting or session.turn_seq > 0:
            return
        turn_id = new_id("turn")
        if not self.store.claim_first_message(session.conversation_id, turn_id):
            return
        try:
            request = TurnRequest(
                TurnMode.NONE, scripted=greeting, expected_utt=session.utt, turn_id=turn_id, stream_text=True
            )
            self.orchestrator.run(session, _Silent(), request)
        finally:
            self.store.first_message_over(session.conversation_id)

    def _turn(
        self, ctx: Frame, poster: Poster, session: LiveSession, text: str, *, count_limit: int | None = None
    ) -> None:
        request = TurnRequest(
            TurnMode.TEXT, text=text, eou_at=ctx.received_at, stream_text=True, count_limit=count_limit
        )
        self.orchestrator.run(session, poster, request)

    def _interrupt(self, poster: Poster, session: LiveSession, message: rp.InterruptMessage) -> None:
        """Stop the turn being posted, if one is, then keep only what the carrier spoke of the last reply."""
        cid = session.conversation_id
        turn_id = self.barge_in.interrupt(cid, message.duration_until_interrupt_ms)
        if turn_id is not None:  # it stops before its next token and is stored: wait for it
            self.store.wait_for_turns(cid, timeout_s=TURN_SETTLE_S)
        else:
            turn_id = session.turn_id
        if turn_id is None:
            return  # nothing was said yet
        heard = message.utterance_until_interrupt.strip()
        self.barge_in.keep_heard(session.account_id, cid, turn_id, heard, poster)
