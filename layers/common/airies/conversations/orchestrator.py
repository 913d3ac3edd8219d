"""One live turn, in five steps: claim it, assemble the caller's audio, run it, record it, end it.

Frames run concurrently (API Gateway invokes once per frame), so a turn starts with a conditional write that
claims the utterance in the live state: of two invocations that both saw its end, one runs the turn. The database
reads and the audio read overlap that claim; the turn itself (``turns.TurnRunner``) streams to the caller through
a ``SocketSink``; the row is written through ``ConversationService``. Whatever happens once the utterance is
claimed, the live session goes back to listening.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from airies.agents.config import AgentConfig
from airies.conversations import protocol as wp
from airies.conversations.barge_in import BargeIn, spoken_record
from airies.conversations.lifecycle import Lifecycle
from airies.conversations.live_runtime import LiveRuntime, Poster, SocketSink, background
from airies.conversations.service import ConversationService
from airies.conversations.sessions import SPEAKING, THINKING, LiveSession
from airies.conversations.turns import TurnEngines, TurnInput, TurnMode, TurnResult, TurnRunner
from airies.core.aio import run_sync
from airies.core.errors import ConflictError, NotFoundError
from airies.core.ids import new_id

OUT_OF_CREDIT_MESSAGE = "I'm sorry, this account has run out of credits, so I have to end the call now. Goodbye."


@dataclass(frozen=True)
class Utterance:
    """Where the caller's audio of an audio turn is: the buffered chunks of the current utterance up to
    ``end_seq``, plus ``tail``, the chunk that ended it (handed over before it is stored)."""

    end_seq: int | None = None  # its last chunk's seq; None: whatever is buffered
    numbered: bool = True  # the client numbers its chunks: a missing one inside the range is waited for
    tail: bytes = b""
    # (min speech ms, min stored trailing silence ms): claim only if the stored VAD counters say it ended
    vad: tuple[float, float] | None = None

    @property
    def buffered_up_to(self) -> int | None:
        """The last seq to read from the buffer (the tail is not there yet)."""
        return self.end_seq - 1 if (self.end_seq is not None and self.tail) else self.end_seq


@dataclass(frozen=True)
class TurnRequest:
    mode: TurnMode
    text: str | None = None  # TEXT: what the caller typed
    scripted: str | None = None  # NONE: a fixed reply (first message, reminder); None lets the model speak first
    utterance: Utterance = field(default_factory=Utterance)  # AUDIO
    expected_utt: int | None = None  # claim only if this is still the current utterance (idempotent starts)
    endpointing_ms: float = 0.0
    eou_at: float = field(default_factory=time.perf_counter)  # when the turn's trigger arrived (latency origin)
    end_after: str | None = None  # end the call after this turn, with this reason
    stream_text: bool = False  # a carrier's relay: the reply's text as the LLM writes it, no speech (it speaks)
    turn_id: str = field(default_factory=lambda: new_id("turn"))
    # The frame's flood-guard count, made by the claim's write (the frame was not counted yet): per second
    count_limit: int | None = None


@dataclass
class _Claim:
    """The claim's conditional write and the audio read, both in flight while the database is read.

    ``ahead``: the turn needs nothing of the claim's answer before STT or the model is asked (a typed turn, or an
    utterance whose audio this container holds), so it runs while the claim is in flight, and the turn's gates
    (is the conversation still open, has the account credit) are read on the claim's thread once it answers,
    while the providers work. The turn's posts wait for ``confirmed``: the claim's old values if it went through,
    the gates passed and the utterance starts where the held audio does; else None, and nothing is posted."""

    ahead: bool
    heard: bytes | None = None  # the utterance, from this container's cache
    fetch: Future[tuple[bytes, int, list[int]]] | None = None  # else its read from DynamoDB
    claimed: Future[LiveSession | None] = field(default_factory=Future)
    confirmed: Future[LiveSession | None] | None = None
    refusal: tuple[str, str] | None = None  # a gate said no: ("closed" | "credit", reason)
    gate_error: Exception | None = None  # a gate could not be read (raised once the session is released)
    used: list[int] = field(default_factory=list)  # buffered chunks the turn consumed: deleted once it is claimed
    deferred: Callable[[], LiveSession | None] | None = None  # the claim's write, until ``start`` submits it

    def closed(self) -> str | None:
        """Why the call is over, if a gate said so."""
        return self.refusal[1] if self.refusal is not None and self.refusal[0] == "closed" else None

    def start(self) -> None:
        """Submit a deferred claim (once: later calls, and calls for a claim already submitted, do nothing)."""
        with _DEFERRED_CLAIMS:
            write, self.deferred = self.deferred, None
        if write is not None:
            background.submit(_settle, self.claimed, write)


_DEFERRED_CLAIMS = threading.Lock()


def _settle(future: Future[LiveSession | None], write: Callable[[], LiveSession | None]) -> None:
    try:
        future.set_result(write())
    except BaseException as exc:
        future.set_exception(exc)


@dataclass
class _Prepared:
    config: AgentConfig
    engines: TurnEngines
    inp: TurnInput
    sink: SocketSink


@dataclass
class _Outcome:
    result: TurnResult | None = None
    sink: SocketSink | None = None
    closed: str | None = None  # the conversation was ended or deleted elsewhere: so is the live session
    end_after: str | None = None
    stored: bool = False


# The frame's count refused the turn (a flood, a call already over): a refused frame, not a failed turn.
REFUSED_FRAME_CODES = frozenset({"rate_limited", "conversation_ended"})


def _refused_frame(exc: Exception) -> bool:
    return isinstance(exc, wp.ProtocolError) and exc.code in REFUSED_FRAME_CODES


def _confirmed(claim: _Claim, seg_start: int | None) -> Future[LiveSession | None]:
    """The claim's answer for a turn run ahead of it: None unless the claim went through, its gates passed and
    (``seg_start`` given) the utterance it claimed starts there."""
    confirmed: Future[LiveSession | None] = Future()

    def settle(done: Future[LiveSession | None]) -> None:
        try:
            previous = done.result()
        except BaseException as exc:
            confirmed.set_exception(exc)
            return
        if previous is None or claim.refusal is not None or claim.gate_error is not None:
            confirmed.set_result(None)
        else:
            confirmed.set_result(previous if seg_start is None or previous.seg_start == seg_start else None)

    claim.claimed.add_done_callback(settle)
    return confirmed


class TurnOrchestrator:
    def __init__(self, runtime: LiveRuntime, lifecycle: Lifecycle, barge_in: BargeIn) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.lifecycle = lifecycle
        self.barge_in = barge_in

    def run(self, session: LiveSession, poster: Poster, request: TurnRequest) -> TurnResult | None:
        """Run one turn of the live call; None when another invocation took the utterance or the call ended."""
        claim = self._claim(session, request)
        outcome = _Outcome(end_after=request.end_after)
        try:
            # No transaction stays open while STT, the LLM and TTS run (it would pin a pooled, proxied connection
            # idle in transaction for seconds): short units of work before the provider calls and after them.
            prepared: _Prepared | None = None
            with self.runtime.database.session() as db:
                # A turn that waits for its claim reads its gates while the claim is in flight (wasted only when
                # another invocation won the utterance); one run ahead reads them on the claim's thread.
                service = self.runtime.conversations(db)
                if not claim.ahead:
                    claim.refusal = self._gates(service, session)
                outcome.closed = claim.closed()
                if outcome.closed is None:
                    prepared = self._prepare(db, service, session, poster, request, claim, outcome)
                    if prepared is None:
                        return None  # another invocation already took this utterance, or the conversation ended
            if prepared is not None:
                outcome.result = self._execute(prepared)
                if not self._claimed(claim, outcome) and not self._run_again(session, poster, request, claim, outcome):
                    return None  # another invocation took the turn while it ran: nothing was posted or stored
                if outcome.result is not None:
                    self._delete_used(session.conversation_id, claim)
                    with self.runtime.database.session() as db:
                        outcome.closed = self._record(self.runtime.conversations(db), session, outcome.result)
        except Exception as exc:
            if self.runtime.turn_metrics is not None and not _refused_frame(exc):
                self.runtime.turn_metrics.failed()
            raise
        finally:
            # Whatever happened once the utterance was claimed (a failed read, engine or config, a provider
            # outage, a refused turn), the session goes back to listening: stuck in "thinking", the server VAD
            # would never end the next utterance and the silence timer would never fire.
            finished = self._release(session.conversation_id, request.turn_id, claim, outcome)
        if outcome.result is not None and self.runtime.turn_metrics is not None:
            out_of_time = outcome.sink is not None and outcome.sink.out_of_time
            self.runtime.turn_metrics.turn(outcome.result, out_of_time=out_of_time)
        return self._end(session.conversation_id, poster, request.turn_id, outcome, finished)

    def _run_again(
        self, session: LiveSession, poster: Poster, request: TurnRequest, claim: _Claim, outcome: _Outcome
    ) -> bool:
        """A turn run ahead of its claim posted nothing and was dropped. False if another invocation took the
        utterance; else the claim went through and: the conversation is over (``outcome.closed``), or the turn
        runs again on the claimed values, its gates read first (out of credit: the notice instead of a reply; an
        utterance that began elsewhere than the audio this container held: its buffered chunks, from DynamoDB)."""
        if claim.claimed.result() is None:
            return False
        if claim.gate_error is not None:
            raise claim.gate_error
        outcome.closed = claim.closed()
        if outcome.closed is not None:
            return True
        with self.runtime.database.session() as db:
            service = self.runtime.conversations(db)
            prepared = self._prepare(db, service, session, poster, request, claim, outcome, ahead=False)
        if prepared is None:
            return False
        outcome.result = self._execute(prepared)
        return self._claimed(claim, outcome)

    # -- 1. claim ------------------------------------------------------------------------------------------------
    def _claim(self, session: LiveSession, request: TurnRequest) -> _Claim:
        cid = session.conversation_id
        utterance = request.utterance
        upper = utterance.buffered_up_to
        heard, fetch = None, None
        if request.mode == TurnMode.AUDIO:
            if utterance.numbered and upper is not None:
                heard = self.runtime.heard.audio(cid, session.seg_start, upper)
            if heard is None:  # read the buffered audio while the turn is claimed
                fetch = self._fetch_audio(cid, session.seg_start, upper, utterance.numbered)
        claim = _Claim(request.mode == TurnMode.TEXT or heard is not None, heard, fetch)
        if claim.ahead:
            claim.confirmed = _confirmed(claim, session.seg_start if request.mode == TurnMode.AUDIO else None)
            # The claim is written once the turn's provider requests have left (its first post, ``SocketSink``):
            # the write's SDK work on the I/O thread would otherwise hold the GIL while they are built. Unless the
            # agent is still answering: the claim is what cancels that turn, so it does not wait for STT.
            claim.deferred = functools.partial(self._begin_ahead, session, request, claim)
            if request.mode == TurnMode.AUDIO and session.state in (THINKING, SPEAKING):
                claim.start()
        else:
            claim.claimed = background.submit(self._begin, cid, request)
            time.sleep(0)  # hand the GIL to the claim's thread: its request leaves before the database work below
        return claim

    def _begin_ahead(self, session: LiveSession, request: TurnRequest, claim: _Claim) -> LiveSession | None:
        """The claim, then, if it went through, the turn's gates (on this thread, while the providers work)."""
        previous = self._begin(session.conversation_id, request)
        if previous is not None:
            try:
                with self.runtime.database.session() as db:
                    claim.refusal = self._gates(self.runtime.conversations(db), session)
            except Exception as exc:  # raised by the turn once the claim is released: the session must not stick
                claim.gate_error = exc
        return previous

    def _begin(self, cid: str, request: TurnRequest) -> LiveSession | None:
        """The claim's conditional write (with the frame's count when ``request.count_limit`` is set)."""
        utterance = request.utterance
        activity = request.mode != TurnMode.NONE
        limit = request.count_limit
        previous = self.store.begin_turn(
            cid,
            request.turn_id,
            expected_utt=request.expected_utt,
            caller_activity=activity,
            end_seq=utterance.end_seq,
            vad=utterance.vad,
            count_limit=limit,
        )
        if previous is not None or limit is None:
            return previous
        # Refused with the count: a flood, a call that ended, or a wrong guess of the second's count. The count
        # alone tells (and counts the frame), then the claim is made as usual.
        self.runtime.counted_session(cid, limit)
        return self.store.begin_turn(
            cid,
            request.turn_id,
            expected_utt=request.expected_utt,
            caller_activity=activity,
            end_seq=utterance.end_seq,
            vad=utterance.vad,
        )

    def _fetch_audio(
        self, cid: str, first: int, upper: int | None, numbered: bool
    ) -> Future[tuple[bytes, int, list[int]]]:
        return background.submit(self.store.utterance_audio, cid, first, upper, wait_s=0.6 if numbered else 0.0)

    @staticmethod
    def _gates(service: ConversationService, session: LiveSession) -> tuple[str, str] | None:
        """What keeps the turn from being answered: ("closed", why the call is over: ended over REST or by the
        sweeper, or deleted), ("credit", why the account may not run it); None when it may run."""
        try:
            conversation = service.get(session.account_id, session.conversation_id)
        except NotFoundError:
            return "closed", "deleted"
        if conversation.status == "ended":
            return "closed", conversation.end_reason or "api_request"
        allowed, reason, _message = service.check_credit(session.account_id)
        return None if allowed else ("credit", reason or "insufficient_credits")

    def _prepare(
        self,
        db: Session,
        service: ConversationService,
        session: LiveSession,
        poster: Poster,
        request: TurnRequest,
        claim: _Claim,
        outcome: _Outcome,
        *,
        ahead: bool = True,
    ) -> _Prepared | None:
        """The turn's input and sink. ``ahead``: a turn that needs nothing of its claim's answer before the model
        (or STT) is asked runs while the claim is in flight."""
        config = self.runtime.config(session)
        ahead = ahead and claim.ahead
        engines = self.runtime.turn_engines(db, session, config)
        mode, scripted = request.mode, request.scripted
        # The gates were read (before, or on the claim's thread for a turn that ran ahead and is run again); a turn
        # that runs ahead has not read them yet.
        if not ahead and claim.refusal is not None and claim.refusal[0] == "credit":
            mode, scripted, outcome.end_after = TurnMode.NONE, OUT_OF_CREDIT_MESSAGE, claim.refusal[1]
        if ahead:
            # The STT and LLM requests leave while the claim is in flight; the turn's first post (the caller's
            # transcript, before any synthesis) waits for its confirmation. Unconfirmed, the turn posts nothing,
            # its requests are cancelled and nothing is stored (``_claimed``, then ``_run_again``).
            previous = session
            assert claim.confirmed is not None
            outcome.sink = SocketSink(
                self.store, poster, session.conversation_id, request.turn_id, claim.confirmed, claim.start
            )
        else:
            claimed = claim.claimed.result()
            if claimed is None:
                return None
            previous, claim.confirmed = claimed, claim.claimed
            outcome.sink = SocketSink(
                self.store, poster, session.conversation_id, request.turn_id, previous.connections
            )
        pcm = (
            self._assemble_audio(session, request.utterance, claim, previous)
            if request.mode == TurnMode.AUDIO
            else None
        )
        if mode == TurnMode.AUDIO and not pcm:
            raise wp.ProtocolError("no_audio", "no audio was buffered for this utterance")
        inp = TurnInput(
            turn_id=request.turn_id,
            seq=previous.turn_seq + 1,  # the old values (of a turn run ahead of its claim: ``_claimed``)
            mode=mode,
            account_id=previous.account_id,
            conversation_id=session.conversation_id,
            pcm=pcm,
            text=request.text,
            endpointing_ms=request.endpointing_ms,
            eou_at=request.eou_at,
            scripted_reply=scripted,
            # Every turn of a carrier relay's call (a silence reminder, the out-of-credit notice too) is text the
            # relay speaks: nothing is synthesised here. A phone call can be handed over (transfer_call).
            speak=not (request.stream_text or session.protocol),
            stream_text=request.stream_text or bool(session.protocol),
            can_transfer=bool(session.protocol),
        )
        return _Prepared(config, engines, inp, outcome.sink)

    # -- 2. assemble audio ---------------------------------------------------------------------------------------
    def _assemble_audio(
        self, session: LiveSession, utterance: Utterance, claim: _Claim, previous: LiveSession
    ) -> bytes:
        """The utterance's audio: from this container's cache or DynamoDB, plus the chunk that ended it. With
        ``ws_delete_used_chunks`` the chunks read are then deleted, off the critical path (else, and for a chunk
        that comes late, their short TTL removes them)."""
        cid = session.conversation_id
        upper = utterance.buffered_up_to
        heard, fetch = claim.heard, claim.fetch
        if heard is not None and previous.seg_start != session.seg_start:  # the cache was read for a stale start
            heard, fetch = None, self._fetch_audio(cid, previous.seg_start, upper, utterance.numbered)
        last = upper if upper is not None else -1
        pcm: bytes | None = heard
        used: list[int] = []
        if pcm is not None:
            used = self.runtime.heard.stored(cid, previous.seg_start, last)
        elif fetch is not None:
            pcm, last, used = fetch.result()
        if utterance.end_seq is None:
            self.store.set_segment_start(cid, last + 1)
        self.runtime.heard.forget(cid, utterance.end_seq if utterance.end_seq is not None else last)
        claim.used = used
        return (pcm or b"") + utterance.tail

    def _delete_used(self, cid: str, claim: _Claim) -> None:
        """With ``ws_delete_used_chunks``, the chunks a claimed turn consumed are deleted, off the critical path
        (not before the claim answers: the invocation that won the utterance may still read them)."""
        if claim.used and self.runtime.settings.ws_delete_used_chunks:
            background.submit(self.store.delete_chunks, cid, claim.used)

    # -- 3. run --------------------------------------------------------------------------------------------------
    def _execute(self, prepared: _Prepared) -> TurnResult:
        runner = TurnRunner(prepared.engines, out_chunk_ms=self.runtime.settings.ws_out_chunk_ms)
        cid = prepared.inp.conversation_id
        # History is read on a thread while the speech is transcribed, in a unit of work of its own.
        return run_sync(runner.run, prepared.config, lambda: self._history(cid), prepared.inp, prepared.sink)

    def _history(self, conversation_id: str) -> list[dict[str, str]]:
        with self.runtime.database.session() as db:
            return ConversationService(db, self.runtime.settings).history_messages(conversation_id)

    @staticmethod
    def _claimed(claim: _Claim, outcome: _Outcome) -> bool:
        """After the run: did the claim go through for what the turn ran on? Its old values number the turn. False:
        the turn is dropped."""
        claim.start()  # a turn that never posted never started its deferred claim
        previous = (claim.confirmed or claim.claimed).result()
        if previous is None:
            outcome.result = None
            return False
        if outcome.result is not None:
            outcome.result.seq = previous.turn_seq + 1
        return True

    # -- 4. record -----------------------------------------------------------------------------------------------
    @staticmethod
    def _record(service: ConversationService, session: LiveSession, result: TurnResult) -> str | None:
        """Store the turn (billed through the service). Returns why the call is over if the turn was refused.

        The row is read again: it may have been ended or deleted over REST while the turn ran."""
        if result.status == "no_speech":
            return None
        try:
            conversation = service.get(session.account_id, session.conversation_id, for_update=True)
            service.record_turn(conversation, result)
        except ConflictError as exc:  # the conversation ended before this turn started
            if exc.code != "conversation_ended":
                raise
            return service.end_reason(session.account_id, session.conversation_id)
        except NotFoundError:  # deleted while the turn ran
            return "deleted"
        return None

    def _release(self, cid: str, turn_id: str, claim: _Claim, outcome: _Outcome) -> LiveSession | None:
        """Back to listening if the claim went through (a no-op when a newer turn took over or the call ended),
        keeping a stored turn's sentences for a late barge-in. Returns the session as the turn left it (None: not
        this turn's)."""
        if outcome.sink is not None:
            outcome.sink.settle()
        result = outcome.result
        # An interrupted turn keeps its sentences too: cut by the server's VAD (which knows nothing of playback),
        # it is cut again to the client's played_ms when that comes.
        outcome.stored = result is not None and result.status in ("completed", "interrupted") and outcome.closed is None
        record = spoken_record(turn_id, result.spoken) if outcome.stored and result is not None else None
        claim.start()
        try:
            claimed = claim.claimed.result() is not None
        except Exception:
            return None
        return self.store.finish_turn(cid, turn_id, record) if claimed else None

    # -- 5. end --------------------------------------------------------------------------------------------------
    def _end(
        self, cid: str, poster: Poster, turn_id: str, outcome: _Outcome, finished: LiveSession | None
    ) -> TurnResult | None:
        """``turn_end`` to the connections, a late barge-in cut, and the end of the call if the turn ends it."""
        if outcome.closed is not None:
            # No turn_end: the turn was not stored. The caller gets "ended" and the socket closes.
            self.lifecycle.end(cid, outcome.closed, poster)
            return None
        result, sink = outcome.result, outcome.sink
        assert result is not None and sink is not None
        frame = wp.turn_end(
            turn_id,
            seq=result.seq,
            status=result.status,
            user_text=result.user_text,
            agent_text=result.agent_text,
            interrupted=result.interrupted,
            latency=result.latency,
            usage={k: v for k, v in result.usage.items() if k not in ("tts_errors",)},
            cost=result.cost,
            error=result.error,
        )
        if sink.connections:
            sink.broadcast(frame)
        if (
            finished is not None
            and finished.cancelled == turn_id
            and finished.played_ms is not None
            and outcome.stored
            and result.played_ms is None
        ):
            # An interrupt (or the played_ms of one, after a cut by voice) landed after the turn's last barge-in
            # check: cut it now, as one after turn_end would be.
            self.barge_in.cut_finished_turn(finished, turn_id, poster)
        ending = outcome.end_after or result.end_call
        if ending:
            # A transfer names where the call goes: a carrier's relay ends with it and the carrier dials it.
            transfer = {"destination": result.transfer.destination} if result.transfer is not None else None
            self.lifecycle.end(cid, ending, poster, active_until=self.runtime.clock(), transfer=transfer)
        return result
