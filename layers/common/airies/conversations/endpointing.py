"""Caller audio, one chunk per ``$default`` invocation: voice activity, buffering, barge-in while the agent
speaks, and the end of the utterance (the agent's ``endpointing.silence_ms`` of trailing silence, the maximum
utterance length, or the client's own ``end_of_utterance``), which starts the turn."""

from __future__ import annotations

import time

from airies.conversations import protocol as wp
from airies.conversations.barge_in import BargeIn
from airies.conversations.live_runtime import BoundedCache, Frame, LiveRuntime, Poster, background
from airies.conversations.orchestrator import TurnOrchestrator, TurnRequest, Utterance
from airies.conversations.sessions import LISTENING, SPEAKING, THINKING, AudioFlood, LiveSession
from airies.conversations.sweeping import Sweeper
from airies.conversations.turns import TurnMode, chunk_activity

MIN_SPEECH_MS = 150  # less voiced audio than this is a cough or a click, not an utterance


class Endpointing:
    def __init__(
        self, runtime: LiveRuntime, orchestrator: TurnOrchestrator, barge_in: BargeIn, sweeper: Sweeper
    ) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.orchestrator = orchestrator
        self.barge_in = barge_in
        self.sweeper = sweeper
        # Per conversation, the live state this container saw last (a hint only: decisions are conditional writes).
        self.vad_hints: BoundedCache[LiveSession] = BoundedCache(10_000)

    def handle_audio(self, ctx: Frame, poster: Poster, message: wp.AudioFrame) -> None:
        """One audio chunk: VAD, buffer, barge-in while the agent speaks, end of utterance by trailing silence."""
        pcm = message.pcm()
        chunk_ms = len(pcm) / wp.BYTES_PER_MS
        speech_ms, trailing = chunk_activity(pcm)
        seq = message.seq if message.seq is not None else int(time.time() * 1000) % 1_000_000_000
        cid = ctx.conversation_id
        if speech_ms == 0 and message.seq is not None and self._ends_by_hint(ctx, poster, seq, pcm, chunk_ms):
            return
        try:  # the flood check is part of the counting write: a refused chunk changes no counter
            session = self.store.add_audio(cid, chunk_ms=chunk_ms, speech_ms=speech_ms, trailing_silence_ms=trailing)
        except AudioFlood as exc:
            raise wp.ProtocolError("rate_limited", "audio is arriving faster than real time") from exc
        if session is None:
            self.vad_hints.pop(cid, None)
            raise wp.ProtocolError("conversation_ended", "this conversation has ended")
        self.vad_hints.put(cid, session)
        # Silence before the caller starts speaking is not stored: DynamoDB writes for nothing. A late chunk of
        # an utterance whose turn already started (frames run concurrently) is stored for that turn.
        keep = speech_ms > 0 or session.speech_ms > 0 or seq <= session.eou_seq
        if seq <= session.eou_seq:
            self.store.store_chunk(cid, seq, pcm)
            return
        config = self.runtime.config(session)
        ends_utterance = (
            session.state == LISTENING
            and session.speech_ms >= MIN_SPEECH_MS
            and (
                session.silence_ms >= config.endpointing.silence_ms
                or session.speech_ms + session.silence_ms >= self.runtime.settings.ws_max_utterance_seconds * 1000
            )
        )
        client_endpointed = message.end_of_utterance and not ends_utterance
        if client_endpointed and session.speech_ms <= 0:
            raise wp.ProtocolError("no_audio", "no speech was received since the last turn")
        if ends_utterance or client_endpointed:
            # This chunk closes the utterance (server VAD, or the client's endpointing on its last chunk): hand it
            # to the turn directly, store it off the critical path.
            self.vad_hints.pop(cid, None)
            background.submit(self.store.store_chunk, cid, seq, pcm)
            request = TurnRequest(
                TurnMode.AUDIO,
                utterance=Utterance(end_seq=seq, numbered=message.seq is not None, tail=pcm),
                expected_utt=session.utt,
                endpointing_ms=session.silence_ms if ends_utterance else 0.0,
                eou_at=ctx.received_at,
            )
            self.orchestrator.run(session, poster, request)
            return
        if keep:
            self.store.store_chunk(cid, seq, pcm)
        if message.seq is not None:  # after the write: the cache never holds audio DynamoDB lacks
            self.runtime.heard.hear(cid, seq, pcm if keep else None)
        if session.state in (THINKING, SPEAKING):
            if self.barge_in.voice_interrupts(session, speech_ms):
                self.barge_in.interrupt(cid, None)
            return
        if session.state == LISTENING and speech_ms == 0 and session.speech_ms == 0:
            self.sweeper.check_timers(session, poster)

    def _ends_by_hint(self, ctx: Frame, poster: Poster, seq: int, pcm: bytes, chunk_ms: float) -> bool:
        """A silent chunk that, by what this container saw last, ends the utterance: claim the turn in one
        conditional write (the rule is checked on the stored counters) instead of counting first. True when the
        turn ran here."""
        cid = ctx.conversation_id
        hint = self.vad_hints.get(cid)
        if hint is None or seq <= hint.eou_seq:
            return False
        need = self.runtime.config(hint).endpointing.silence_ms
        if not (hint.state == LISTENING and hint.speech_ms >= MIN_SPEECH_MS and hint.silence_ms + chunk_ms >= need):
            return False
        self.vad_hints.pop(cid, None)
        request = TurnRequest(
            TurnMode.AUDIO,
            utterance=Utterance(end_seq=seq, tail=pcm, vad=(MIN_SPEECH_MS, need - chunk_ms)),
            expected_utt=hint.utt,
            endpointing_ms=hint.silence_ms + chunk_ms,
            eou_at=ctx.received_at,
        )
        if self.orchestrator.run(hint, poster, request) is None:
            return False
        background.submit(self.store.store_chunk, cid, seq, pcm)
        return True
