"""What every live module shares: the dependencies of a live call, per-container caches, and the way out to the
caller (``post_to_connection`` through the API Gateway Management API).

Read the live side in this order: ``sessions`` (the live state in DynamoDB), this module, ``lifecycle`` (ending a
call), ``barge_in``, ``orchestrator`` (one turn: claim, assemble audio, run, record, end), ``sweeping`` (timers and
abandoned calls), ``endpointing`` (caller audio -> end of utterance), ``connections`` ($connect and $disconnect),
``socket_edge`` (the frames), ``relay`` (a phone carrier's messages), then ``live`` (the service $default builds)
and ``live_sessions`` (the facade REST and the sweeper use).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar

from sqlalchemy.orm import Session

from airies.agents.config import AgentConfig, FirstMessageMode
from airies.conversations import protocol as wp
from airies.conversations.events import EventPublisher
from airies.conversations.relay_protocol import RelayPoster
from airies.conversations.service import (
    ConversationService,
    ConversationTokens,
    CreditGate,
    UsageSink,
    billing_credit_gate,
    billing_usage_sink,
    token_secret,
)
from airies.conversations.sessions import ENDED, ControlFlood, LiveSession, SessionStore
from airies.conversations.turn_metrics import TurnMetrics
from airies.core.aio import reset_event_loops
from airies.core.config import Settings
from airies.core.database import Database

if TYPE_CHECKING:  # the engines are built by the parts that run turns (``live_sessions``), not here
    from airies.conversations.turns import TurnEngines

log = logging.getLogger(__name__)
T = TypeVar("T")

# Work overlapped with the invocation's thread: buffer writes, claiming a turn while the database is read, the
# audio read. Threads start lazily; the local gateway runs many invocations per process, hence more than 2.
background = ThreadPoolExecutor(max_workers=8, thread_name_prefix="voice-io")


# --- posting to the caller -----------------------------------------------------------------------------------------
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
    (their pooled HTTPS connections and credentials) and make every thread build a new event loop (the usage
    publishers' SQS clients are dropped by their own restore hook, in ``service``)."""
    _management_clients.clear()
    reset_event_loops()


def management_poster(settings: Settings, endpoint: str) -> ApiGatewayPoster:
    """One client per endpoint per container (building a boto3 client costs ~100 ms)."""
    if endpoint not in _management_clients:
        import boto3  # lazy: boto3 costs ~100 ms to import
        from botocore.config import Config

        _management_clients[endpoint] = boto3.client(
            "apigatewaymanagementapi",
            endpoint_url=endpoint,
            region_name=settings.aws_region,
            config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 2}),
        )
    return ApiGatewayPoster(_management_clients[endpoint])


def speaking(poster: Poster, protocol: str | None) -> Poster:
    """``poster`` for a connection that speaks ``protocol`` (None: protocol v1, as is)."""
    return RelayPoster(poster) if protocol else poster


def endpoint_from_event(settings: Settings, event: dict[str, Any]) -> str:
    if settings.ws_management_url:
        return settings.ws_management_url
    if not settings.on_aws:  # the local gateway serves the management API next to the HTTP API
        return f"{settings.public_api_url.rstrip('/')}/ws-management"
    ctx = event.get("requestContext", {})
    return f"https://{ctx.get('domainName')}/{ctx.get('stage')}"


@dataclass
class Frame:
    """A parsed ``$default`` event."""

    connection_id: str
    conversation_id: str
    account_id: str
    endpoint: str
    received_at: float


class RemainingTime(Protocol):
    """The Lambda context's clock: what is left of the invocation."""

    def get_remaining_time_in_millis(self) -> int: ...


@dataclass(frozen=True)
class InvocationDeadline:
    """Passed once less than ``margin_ms`` is left of the invocation, by the Lambda context's own clock (asked at
    every check, so a slow start of the turn cannot move it)."""

    context: RemainingTime
    margin_ms: int

    def passed(self) -> bool:
        return self.context.get_remaining_time_in_millis() <= self.margin_ms


# The invocation's deadline, set by the voice handler from the Lambda context: past it a turn posts nothing more and
# ends as cut (interrupted, with what was sent), so it is stored, billed and released before the function times out
# instead of being killed mid-reply.
invocation_deadline: ContextVar[InvocationDeadline | None] = ContextVar("invocation_deadline", default=None)


