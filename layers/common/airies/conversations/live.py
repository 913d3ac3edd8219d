"""The WebSocket edge: API Gateway events in, ``post_to_connection`` frames out.

``$connect`` checks the conversation token and opens the live session; ``$default`` (one invocation per frame,
concurrently) buffers audio, detects the end of an utterance, runs the turn and handles barge-in; ``$disconnect``
forgets the connection. A 410 Gone on a post drops that one connection; the conversation and its other
connections carry on. The sweeper (scheduled) calls :meth:`WebSocketService.sweep` for timers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from airies.agents.schemas import AgentConfig, FirstMessageMode
from airies.conversations import protocol as wp
from airies.conversations.models import Conversation
from airies.conversations.service import (
    ConversationService,
    ConversationTokens,
    CreditGate,
    UsageSink,
    billing_credit_gate,
    billing_usage_sink,
    build_engines,
    token_secret,
)
from airies.conversations.sessions import (
    ENDED,
    LISTENING,
    SPEAKING,
    THINKING,
    AudioFlood,
    LiveSession,
    SessionEnded,
    SessionStore,
)
from airies.conversations.turns import (
    SpokenSentence,
    TurnEngines,
    TurnInput,
    TurnResult,
    TurnRunner,
    chunk_activity,
    heard_reply,
)
from airies.core.config import Settings
from airies.core.database import Database
from airies.core.errors import AiriesError, ConflictError, NotFoundError, UnauthorizedError
from airies.core.ids import new_id
from airies.core.models import utcnow
from airies.core.money import format_usd

log = logging.getLogger(__name__)
# Work overlapped with the invocation's thread: buffer writes, claiming a turn while the database is read, the
# audio read. Threads start lazily; the local gateway runs many invocations per process, hence more than 2.
_background = ThreadPoolExecutor(max_workers=8, thread_name_prefix="voice-io")

_loops = threading.local()
_loop_generation = 0  # bumped by reset_after_restore: every thread builds a fresh loop on its next turn


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run`` without a new event loop and thread pool per turn: each thread keeps its own (a Lambda
    container has one; the local gateway runs invocations on several threads). Saves creating the loop and the
    ``to_thread`` workers on the turn's critical path, and joining them after it."""
    loop: asyncio.AbstractEventLoop | None = getattr(_loops, "loop", None)
    if loop is not None and getattr(_loops, "generation", 0) != _loop_generation:
        stale, loop = loop, None  # built before a SnapStart snapshot: its executor threads are not to be trusted
        if not stale.is_closed() and not stale.is_running():
            stale.close()
    if loop is None or loop.is_closed():
        loop = _loops.loop = asyncio.new_event_loop()
        _loops.generation = _loop_generation
        loop.set_default_executor(ThreadPoolExecutor(max_workers=8, thread_name_prefix="voice-turn"))
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(coro)
    finally:
        # As asyncio.run does: nothing of this turn keeps running into the next one.
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        asyncio.set_event_loop(None)


# How long a typed turn waits for the first message another invocation is speaking (posts run ~20x real time).
FIRST_MESSAGE_WAIT_S = 10.0
MIN_SPEECH_MS = 150  # less voiced audio than this is a cough or a click, not an utterance
# How long ending a call waits for a turn in flight to be stored (it stops within one sentence; past this, e.g. an
# invocation that died, the call ends anyway and a late turn is still stored, as it started before the end).
TURN_SETTLE_S = 10.0
HEARD_FRAMES_MAX = 4000  # per conversation (~17 min of 250 ms frames): past it the container stops keeping audio
OUT_OF_CREDIT_MESSAGE = "I'm sorry, this account has run out of credits, so I have to end the call now. Goodbye."
EngineFactory = Callable[[Session, str, AgentConfig], TurnEngines]


def ended_summary(conversation: Conversation | None) -> dict[str, Any]:
    """The ``ended`` frame's totals; zero for a conversation that is gone."""
    if conversation is None:
        return {"duration_seconds": 0.0, "turns": 0, "cost_usd": format_usd(0)}
    return {
        "duration_seconds": conversation.duration_seconds,
        "turns": conversation.turn_count,
        "cost_usd": format_usd(conversation.cost_usd or 0),
    }


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


class Poster(Protocol):
    def post(self, connection_id: str, data: bytes) -> bool:
        """Deliver a frame; False when the connection is gone (410)."""
        ...

    def close(self, connection_id: str) -> None: ...


