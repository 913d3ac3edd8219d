"""The WebSocket frames: ``$default`` (one invocation per frame, concurrently) parses a frame and hands it on
(``$connect`` and ``$disconnect`` are in ``connections``). A 410 Gone on a post drops that one connection; the
conversation and its other connections carry on."""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

from airies.agents.config import FirstMessageMode
from airies.conversations import protocol as wp
from airies.conversations.barge_in import BargeIn
from airies.conversations.endpointing import Endpointing
from airies.conversations.lifecycle import Lifecycle
from airies.conversations.live_runtime import Frame, LiveRuntime, Poster, endpoint_from_event, speaking
from airies.conversations.orchestrator import TurnOrchestrator, TurnRequest, Utterance
from airies.conversations.relay import RelayEdge
from airies.conversations.relay_protocol import parse_relay_message
from airies.conversations.sessions import ENDED, LiveSession
from airies.conversations.sweeping import Sweeper
from airies.conversations.turns import TurnMode
from airies.core.errors import AiriesError
from airies.core.ids import new_id

log = logging.getLogger(__name__)

# How long a typed turn waits for the first message another invocation is speaking (posts run ~20x real time).
FIRST_MESSAGE_WAIT_S = 10.0
# How long an end_of_utterance waits for audio frames sent just before it (frames run concurrently).
EOU_AUDIO_WAIT_S = 0.5