@contextmanager
def turn_deadline(context: RemainingTime | None, margin_ms: int) -> Iterator[None]:
    """Turns started inside stop when ``context`` has less than ``margin_ms`` left (None: no deadline)."""
    token = invocation_deadline.set(None if context is None else InvocationDeadline(context, margin_ms))
    try:
        yield
    finally:
        invocation_deadline.reset(token)


class SocketSink:
    """TurnSink that broadcasts to the conversation's connections and asks DynamoDB before every post.

    ``connections``: the connections, or the turn's claim still in flight (its old values hold them): the first
    post waits for it, and a lost claim (None) posts nothing (``lost``). ``start_claim``: called before that wait
    (a claim deferred until the turn's first post)."""

    def __init__(
        self,
        store: SessionStore,
        poster: Poster,
        conversation_id: str,
        turn_id: str,
        connections: set[str] | Future[LiveSession | None],
        start_claim: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.poster = poster
        self.conversation_id = conversation_id
        self.turn_id = turn_id
        self.claim = connections if isinstance(connections, Future) else None
        self.start_claim = start_claim
        self.connections = set() if isinstance(connections, Future) else set(connections)
        self.lost = False
        self.speaking = False
        self.speaking_update: Future[bool] | None = None
        self.deadline = invocation_deadline.get()
        self.out_of_time = False  # the turn was cut at the deadline (not by the caller)

    async def send(self, message: dict[str, Any]) -> bool:
        delivered = await asyncio.to_thread(self.broadcast, message)
        if delivered and message.get("type") == "audio" and not self.speaking:
            # The live state says "speaking" from the first audio the caller gets (thinking until then). Written
            # off the critical path; ``settle`` waits for it before the turn goes back to listening.
            self.speaking = True
            self.speaking_update = background.submit(self.store.set_speaking, self.conversation_id, self.turn_id)
        return delivered > 0

    def settle(self) -> None:
        """Wait for the thinking -> speaking write (long done by the end of a turn), so it never lands after the
        turn's return to listening. Its failure only loses the label."""
        if self.speaking_update is not None:
            try:
                self.speaking_update.result()
            except Exception:
                log.warning("set_speaking failed for %s", self.turn_id, exc_info=True)

    def broadcast(self, message: dict[str, Any]) -> int:
        """Post to every connection; a 410 drops that connection only. Returns how many got it."""
        if self.claim is not None:
            if self.start_claim is not None:
                self.start_claim()
            claimed, self.claim = self.claim.result(), None
            if claimed is None:
                self.lost = True
            else:
                self.connections = set(claimed.connections)
        if self.lost:
            return 0
        # A relay connection's poster translates the frame before it is encoded; others get it encoded once.
        relay = self.poster if isinstance(self.poster, RelayPoster) else None
        data = wp.encode(message) if relay is None else b""
        delivered = 0
        for connection_id in sorted(self.connections):
            if (
                relay.post_message(connection_id, message)
                if relay is not None
                else self.poster.post(connection_id, data)
            ):
                delivered += 1
            else:
                self.connections.discard(connection_id)
                self.store.drop_connection(connection_id, self.conversation_id)
        return delivered

    async def cancelled(self) -> tuple[bool, int | None]:
        if self.deadline is not None and self.deadline.passed():
            self.out_of_time = True
            return True, None  # out of invocation time: cut here, as a barge-in would
        return await asyncio.to_thread(self.store.turn_status, self.conversation_id, self.turn_id)


# --- per-container caches -------------------------------------------------------------------------------------------
HEARD_FRAMES_MAX = 4000  # per conversation (~17 min of 250 ms frames): past it the container stops keeping audio


class BoundedCache(dict[str, T]):
    """A dict that forgets its oldest entry past ``limit`` (hints only: every decision is a conditional write)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: str, value: T) -> T:
        if key not in self and len(self) >= self.limit:
            self.pop(next(iter(self)))
        self[key] = value
        return value


class HeardFrames:
    """Per conversation, the numbered audio frames this container handled since the last turn: seq -> the bytes
    stored in DynamoDB, or None for a frame that was not stored. A caller's frames mostly reach one warm container;
    when it saw every frame of an utterance, the turn skips the DynamoDB Query."""

    def __init__(self) -> None:
        self.frames: BoundedCache[dict[int, bytes | None]] = BoundedCache(1_000)

    def hear(self, conversation_id: str, seq: int, stored: bytes | None) -> None:
        frames = self.frames.get(conversation_id)
        if frames is None:
            frames = self.frames.put(conversation_id, {})
        if len(frames) >= HEARD_FRAMES_MAX:
            frames.clear()  # the cache is an optimisation: a gap only sends the turn back to DynamoDB
        frames[seq] = stored

    def audio(self, conversation_id: str, first: int, last: int) -> bytes | None:
        """The utterance's stored audio for seqs [first, last] if this container handled every one of them."""
        frames = self.frames.get(conversation_id)
        if frames is None or first < 0:
            return None
        try:
            return b"".join(pcm for pcm in (frames[seq] for seq in range(first, last + 1)) if pcm is not None)
        except KeyError:
            return None

    def stored(self, conversation_id: str, first: int, last: int) -> list[int]:
        """Of seqs [first, last], those this container stored in DynamoDB."""
        frames = self.frames.get(conversation_id) or {}
        return [seq for seq in range(max(first, 0), last + 1) if frames.get(seq) is not None]

    def forget(self, conversation_id: str, up_to: int) -> None:
        frames = self.frames.get(conversation_id)
        if frames:
            for seq in [q for q in frames if q <= up_to]:
                del frames[seq]

    def clear(self) -> None:
        self.frames.clear()


# --- the shared dependencies ----------------------------------------------------------------------------------------
EngineFactory: TypeAlias = "Callable[[Session, str, AgentConfig], TurnEngines]"


def no_turns(session: Session, account_id: str, config: AgentConfig) -> TurnEngines:
    """The engine factory of a runtime that runs no turns (the connection handlers')."""
    raise RuntimeError("this live runtime was built without turn engines")


class Recorder(Protocol):
    def store_turn(self, conversation: Any, result: Any) -> dict[str, Any]: ...

    def presign(self, stored: dict[str, Any], expires_in: int) -> str: ...


class LiveRuntime:
    """The dependencies of a live call (injected: tests and the benchmark pass doubles) and what a warm container
    remembers between invocations."""

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
        self.settings = settings
        self.publisher = publisher
        self.turn_metrics = turn_metrics
        self.database = database
        self.store = store
        self.poster_factory: Callable[[str], Poster] = poster_factory or (
            lambda endpoint: management_poster(settings, endpoint)
        )
        self.engines: EngineFactory = engines or no_turns
        self.usage_sink = usage_sink or (lambda session: billing_usage_sink(settings, session))
        self.credit_gate = credit_gate or (lambda session: billing_credit_gate(settings, session))
        self.recorder = recorder
        self._tokens = tokens
        self.clock = clock
        # connection -> conversation never changes for a connection's life: warm containers skip the lookup.
        self.connections: BoundedCache[dict[str, str]] = BoundedCache(10_000)
        self.configs: BoundedCache[AgentConfig] = BoundedCache(10_000)
        # Per conversation, the live state this container's last control frame read (a hint: a typed turn's
        # claim is still a conditional write, and the frame's count goes with it).
        self.live_hints: BoundedCache[LiveSession] = BoundedCache(10_000)
        # (account, agent, version) -> (the factory that built them, expiry on time.monotonic(), the engines)
        self.built_engines: BoundedCache[tuple[EngineFactory, float, TurnEngines]] = BoundedCache(256)
        self.heard = HeardFrames()
        # Per conversation, the read of its config item a frame started (``prefetch_config``) and ``config`` takes.
        self.config_reads: BoundedCache[Future[dict[str, Any] | None]] = BoundedCache(10_000)
        self._config_reads_lock = threading.Lock()

    @property
    def tokens(self) -> ConversationTokens:
        """Built on first use: ending a call or sweeping never needs the token secret."""
        if self._tokens is None:
            secret = token_secret(self.settings)
            self._tokens = ConversationTokens(secret, ttl_seconds=self.settings.ws_token_ttl_seconds)
        return self._tokens

    def prefetch_config(self, conversation_id: str) -> None:
        """Start reading the conversation's config item unless this container has it: the frame's first DynamoDB
        call (its count, its claim) then runs beside the read instead of before it."""
        if conversation_id in self.configs:
            return
        with self._config_reads_lock:
            if conversation_id not in self.config_reads:
                self.config_reads.put(conversation_id, background.submit(self.store.config, conversation_id))

    def config(self, session: LiveSession) -> AgentConfig:
        """The conversation's agent config (a published version: immutable), read and parsed once per container."""
        config = self.configs.get(session.conversation_id)
        if config is None:
            with self._config_reads_lock:
                started = self.config_reads.pop(session.conversation_id, None)
            stored = session.config or (
                started.result() if started is not None else self.store.config(session.conversation_id)
            )
            if stored is None:  # expired with the call's state: the call is over
                raise wp.ProtocolError("conversation_ended", "this conversation has ended")
            config = self.configs.put(session.conversation_id, AgentConfig.model_validate(stored))
        return config

    def counted_session(self, conversation_id: str, limit: int) -> LiveSession:
        """Count one control frame against the flood guard (``limit`` per second) and return the live state the
        count read (one write, no separate read), kept as this container's hint. ``ProtocolError``: ``rate_limited``
        for a flood, ``conversation_ended`` when the call is over."""
        try:
            session = self.store.count_control_frame(conversation_id, limit)
        except ControlFlood as exc:
            raise wp.ProtocolError("rate_limited", "too many control frames; slow down") from exc
        if session is None or session.state == ENDED:
            self.live_hints.pop(conversation_id, None)
            raise wp.ProtocolError("conversation_ended", "this conversation has ended")
        return self.live_hints.put(conversation_id, session)

    def owes_first_message(self, session: LiveSession) -> bool:
        """The agent speaks first: a fixed first message, or one the model writes."""
        config = self.config(session)
        if config.first_message_mode == FirstMessageMode.assistant_generates_first:
            return True
        return config.first_message_mode == FirstMessageMode.assistant_speaks_first and bool(config.first_message)

    def typed_turn_hint(self, conversation_id: str, *, first_message: bool = True) -> LiveSession | None:
        """The live state this container saw last, if a typed turn can start from it without reading it again:
        the call was live and (``first_message``: the turn comes after the agent's first message) owes no first
        message before the turn (both only ever become true). A carrier's relay speaks its greeting itself and
        passes ``first_message=False``: its prompts never wait for one."""
        hint = self.live_hints.get(conversation_id)
        if hint is None or hint.state == ENDED:
            return None
        if first_message and not hint.first_done and self.owes_first_message(hint):
            return None
        return hint

    def turn_engines(self, db: Session, session: LiveSession, config: AgentConfig) -> TurnEngines:
        """A turn's engines, built once per agent version and account per container and kept
        ``ws_engines_ttl_seconds`` (the router's and the SDKs' clients, and their open connections, with them).
        Built again when the factory was swapped (tests) or the entry expired."""
        # Per thread too: the engines remember which TTS provider spoke last, so turns running at once (the local
        # gateway's threads; a Lambda container runs one) never share them.
        key = f"{threading.get_ident()}|{session.account_id}|{session.agent_id}|{session.agent_version}"
        factory = self.engines
        now = time.monotonic()
        cached = self.built_engines.get(key)
        if cached is not None and cached[0] is factory and now < cached[1]:
            start_turn = getattr(cached[2].tts, "start_turn", None)
            if callable(start_turn):
                start_turn()
            return cached[2]
        engines = factory(db, session.account_id, config)
        self.built_engines.put(key, (factory, now + self.settings.ws_engines_ttl_seconds, engines))
        return engines

    def poster_for(self, session: LiveSession) -> Poster | None:
        """A poster to the API Gateway endpoint the session's connections came through (None if not known); for a
        carrier's relay, one that speaks the relay's messages."""
        if not session.endpoint:
            return None
        return speaking(self.poster_factory(session.endpoint), session.protocol)

    def conversations(self, session: Session) -> ConversationService:
        return ConversationService(
            session,
            self.settings,
            usage_sink=self.usage_sink(session),
            credit_gate=self.credit_gate(session),
            tokens=self._tokens,
            recorder=self.recorder,
            publisher=self.publisher,
        )