class ApiGatewayPoster:
    """``post_to_connection`` through the API Gateway Management API (locally: the gateway's stand-in)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.posts = 0

    def post(self, connection_id: str, data: bytes) -> bool:
        self.posts += 1
        try:
            self.client.post_to_connection(ConnectionId=connection_id, Data=data)
        except self.client.exceptions.GoneException:
            return False
        return True

    def close(self, connection_id: str) -> None:
        try:
            self.client.delete_connection(ConnectionId=connection_id)
        except self.client.exceptions.GoneException:
            pass


_management_clients: dict[str, Any] = {}


def reset_after_restore() -> None:
    """SnapStart: what a snapshot froze is stale after restore. Drop the cached API Gateway Management clients
    (their pooled HTTPS connections and credentials) and make every thread build a new event loop."""
    global _loop_generation
    _management_clients.clear()
    _loop_generation += 1


def management_poster(settings: Settings, endpoint: str) -> ApiGatewayPoster:
    """One client per endpoint per container (building a boto3 client costs ~100 ms)."""
    if endpoint not in _management_clients:
        import boto3
        from botocore.config import Config

        _management_clients[endpoint] = boto3.client(
            "apigatewaymanagementapi",
            endpoint_url=endpoint,
            region_name=settings.aws_region,
            config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 2}),
        )
    return ApiGatewayPoster(_management_clients[endpoint])


def endpoint_from_event(settings: Settings, event: dict[str, Any]) -> str:
    if settings.ws_management_url:
        return settings.ws_management_url
    if not settings.on_aws:  # the local gateway serves the management API next to the HTTP API
        return f"{settings.public_api_url.rstrip('/')}/ws-management"
    ctx = event.get("requestContext", {})
    return f"https://{ctx.get('domainName')}/{ctx.get('stage')}"


def _refused(status: int, code: str, message: str) -> dict[str, Any]:
    """A refused ``$connect`` handshake, with the reason as an ``error`` frame body."""
    return {"statusCode": status, "body": wp.encode(wp.error(code, message)).decode()}


@dataclass
class Frame:
    """A parsed ``$default`` event."""

    connection_id: str
    conversation_id: str
    account_id: str
    endpoint: str
    received_at: float


class SocketSink:
    """TurnSink that broadcasts to the conversation's connections and asks DynamoDB before every post."""

    def __init__(
        self, service: WebSocketService, poster: Poster, conversation_id: str, turn_id: str, connections: set[str]
    ) -> None:
        self.service = service
        self.poster = poster
        self.conversation_id = conversation_id
        self.turn_id = turn_id
        self.connections = set(connections)
        self.speaking = False
        self.speaking_update: Future[bool] | None = None

    async def send(self, message: dict[str, Any]) -> bool:
        delivered = await asyncio.to_thread(self._broadcast, message)
        if delivered and message.get("type") == "audio" and not self.speaking:
            # The live state says "speaking" from the first audio the caller gets (thinking until then). Written
            # off the critical path; ``settle`` waits for it before the turn goes back to listening.
            self.speaking = True
            self.speaking_update = _background.submit(
                self.service.store.set_speaking, self.conversation_id, self.turn_id
            )
        return delivered > 0

    def settle(self) -> None:
        """Wait for the thinking -> speaking write (long done by the end of a turn), so it never lands after the
        turn's return to listening. Its failure only loses the label."""
        if self.speaking_update is not None:
            try:
                self.speaking_update.result()
            except Exception:
                log.warning("set_speaking failed for %s", self.turn_id, exc_info=True)

    def _broadcast(self, message: dict[str, Any]) -> int:
        data = wp.encode(message)
        delivered = 0
        for connection_id in sorted(self.connections):
            if self.poster.post(connection_id, data):
                delivered += 1
            else:
                self.connections.discard(connection_id)
                self.service.store.drop_connection(connection_id, self.conversation_id)
        return delivered

    async def cancelled(self) -> tuple[bool, int | None]:
        return await asyncio.to_thread(self.service.store.turn_status, self.conversation_id, self.turn_id)