class SocketEdge:
    def __init__(
        self,
        runtime: LiveRuntime,
        lifecycle: Lifecycle,
        barge_in: BargeIn,
        orchestrator: TurnOrchestrator,
        sweeper: Sweeper,
        endpointing: Endpointing,
        relay: RelayEdge,
    ) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.lifecycle = lifecycle
        self.barge_in = barge_in
        self.orchestrator = orchestrator
        self.sweeper = sweeper
        self.endpointing = endpointing
        self.relay = relay

    # -- $default ------------------------------------------------------------------------------------------------
    def handle_message(self, event: dict[str, Any]) -> dict[str, Any]:
        ctx = event.get("requestContext", {})
        connection_id = ctx.get("connectionId", "")
        endpoint = endpoint_from_event(self.runtime.settings, event)
        poster = self.runtime.poster_factory(endpoint)
        known = self.runtime.connections.get(connection_id) or self.store.connection(connection_id)
        protocol = known.get("protocol") if known is not None else None
        poster = speaking(poster, protocol)
        if known is None:
            poster.post(
                connection_id, wp.encode(wp.error("conversation_ended", "this connection has no live conversation"))
            )
            poster.close(connection_id)
            return {"statusCode": 200}
        self.runtime.connections.put(connection_id, known)
        self.runtime.prefetch_config(known["conversation_id"])
        frame = Frame(connection_id, known["conversation_id"], known["account_id"], endpoint, time.perf_counter())
        body = event.get("body")
        if event.get("isBase64Encoded") and body:
            body = base64.b64decode(body)
        try:
            if protocol is not None:  # a carrier relay's connection: its messages are the relay's
                self.relay.dispatch(frame, poster, parse_relay_message(body))
                return {"statusCode": 200}
            message = wp.parse_client_frame(body)
            self.dispatch(frame, poster, message)
        except (wp.ProtocolError, AiriesError) as exc:
            poster.post(connection_id, wp.encode(wp.error(exc.code, exc.message, exc.details)))
        except Exception:
            # A bug or an outage (database, DynamoDB): the caller hears about it, the details stay in the log.
            log.exception("frame of %s failed", frame.conversation_id)
            try:
                poster.post(connection_id, wp.encode(wp.error("internal_error", "internal error; please retry")))
            except Exception:
                log.exception("could not report the failure to %s", connection_id)
        return {"statusCode": 200}

    def dispatch(self, ctx: Frame, poster: Poster, message: wp.ClientFrame) -> None:
        cid = ctx.conversation_id
        if isinstance(message, wp.AudioFrame):
            self.endpointing.handle_audio(ctx, poster, message)
            return
        limit = self.runtime.settings.ws_control_frames_per_second
        if (
            isinstance(message, wp.TextFrame)
            and not self.store.count_full(cid, limit)
            and (hint := self.runtime.typed_turn_hint(cid)) is not None
        ):
            # Nothing to read first: the frame's count is part of the turn's claim, in flight while the model is
            # asked; a refused count or an ended call comes back as the frame's error, and the turn is dropped.
            request = TurnRequest(TurnMode.TEXT, text=message.text, eou_at=ctx.received_at, count_limit=limit)
            self.orchestrator.run(hint, poster, request)
            return
        if isinstance(message, wp.EndOfUtteranceFrame) and (heard := self._utterance_hint(cid)) is not None:
            # The caller's audio went through this container: the utterance it ends is known, so the turn is
            # claimed from that (the frame counted with the claim) instead of counting and reading first.
            request = TurnRequest(
                TurnMode.AUDIO,
                utterance=Utterance(end_seq=message.last_seq),
                expected_utt=heard.utt,
                eou_at=ctx.received_at,
                count_limit=limit,
            )
            self.orchestrator.run(heard, poster, request)
            return
        session = self.runtime.counted_session(cid, limit)  # the flood guard's count returns the live state
        if isinstance(message, wp.PingFrame):
            poster.post(ctx.connection_id, wp.encode(wp.pong()))
            self.sweeper.check_timers(session, poster)
        elif isinstance(message, wp.StartFrame):
            self._start(ctx, poster, session)
        elif isinstance(message, wp.TextFrame):
            self._after_first_message(session, poster)
            self.orchestrator.run(
                session, poster, TurnRequest(TurnMode.TEXT, text=message.text, eou_at=ctx.received_at)
            )
        elif isinstance(message, wp.EndOfUtteranceFrame):
            session = self._speech_landed(session)
            if session.speech_ms <= 0:
                raise wp.ProtocolError("no_audio", "no speech was received since the last turn")
            request = TurnRequest(
                TurnMode.AUDIO,
                utterance=Utterance(end_seq=message.last_seq),
                expected_utt=session.utt,
                eou_at=ctx.received_at,
            )
            self.orchestrator.run(session, poster, request)
        elif isinstance(message, wp.InterruptFrame):
            self.barge_in.handle_interrupt(ctx, poster, message)
        elif isinstance(message, wp.EndFrame):
            self.lifecycle.end(cid, "caller_ended", poster, active_until=self.runtime.clock())

    def _speech_landed(self, session: LiveSession) -> LiveSession:
        """The live state once the caller's speech is counted. Frames run concurrently, so an end_of_utterance
        sent right after the last audio frames can be handled before they are counted: wait for them a little
        (at most EOU_AUDIO_WAIT_S) instead of answering no_audio to a caller who spoke."""
        if session.speech_ms > 0:
            return session
        latest = self.store.wait_until(
            session.conversation_id, lambda live: live.speech_ms > 0, EOU_AUDIO_WAIT_S, interval_s=0.02
        )
        return latest if latest is not None else session

    def _utterance_hint(self, conversation_id: str) -> LiveSession | None:
        """The live state as this container's last audio chunk left it, if it holds the caller's speech (the
        claim checks the utterance is still the current one; a turn started since makes it lose)."""
        hint = self.endpointing.vad_hints.get(conversation_id)
        if hint is None or hint.state == ENDED or hint.speech_ms <= 0:
            return None
        self.endpointing.vad_hints.pop(conversation_id, None)
        return hint

    # -- start and the first message -----------------------------------------------------------------------------
    def _start(self, ctx: Frame, poster: Poster, session: LiveSession) -> None:
        # Frames run concurrently: a text frame sent right after "start" may already have begun its turn, so neither
        # "resumed" nor the first message is read off the turn state; each is claimed once, atomically.
        resumed = not self.store.claim_start(ctx.conversation_id)
        poster.post(
            ctx.connection_id,
            wp.encode(
                wp.ready(
                    ctx.conversation_id, agent_id=session.agent_id, agent_version=session.agent_version, resumed=resumed
                )
            ),
        )
        self._speak_first_message(session, poster)

    def _speak_first_message(self, session: LiveSession, poster: Poster) -> None:
        """The agent's first message, once per conversation: whoever claims it (the first ``start``, or a text
        frame that got there first) speaks it. None once a turn has run (the caller spoke before any ``start``)."""
        if session.first_turn is not None or session.turn_seq > 0 or not self.runtime.owes_first_message(session):
            return
        turn_id = new_id("turn")
        if not self.store.claim_first_message(session.conversation_id, turn_id):
            return
        config = self.runtime.config(session)
        scripted = (
            config.first_message if config.first_message_mode == FirstMessageMode.assistant_speaks_first else None
        )
        try:
            request = TurnRequest(TurnMode.NONE, scripted=scripted, expected_utt=session.utt, turn_id=turn_id)
            self.orchestrator.run(session, poster, request)
        finally:
            self.store.first_message_over(session.conversation_id)

    def _after_first_message(self, session: LiveSession, poster: Poster) -> None:
        """A typed turn comes after the agent's first message, never instead of it: the first message is spoken
        here if nobody has claimed it yet, or waited for (at most ``FIRST_MESSAGE_WAIT_S``) while another
        invocation speaks it. Caller audio is not held back: speaking over the first message interrupts it."""
        if session.first_done or not self.runtime.owes_first_message(session):
            return
        self._speak_first_message(session, poster)
        deadline = time.monotonic() + FIRST_MESSAGE_WAIT_S
        while time.monotonic() < deadline:
            current = self.store.get(session.conversation_id)
            if current is None or current.state == ENDED or current.first_turn is None or current.first_done:
                return  # over, or nobody speaks it (the caller spoke before any "start")
            time.sleep(0.05)