class WebSocketService:
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
        recorder: Any = None,
        tokens: ConversationTokens | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.database = database
        self.store = store
        self.poster_factory = poster_factory or (lambda endpoint: management_poster(settings, endpoint))
        self.engines = engines or (
            lambda session, account_id, config: build_engines(settings, session, account_id, config, database)
        )
        self.usage_sink = usage_sink or (lambda session: billing_usage_sink(settings, session))
        self.credit_gate = credit_gate or (lambda session: billing_credit_gate(settings, session))
        self.recorder = recorder
        self.tokens = tokens or ConversationTokens(token_secret(settings), ttl_seconds=settings.ws_token_ttl_seconds)
        self.clock = clock
        # connection -> conversation never changes for a connection's life: warm containers skip the lookup.
        self._connections: dict[str, dict[str, str]] = {}
        # Per conversation, the live state this container saw last (a hint only: decisions are conditional writes).
        self._vad_hints: dict[str, LiveSession] = {}
        self._configs: dict[str, AgentConfig] = {}
        # Per conversation, the numbered audio frames this container handled since the last turn: seq -> the
        # bytes stored in DynamoDB, or None for a frame that was not stored. A caller's frames mostly reach one
        # warm container; when it saw every frame of an utterance, the turn skips the DynamoDB Query.
        self._heard: dict[str, dict[int, bytes | None]] = {}

    def _remember_vad(self, conversation_id: str, session: LiveSession) -> None:
        if len(self._vad_hints) > 10_000:
            self._vad_hints.pop(next(iter(self._vad_hints)))
        self._vad_hints[conversation_id] = session

    def _config(self, session: LiveSession) -> AgentConfig:
        """The conversation's agent config (a published version: immutable), parsed once per container."""
        config = self._configs.get(session.conversation_id)
        if config is None:
            if len(self._configs) > 10_000:
                self._configs.pop(next(iter(self._configs)))
            config = self._configs[session.conversation_id] = AgentConfig.model_validate(session.config)
        return config

    def _hear(self, conversation_id: str, seq: int, stored: bytes | None) -> None:
        frames = self._heard.get(conversation_id)
        if frames is None:
            if len(self._heard) > 1_000:
                self._heard.pop(next(iter(self._heard)))
            frames = self._heard[conversation_id] = {}
        if len(frames) >= HEARD_FRAMES_MAX:
            frames.clear()  # the cache is an optimisation: a gap only sends the turn back to DynamoDB
        frames[seq] = stored

    def _heard_audio(self, conversation_id: str, first: int, last: int) -> bytes | None:
        """The utterance's stored audio for seqs [first, last] if this container handled every one of them."""
        frames = self._heard.get(conversation_id)
        if frames is None or first < 0:
            return None
        try:
            return b"".join(pcm for pcm in (frames[seq] for seq in range(first, last + 1)) if pcm is not None)
        except KeyError:
            return None

    def _forget_heard(self, conversation_id: str, up_to: int) -> None:
        frames = self._heard.get(conversation_id)
        if frames:
            for seq in [q for q in frames if q <= up_to]:
                del frames[seq]

    def _remember(self, connection_id: str, known: dict[str, str]) -> None:
        if len(self._connections) > 10_000:
            self._connections.pop(next(iter(self._connections)))
        self._connections[connection_id] = known

    def _poster_for(self, session: LiveSession) -> Poster | None:
        """A poster to the API Gateway endpoint the session's connections came through (None if not known)."""
        return self.poster_factory(session.endpoint) if session.endpoint else None

    def conversations(self, session: Session) -> ConversationService:
        return ConversationService(
            session,
            self.settings,
            usage_sink=self.usage_sink(session),
            credit_gate=self.credit_gate(session),
            tokens=self.tokens,
            recorder=self.recorder,
        )

    # -- $connect / $disconnect ------------------------------------------------------------------------------------
    def handle_connection(self, event: dict[str, Any]) -> dict[str, Any]:
        ctx = event.get("requestContext", {})
        connection_id = ctx.get("connectionId", "")
        if ctx.get("eventType") == "DISCONNECT" or ctx.get("routeKey") == "$disconnect":
            self._connections.pop(connection_id, None)
            known = self.store.connection(connection_id)
            self.store.drop_connection(connection_id, known["conversation_id"] if known else None)
            return {"statusCode": 200}
        params = event.get("queryStringParameters") or {}
        try:
            claims = self.tokens.verify(params.get("token"), params.get("conversation_id"))
        except UnauthorizedError as exc:
            return _refused(401, exc.code, exc.message)
        conversation_id, account_id = claims["c"], claims["a"]
        with self.database.session() as session:
            conversation = session.scalar(
                select(Conversation).where(Conversation.id == conversation_id, Conversation.account_id == account_id)
            )
            if conversation is None:
                return _refused(403, "invalid_token", "unknown conversation")
            if conversation.status == "ended":
                return _refused(410, "conversation_ended", "conversation has ended")
            service = self.conversations(session)
            try:
                config = service.config_for(conversation)  # the agent may have been deleted since the start
            except AiriesError as exc:
                return _refused(exc.status_code, exc.code, exc.message)
            try:
                self.store.open_session(
                    conversation_id,
                    account_id=account_id,
                    agent_id=conversation.agent_id,
                    agent_version=conversation.agent_version,
                    config=config.model_dump(mode="json"),
                    connection_id=connection_id,
                    endpoint=endpoint_from_event(self.settings, event),
                )
            except SessionEnded:
                return _refused(410, "conversation_ended", "conversation has ended")
            service.mark_active(conversation)
        return {"statusCode": 200}

    # -- $default ------------------------------------------------------------------------------------------------
    def handle_message(self, event: dict[str, Any]) -> dict[str, Any]:
        ctx = event.get("requestContext", {})
        connection_id = ctx.get("connectionId", "")
        endpoint = endpoint_from_event(self.settings, event)
        poster = self.poster_factory(endpoint)
        known = self._connections.get(connection_id) or self.store.connection(connection_id)
        if known is not None:
            self._remember(connection_id, known)
        if known is None:
            poster.post(
                connection_id, wp.encode(wp.error("conversation_ended", "this connection has no live conversation"))
            )
            poster.close(connection_id)
            return {"statusCode": 200}
        frame_ctx = Frame(connection_id, known["conversation_id"], known["account_id"], endpoint, time.perf_counter())
        body = event.get("body")
        if event.get("isBase64Encoded") and body:
            import base64

            body = base64.b64decode(body)
        try:
            message = wp.parse_client_frame(body)
            if not isinstance(message, wp.AudioFrame) and not self.store.allow_control_frame(
                frame_ctx.conversation_id, self.settings.ws_control_frames_per_second
            ):
                raise wp.ProtocolError("rate_limited", "too many control frames; slow down")
            self._dispatch(frame_ctx, poster, message)
        except (wp.ProtocolError, AiriesError) as exc:
            poster.post(connection_id, wp.encode(wp.error(exc.code, exc.message, exc.details)))
        except Exception:
            # A bug or an outage (database, DynamoDB): the caller hears about it, the details stay in the log.
            log.exception("frame of %s failed", frame_ctx.conversation_id)
            try:
                poster.post(connection_id, wp.encode(wp.error("internal_error", "internal error; please retry")))
            except Exception:
                log.exception("could not report the failure to %s", connection_id)
        return {"statusCode": 200}

    def _dispatch(self, ctx: Frame, poster: Poster, message: Any) -> None:
        cid = ctx.conversation_id
        if isinstance(message, wp.AudioFrame):
            self.handle_audio_stream(ctx, poster, message)
            return
        session = self.store.get(cid)
        if session is None or session.state == ENDED:
            raise wp.ProtocolError("conversation_ended", "this conversation has ended")
        if isinstance(message, wp.PingFrame):
            poster.post(ctx.connection_id, wp.encode(wp.pong()))
            self.check_timers(session, poster)
        elif isinstance(message, wp.StartFrame):
            self._start(ctx, poster, session)
        elif isinstance(message, wp.TextFrame):
            self._after_first_message(session, poster)
            self.run_turn(session, poster, mode="text", text=message.text, eou_at=ctx.received_at)
        elif isinstance(message, wp.EndOfUtteranceFrame):
            if session.speech_ms <= 0:
                raise wp.ProtocolError("no_audio", "no speech was received since the last turn")
            self.run_turn(
                session,
                poster,
                mode="audio",
                expected_utt=session.utt,
                eou_at=ctx.received_at,
                end_seq=message.last_seq,
            )
        elif isinstance(message, wp.InterruptFrame):
            self.handle_interrupt(ctx, poster, message)
        elif isinstance(message, wp.EndFrame):
            self.end(cid, "caller_ended", poster, active_until=self.clock())

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

    def _owes_first_message(self, session: LiveSession) -> bool:
        config = self._config(session)
        if config.first_message_mode == FirstMessageMode.assistant_generates_first:
            return True
        return config.first_message_mode == FirstMessageMode.assistant_speaks_first and bool(config.first_message)

    def _speak_first_message(self, session: LiveSession, poster: Poster) -> None:
        """The agent's first message, once per conversation: whoever claims it (the first ``start``, or a text
        frame that got there first) speaks it. None once a turn has run (the caller spoke before any ``start``)."""
        if session.first_turn is not None or session.turn_seq > 0 or not self._owes_first_message(session):
            return
        turn_id = new_id("turn")
        if not self.store.claim_first_message(session.conversation_id, turn_id):
            return
        config = self._config(session)
        scripted = (
            config.first_message if config.first_message_mode == FirstMessageMode.assistant_speaks_first else None
        )
        try:
            self.run_turn(session, poster, mode="none", scripted=scripted, expected_utt=session.utt, turn_id=turn_id)
        finally:
            self.store.first_message_over(session.conversation_id)

    def _after_first_message(self, session: LiveSession, poster: Poster) -> None:
        """A typed turn comes after the agent's first message, never instead of it: the first message is spoken
        here if nobody has claimed it yet, or waited for (at most ``FIRST_MESSAGE_WAIT_S``) while another
        invocation speaks it. Caller audio is not held back: speaking over the first message interrupts it."""
        if session.first_done or not self._owes_first_message(session):
            return
        self._speak_first_message(session, poster)
        deadline = time.monotonic() + FIRST_MESSAGE_WAIT_S
        while time.monotonic() < deadline:
            current = self.store.get(session.conversation_id)
            if current is None or current.state == ENDED or current.first_turn is None or current.first_done:
                return  # over, or nobody speaks it (the caller spoke before any "start")
            time.sleep(0.05)

    def handle_audio_stream(self, ctx: Frame, poster: Poster, message: wp.AudioFrame) -> None:
        """One audio chunk: VAD, buffer, barge-in while the agent speaks, end of utterance by trailing silence."""
        pcm = message.pcm()
        chunk_ms = len(pcm) / wp.BYTES_PER_MS
        speech_ms, trailing = chunk_activity(pcm)
        seq = message.seq if message.seq is not None else int(time.time() * 1000) % 1_000_000_000
        cid = ctx.conversation_id
        hint = self._vad_hints.get(cid)
        if hint is not None and speech_ms == 0 and message.seq is not None and seq > hint.eou_seq:
            config = self._config(hint)
            need = config.endpointing.silence_ms
            if hint.state == LISTENING and hint.speech_ms >= MIN_SPEECH_MS and hint.silence_ms + chunk_ms >= need:
                # What this container saw last says this silent chunk ends the utterance: claim the turn in one
                # conditional write (the rule is checked on the stored counters) instead of counting first.
                self._vad_hints.pop(cid, None)
                claimed = self.run_turn(
                    hint,
                    poster,
                    mode="audio",
                    expected_utt=hint.utt,
                    endpointing_ms=hint.silence_ms + chunk_ms,
                    eou_at=ctx.received_at,
                    end_seq=seq,
                    tail=pcm,
                    vad=(MIN_SPEECH_MS, need - chunk_ms),
                )
                if claimed is not None:
                    _background.submit(self.store.store_chunk, cid, seq, pcm)
                    return
        try:  # the flood check is part of the counting write: a refused chunk changes no counter
            session = self.store.add_audio(cid, chunk_ms=chunk_ms, speech_ms=speech_ms, trailing_silence_ms=trailing)
        except AudioFlood as exc:
            raise wp.ProtocolError("rate_limited", "audio is arriving faster than real time") from exc
        if session is None:
            self._vad_hints.pop(cid, None)
            raise wp.ProtocolError("conversation_ended", "this conversation has ended")
        self._remember_vad(cid, session)
        # Silence before the caller starts speaking is not stored: DynamoDB writes for nothing. A late chunk of
        # an utterance whose turn already started (frames run concurrently) is stored for that turn.
        keep = speech_ms > 0 or session.speech_ms > 0 or seq <= session.eou_seq
        if seq <= session.eou_seq:
            self.store.store_chunk(cid, seq, pcm)
            return
        config = self._config(session)
        ends_utterance = (
            session.state == LISTENING
            and session.speech_ms >= MIN_SPEECH_MS
            and (
                session.silence_ms >= config.endpointing.silence_ms
                or session.speech_ms + session.silence_ms >= self.settings.ws_max_utterance_seconds * 1000
            )
        )
        client_endpointed = message.end_of_utterance and not ends_utterance
        if client_endpointed and session.speech_ms <= 0:
            raise wp.ProtocolError("no_audio", "no speech was received since the last turn")
        if ends_utterance or client_endpointed:
            # This chunk closes the utterance (server VAD, or the client's endpointing on its last chunk): hand it
            # to the turn directly, store it off the critical path.
            self._vad_hints.pop(cid, None)
            _background.submit(self.store.store_chunk, cid, seq, pcm)
            self.run_turn(
                session,
                poster,
                mode="audio",
                expected_utt=session.utt,
                endpointing_ms=session.silence_ms if ends_utterance else 0.0,
                eou_at=ctx.received_at,
                end_seq=seq,
                numbered=message.seq is not None,
                tail=pcm,
            )
            return
        if keep:
            self.store.store_chunk(cid, seq, pcm)
        if message.seq is not None:  # after the write: the cache never holds audio DynamoDB lacks
            self._hear(cid, seq, pcm if keep else None)
        if session.state in (THINKING, SPEAKING):
            threshold = config.interruption.voice_seconds * 1000
            if config.interruption.enabled and speech_ms > 0 and session.barge_ms >= max(threshold, 1):
                self.process_interruption(cid, None)
            return
        if session.state == LISTENING and speech_ms == 0 and session.speech_ms == 0:
            self.check_timers(session, poster)

    def process_interruption(self, conversation_id: str, played_ms: int | None) -> str | None:
        """Barge-in: mark the turn in flight cancelled; the invocation speaking it stops before its next post."""
        return self.store.cancel_turn(conversation_id, played_ms)

    # -- turns ---------------------------------------------------------------------------------------------------
    def run_turn(
        self,
        session: LiveSession,
        poster: Poster,
        *,
        mode: str,
        text: str | None = None,
        scripted: str | None = None,
        expected_utt: int | None = None,
        endpointing_ms: float = 0.0,
        eou_at: float | None = None,
        end_after: str | None = None,
        end_seq: int | None = None,
        numbered: bool = True,
        tail: bytes = b"",
        vad: tuple[float, float] | None = None,
        turn_id: str | None = None,
    ) -> TurnResult | None:
        eou_at = eou_at if eou_at is not None else time.perf_counter()
        cid = session.conversation_id
        turn_id = turn_id or new_id("turn")
        upper = end_seq - 1 if (end_seq is not None and tail) else end_seq
        heard = None
        if mode == "audio" and numbered and upper is not None:
            heard = self._heard_audio(cid, session.seg_start, upper)
        fetch = None
        if mode == "audio" and heard is None:  # read the buffered audio while the turn is claimed
            fetch = self._fetch_audio(cid, session.seg_start, upper, numbered)
        claim = _background.submit(
            self.store.begin_turn,
            cid,
            turn_id,
            expected_utt=expected_utt,
            caller_activity=mode != "none",
            end_seq=end_seq,
            vad=vad,
        )
        time.sleep(0)  # hand the GIL to the claim's thread so its request leaves before the database work below
        closed: str | None = None  # the conversation was ended or deleted elsewhere: so is the live session
        result: TurnResult | None = None
        sink: SocketSink | None = None
        try:
            config = self._config(session)
            with self.database.session() as db:
                # The database reads of the turn run while the claim is in flight (wasted only when another
                # invocation won the utterance): the claim's round trip is then off the critical path.
                service = self.conversations(db)
                try:
                    conversation = service.get(session.account_id, cid)
                except NotFoundError:
                    closed = "deleted"
                else:
                    if conversation.status == "ended":  # ended over REST (or by the sweeper) meanwhile
                        closed = conversation.end_reason or "api_request"
                if closed is None:
                    allowed, reason, _message = service.check_credit(session.account_id)
                    engines = self.engines(db, session.account_id, config)
                    previous = claim.result()
                    if previous is None:
                        return None  # another invocation already took this utterance, or the conversation ended
                    pcm = None
                    if mode == "audio":
                        if heard is not None and previous.seg_start != session.seg_start:
                            heard, fetch = None, self._fetch_audio(cid, previous.seg_start, upper, numbered)  # stale
                        last = upper if upper is not None else -1
                        if heard is not None:
                            pcm = heard
                        elif fetch is not None:
                            pcm, last = fetch.result()
                        pcm = (pcm or b"") + tail
                        if end_seq is None:
                            self.store.set_segment_start(cid, last + 1)
                        self._forget_heard(cid, end_seq if end_seq is not None else last)
                    sink = SocketSink(self, poster, cid, turn_id, previous.connections)
                    if not allowed:
                        mode, scripted, end_after = "none", OUT_OF_CREDIT_MESSAGE, reason or "insufficient_credits"
                    runner = TurnRunner(engines, out_chunk_ms=self.settings.ws_out_chunk_ms)
                    inp = TurnInput(
                        turn_id=turn_id,
                        seq=previous.turn_seq + 1,
                        mode=mode,
                        account_id=previous.account_id,
                        conversation_id=cid,
                        pcm=pcm,
                        text=text,
                        endpointing_ms=endpointing_ms,
                        eou_at=eou_at,
                        scripted_reply=scripted,
                    )
                    if mode == "audio" and not pcm:
                        raise wp.ProtocolError("no_audio", "no audio was buffered for this utterance")
                    # History is read from the database on a thread while the speech is transcribed.
                    result = run_async(runner.run(config, lambda: service.history_messages(cid), inp, sink))
                    if result.status not in ("no_speech",):
                        try:
                            service.record_turn(conversation, result)
                        except ConflictError as exc:  # the conversation ended before this turn started
                            if exc.code != "conversation_ended":
                                raise
                            closed = self._stored_end_reason(db, session.account_id, cid)
                        except NotFoundError:  # deleted while the turn ran
                            closed = "deleted"
        finally:
            # Whatever happened once the utterance was claimed (a failed read, engine or config, a provider
            # outage, a refused turn), the session goes back to listening: stuck in "thinking", the server VAD
            # would never end the next utterance and the silence timer would never fire.
            if sink is not None:
                sink.settle()
            stored = result is not None and result.status == "completed" and closed is None
            record = spoken_record(turn_id, result.spoken) if stored and result is not None else None
            finished = self._abandon(claim, cid, turn_id, record)
        if closed is not None:
            # No turn_end: the turn was not stored. The caller gets "ended" and the socket closes.
            self.end(cid, closed, poster)
            return None
        assert result is not None and sink is not None
        sink_frame = wp.turn_end(
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
            sink._broadcast(sink_frame)
        if finished is not None and finished.cancelled == turn_id and finished.played_ms is not None and stored:
            # An interrupt landed after the turn's last barge-in check: cut it now, as one after turn_end would be.
            self._cut_finished_turn(finished, turn_id, poster)
        ending = end_after or result.end_call
        if ending:
            self.end(cid, ending, poster, active_until=self.clock())
        return result

    @staticmethod
    def _stored_end_reason(db: Session, account_id: str, conversation_id: str) -> str:
        reason = db.scalar(
            select(Conversation.end_reason).where(
                Conversation.id == conversation_id, Conversation.account_id == account_id
            )
        )
        return reason or "api_request"

    def _fetch_audio(self, cid: str, first: int, upper: int | None, numbered: bool) -> Future[tuple[bytes, int]]:
        return _background.submit(self.store.utterance_audio, cid, first, upper, wait_s=0.6 if numbered else 0.0)

    def _abandon(
        self, claim: Future[LiveSession | None], cid: str, turn_id: str, spoken: str | None = None
    ) -> LiveSession | None:
        """The turn is over, or failed: back to listening if the claim went through (a no-op when a newer turn
        took over or the conversation ended). Returns the session as the turn left it (None: not this turn's)."""
        try:
            claimed = claim.result() is not None
        except Exception:
            return None
        return self.store.finish_turn(cid, turn_id, spoken) if claimed else None

    # -- barge-in ------------------------------------------------------------------------------------------------
    def handle_interrupt(self, ctx: Frame, poster: Poster, message: wp.InterruptFrame) -> None:
        """An ``interrupt`` frame. The turn being posted stops before its next frame (its invocation answers
        ``interrupted``). A turn already posted whole (the client plays in real time, so it interrupts after
        ``turn_end``) is cut to ``played_ms`` until the next turn starts; naming an older turn is an error."""
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
            self._cut_finished_turn(cut, target, poster)

    def _cut_finished_turn(self, session: LiveSession, turn_id: str, poster: Poster | None) -> None:
        """Keep only what the caller heard of a finished turn (``session.played_ms`` of its audio): the stored
        agent text, and so the next turn's LLM history, then tell the connections (``interrupted``)."""
        sentences = spoken_sentences(session.spoken, turn_id)
        if sentences is None:
            return
        heard = heard_reply(sentences, session.played_ms)
        with self.database.session() as db:
            turn = self.conversations(db).cut_turn(session.account_id, session.conversation_id, turn_id, heard)
            if turn is None:
                return
            heard = turn.agent_text or ""  # a turn cut before keeps its first cut
        self.broadcast_to_conversation(session.conversation_id, wp.interrupted(turn_id, heard), poster)

    # -- timers --------------------------------------------------------------------------------------------------
    def check_timers(self, session: LiveSession, poster: Poster | None = None) -> str | None:
        """Max duration and silence timeout (one reminder, then end). Returns what it did, if anything."""
        if session.state == ENDED:
            return None
        config = self._config(session)
        now = self.clock()
        poster = poster or self._poster_for(session)
        if session.started_at and now - session.started_at >= config.max_duration_seconds:
            self.end(session.conversation_id, "max_duration", poster)
            return "max_duration"
        if session.state != LISTENING or not session.last_activity:
            return None
        if now - session.last_activity < config.silence_timeout_seconds:
            return None
        if not session.reminder_sent and config.silence_reminder_message:
            if self.store.mark_reminded(session.conversation_id, session.last_activity) and poster is not None:
                fresh = self.store.get(session.conversation_id)
                if fresh is not None:
                    self.run_turn(
                        fresh, poster, mode="none", scripted=config.silence_reminder_message, expected_utt=fresh.utt
                    )
            return "reminder"
        self.end(session.conversation_id, "silence_timeout", poster)
        return "silence_timeout"

    def sweep(self) -> dict[str, int]:
        """Scheduled: timers of every live session, sessions abandoned by their caller (no connection came back
        within the resume window) or whose conversation was ended or deleted elsewhere, stale DB rows. One failing
        session never stops the sweep (counted as ``errors``, logged)."""
        done: dict[str, int] = {}

        def count(action: str | None) -> None:
            if action:
                done[action] = done.get(action, 0) + 1

        now = self.clock()
        sessions = self.store.active_sessions()
        closed = self._closed_elsewhere([s.conversation_id for s in sessions])
        for session in sessions:
            try:
                if session.conversation_id in closed:
                    reason = closed[session.conversation_id]
                    self.end(session.conversation_id, reason, None)
                    count("closed_elsewhere")
                elif session.caller_gone(now, self.settings.ws_resume_window_seconds):
                    self.end(session.conversation_id, "caller_disconnected", None)
                    count("caller_disconnected")
                else:
                    count(self.check_timers(session))
            except Exception:
                log.exception("sweep: session %s failed", session.conversation_id)
                count("errors")
        # Conversations never connected (token expired) or whose live state expired: close the rows.
        cutoff_created = utcnow().timestamp() - self.settings.ws_token_ttl_seconds - 60
        cutoff_active = utcnow().timestamp() - self.settings.ws_state_ttl_seconds
        with self.database.session() as db:
            rows = db.execute(
                select(
                    Conversation.account_id,
                    Conversation.id,
                    Conversation.status,
                    Conversation.channel,
                    Conversation.started_at,
                )
                .where(Conversation.status.in_(("created", "active")))
                .limit(500)
            ).all()
        for account_id, conversation_id, status, channel, started_at in rows:
            started = started_at.timestamp()
            if status == "created" and started < cutoff_created and channel == "websocket":
                reason = "never_connected"
            elif status == "active" and started < cutoff_active:
                reason = "stale"
            else:
                continue
            try:  # one unit of work per row: a failure leaves the others to end
                with self.database.session() as db:
                    self.conversations(db).end_conversation(account_id, conversation_id, reason)
                count(reason)
            except Exception:
                log.exception("sweep: ending %s failed", conversation_id)
                count("errors")
        return done

    def _closed_elsewhere(self, conversation_ids: list[str]) -> dict[str, str]:
        """Of these live conversations, those whose row is ended (-> its end reason) or gone (-> ``deleted``): a
        REST end or delete whose live-session close did not get through is caught up within one sweep."""
        if not conversation_ids:
            return {}
        found: dict[str, tuple[str, str | None]] = {}
        try:
            with self.database.session() as db:
                for start in range(0, len(conversation_ids), 500):
                    batch = conversation_ids[start : start + 500]
                    for cid, status, reason in db.execute(
                        select(Conversation.id, Conversation.status, Conversation.end_reason).where(
                            Conversation.id.in_(batch)
                        )
                    ):
                        found[cid] = (status, reason)
        except Exception:
            log.exception("sweep: could not read the conversations of the live sessions")
            return {}
        closed: dict[str, str] = {}
        for cid in conversation_ids:
            if cid not in found:
                closed[cid] = "deleted"
            elif found[cid][0] == "ended":
                closed[cid] = found[cid][1] or "api_request"
        return closed

    # -- end -----------------------------------------------------------------------------------------------------
    def end(
        self, conversation_id: str, reason: str, poster: Poster | None, *, active_until: float | None = None
    ) -> bool:
        """End once: live state, the DB row (bills the minutes), an ``ended`` frame, then close the sockets.

        Minutes are billed to ``active_until`` (epoch seconds): the caller's last activity on the live session
        unless given (an explicit hang-up or end-call bills to now). A conversation deleted meanwhile, or a
        database failure, still ends the live session and closes the sockets (the summary is then zero, and the
        sweeper closes a row left open); it never raises past the live-state write.
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
            with self.database.session() as db:
                conversation = self.conversations(db).end_conversation(
                    session.account_id,
                    conversation_id,
                    reason,
                    active_until=datetime.fromtimestamp(until, UTC) if until else None,
                )
                summary = ended_summary(conversation)
        except Exception:
            log.exception("ending conversation %s in the database failed", conversation_id)
        self._notify_ended(session, reason, summary, poster)
        return True

    def close_live_session(self, conversation_id: str, reason: str, conversation: Conversation | None = None) -> bool:
        """The conversation was ended or deleted outside the socket (REST): end its live session if one exists,
        send ``ended`` (summary from ``conversation``, the row the caller just ended) and close the sockets. The
        caller ends the row itself. False when there was no live session to end."""
        session = self.store.end(conversation_id, reason)
        if session is None:
            return False
        self._notify_ended(session, reason, ended_summary(conversation), None)
        return True

    def holding_callers(self, conversation_ids: list[str]) -> dict[str, bool]:
        """Of these conversations, those with a live session -> whether their caller still holds the call: a
        connection is open, or the last one dropped within the resume window. An ended live session holds
        nothing. Conversations without a live session are left out (the caller decides about them)."""
        now = self.clock()
        window = self.settings.ws_resume_window_seconds
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

    def _notify_ended(self, session: LiveSession, reason: str, summary: dict[str, Any], poster: Poster | None) -> None:
        try:
            poster = poster or self._poster_for(session)
        except Exception:
            log.exception("no poster for %s", session.conversation_id)
            poster = None
        data = wp.encode(wp.ended(reason, conversation_id=session.conversation_id, **summary))
        for connection_id in sorted(session.connections):
            self._connections.pop(connection_id, None)
            try:
                if poster is not None:
                    poster.post(connection_id, data)
                    poster.close(connection_id)
                self.store.drop_connection(connection_id)
            except Exception:  # one broken connection must not keep the others open
                log.exception("closing connection %s of %s failed", connection_id, session.conversation_id)

    def _live_sink(self, conversation_id: str, turn_id: str, poster: Poster | None) -> SocketSink | None:
        """A sink to the live session's connections; None without a live session or a way to post to it."""
        session = self.store.get(conversation_id)
        if session is None:
            return None
        poster = poster or self._poster_for(session)
        if poster is None:
            return None
        return SocketSink(self, poster, conversation_id, turn_id, session.connections)

    def broadcast_to_conversation(
        self, conversation_id: str, message: dict[str, Any], poster: Poster | None = None
    ) -> int:
        """Send a frame to every connection of a conversation; a 410 drops that connection only."""
        sink = self._live_sink(conversation_id, "-", poster)
        return sink._broadcast(message) if sink is not None else 0
