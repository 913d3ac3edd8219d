"""Airies side: a long-lived worker the orchestrator drives over stdin/stdout (one JSON object per line).

``python -m benchmarks.vs_pipecat.airies_driver <fake LLM base URL>`` from the checkout, under the project's venv.
Built like ``benchmarks/bench_conversation.py`` (one warm "container"): the real ``functions/voice_ws/default.py``
handler through ``load_voice_handlers``, DynamoDB, the API Gateway Management API and SQS from ``python -m
moto.server`` in a separate process, SQLite, and the ``WebSocketService`` defaults for the rest: the real credit
gate and the real usage sink (to moto's SQS, as on AWS). The engines are the production ones (``build_engines``):
the agent's LLM is the operator's custom OpenAI-compatible endpoint (``AIRIES_LLM_CUSTOM_BASE_URL`` = the shared
fake server), i.e. the real router, provider and ``openai`` SDK over loopback HTTP. Only the speech engines are
doubles behind their interfaces: the TTS (100 ms to the first chunk, then the sentence's silent PCM at once, as
Pipecat's) and, on the audio route, the STT (no latency: neither system has STT on the critical path).

Routes: ``text`` (a ``text`` client frame) and ``audio`` (real speech in 250 ms numbered ``audio`` frames, then the
client's ``end_of_utterance`` frame). t0 = that last frame handed to the handler; t1 = the first ``audio`` frame's
``post_to_connection`` returned (moto has it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

# The protocol channel is the original stdout; the handler's logs and anything else printed go to stderr.
_PROTO = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402

from airies.accounts.service import AccountService  # noqa: E402
from airies.agents.schemas import AgentCreate  # noqa: E402
from airies.agents.service import AgentService  # noqa: E402
from airies.conversations import service as conversations_service  # noqa: E402
from airies.conversations.engines import build_engines  # noqa: E402
from airies.conversations.live import ApiGatewayPoster, WebSocketService  # noqa: E402
from airies.conversations.schemas import ConversationCreate  # noqa: E402
from airies.conversations.service import ConversationService, ConversationTokens  # noqa: E402
from airies.conversations.sessions import SessionStore  # noqa: E402
from airies.core.config import Settings  # noqa: E402
from airies.core.database import Database  # noqa: E402
from airies.local.ws_gateway import load_voice_handlers  # noqa: E402
from airies.migrations.runner import upgrade_head  # noqa: E402
from benchmarks.bench_conversation import critical_aws, moto_server, spoken  # noqa: E402
from benchmarks.vs_pipecat.reply import TTS_MS  # noqa: E402
from tests.doubles.conv_engines import FakeSTT  # noqa: E402

SYSTEM = "You are a helpful customer-support voice agent."
CHUNK_MS = 250
TABLE = "bench-ws-state"
DOMAIN = "bench.execute-api.us-east-1.amazonaws.com"


def send(obj: Any) -> None:
    _PROTO.write(json.dumps(obj, default=str) + "\n")
    _PROTO.flush()


class Timeline:
    """One turn's events: posts (by frame type), the LLM call, TTS calls and first chunks, provider waits, AWS calls."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.posts: list[tuple[int, int, str]] = []  # (start ns, end ns, frame type)
        self.errors: list[str] = []
        self.llm_calls: list[int] = []
        self.tts_calls: list[int] = []
        self.tts_first_chunks: list[int] = []
        self.waits: list[tuple[float, float]] = []  # provider waits (perf_counter s): AWS calls inside are hidden
        self.sdk_calls: list[tuple[float, float, str, str]] = []


class SilentTTS:
    """TTSProvider double: ``ttfb_s`` to the first chunk, then ``sec_per_char`` of silent 16 kHz PCM16 per character
    in 100 ms chunks, without pacing (as the Pipecat side's)."""

    name = "elevenlabs"  # priced like the agent's configured voice

    def __init__(self, timeline: Timeline, ttfb_s: float = TTS_MS / 1000, sec_per_char: float = 0.06) -> None:
        self.timeline, self.ttfb_s, self.sec_per_char = timeline, ttfb_s, sec_per_char

    async def synthesize(self, text: str, options: Any) -> AsyncIterator[bytes]:
        self.timeline.tts_calls.append(time.perf_counter_ns())
        start = time.perf_counter()
        await asyncio.sleep(self.ttfb_s)
        total, sent = int(len(text) * self.sec_per_char * 16000) * 2, 0
        while sent < total:
            if sent == 0:
                self.timeline.tts_first_chunks.append(time.perf_counter_ns())
                self.timeline.waits.append((start, time.perf_counter()))
            size = min(3200, total - sent)
            yield b"\x00" * size
            sent += size

    async def list_voices(self) -> list[Any]:
        return []


class TimingPoster:
    """The real API Gateway poster (boto3 -> moto), timing every post."""

    def __init__(self, inner: ApiGatewayPoster, timeline: Timeline) -> None:
        self.inner, self.timeline = inner, timeline

    def post(self, connection_id: str, data: bytes) -> bool:
        start = time.perf_counter_ns()
        ok: bool = self.inner.post(connection_id, data)
        end = time.perf_counter_ns()
        head = data[:40]
        kind = head.split(b'"type":"', 1)[1].split(b'"', 1)[0].decode() if b'"type":"' in head else "?"
        self.timeline.posts.append((start, end, kind))
        if kind == "error":
            self.timeline.errors.append(data.decode()[:300])
        return ok

    def close(self, connection_id: str) -> None:
        self.inner.close(connection_id)


class Airies:
    def __init__(self, base_url: str, stack: contextlib.ExitStack) -> None:
        for name, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench")):
            os.environ.setdefault(name, value)
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
        os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
        for vendor in ("OPENAI", "GROQ", "DEEPINFRA"):  # only the custom endpoint is configured
            os.environ.pop(f"AIRIES_{vendor}_API_KEY", None)
        # The operator settings docs/llm.md gives for a custom OpenAI-compatible endpoint.
        os.environ["AIRIES_LLM_CUSTOM_BASE_URL"] = base_url
        os.environ["AIRIES_LLM_CUSTOM_MODELS"] = "fake-model"
        os.environ["AIRIES_LLM_CUSTOM_API_KEY"] = "sk-local-not-used"

        endpoint = stack.enter_context(moto_server())
        self.timeline = timeline = Timeline()
        sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=endpoint)
        queue_url = sqs.create_queue(QueueName="bench-usage")["QueueUrl"]
        tmp = tempfile.mkdtemp(prefix="bench-vs-pipecat-")
        url = f"sqlite:///{tmp}/bench.db"
        upgrade_head(url)
        self.database = database = Database(url, pool_size=2)
        stack.callback(database.dispose)
        self.settings = settings = Settings(
            stage="local",
            data_dir=tmp,
            ws_token_secret="b" * 32,
            ws_management_url=f"https://{DOMAIN}/prod",
            usage_queue_url=queue_url,
            aws_endpoint_url=endpoint,
        )
        if settings.llm_custom_base_url != base_url:
            raise RuntimeError("AIRIES_LLM_CUSTOM_BASE_URL did not reach the settings")
        # Audio frames go out faster than real time: the service's clock moves on by the audio sent.
        self.ahead_s = 0.0
        clock = lambda: time.time() + self.ahead_s  # noqa: E731
        ddb = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=endpoint)
        store = SessionStore(ddb, TABLE, clock=clock)
        store.ensure_table()
        management = boto3.client(
            "apigatewaymanagementapi",
            endpoint_url=endpoint,
            region_name="us-east-1",
            config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 2}),
        )
        poster = TimingPoster(ApiGatewayPoster(management), timeline)
        # moto keeps every byte posted to a connection and copies it on each post; dropped between turns
        # (outside the measurement) as bench_conversation does.
        self.moto_reset = boto3.client("apigatewaymanagementapi", endpoint_url=endpoint, region_name="us-east-1")
        self.utterance = ""  # what the STT double hears on the audio route
        self.tokens = ConversationTokens(b"b" * 32)

        def engines(session: Any, account_id: str, config: Any) -> Any:
            built = build_engines(settings, session, account_id, config, database)
            llm = built.llm

            async def timed_llm(request: Any) -> AsyncIterator[Any]:
                timeline.llm_calls.append(time.perf_counter_ns())
                start, first = time.perf_counter(), True
                async for event in llm(request):
                    if first:
                        timeline.waits.append((start, time.perf_counter()))
                        first = False
                    yield event

            built.llm = timed_llm
            built.tts = SilentTTS(timeline)
            built.stt = FakeSTT(text=lambda pcm: self.utterance)
            return built

        service = WebSocketService(
            settings, database, store, poster_factory=lambda _: poster, engines=engines, tokens=self.tokens, clock=clock
        )
        self.dispatch = load_voice_handlers()
        import voice_runtime  # put on sys.path by load_voice_handlers

        voice_runtime.set_service(service)
        voice_runtime.settle()
        for client, service_name in ((ddb, "dynamodb"), (management, "apigatewaymanagementapi")):
            original = client._make_api_call

            def timed(
                operation: str, params: dict[str, Any], _original: Any = original, _name: str = service_name
            ) -> Any:
                start = time.perf_counter()
                try:
                    return _original(operation, params)
                finally:
                    timeline.sdk_calls.append((start, time.perf_counter(), _name, operation))

            client._make_api_call = timed

        with database.session() as s:
            account, _ = AccountService(s).signup(name="Bench", email=f"bench-{uuid.uuid4().hex[:8]}@example.com")
            agents = AgentService(s, settings=settings)
            agent = agents.create(
                account.id,
                AgentCreate(
                    name="Bench",
                    system_prompt=SYSTEM,
                    first_message_mode="assistant_waits_for_user",
                    llm={"provider": "custom", "model": "fake-model"},
                    voice={"provider": "elevenlabs", "voice_id": "21m00Tcm4TlvDq8ikWAM"},
                    transcriber={"provider": "deepgram", "model": "nova-3"},
                    max_duration_seconds=43200,
                    silence_timeout_seconds=3600,
                ),
            )
            agents.deploy(account.id, agent.id)
            self.account_id, self.agent_id = account.id, agent.id
        self.speech = spoken("where is my order")
        self.long: tuple[str, str] | None = None  # (conversation, connection) of the long conversation
        self.connections = 0
        self.seq: dict[str, int] = {}
        self.connected_at: dict[str, int] = {}  # epoch ms, per connection

    # -- the client's side of the protocol ----------------------------------------------------------------------
    def event(self, connection_id: str, route: str, body: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        """The event API Gateway hands the function (the handlers parse it with the Powertools WebSocket models)."""
        now = time.time()
        request_id = uuid.uuid4().hex
        ctx: dict[str, Any] = {
            "domainName": DOMAIN,
            "stage": "prod",
            "apiId": "bench",
            "connectionId": connection_id,
            "connectedAt": self.connected_at.get(connection_id, int(now * 1000)),
            "requestId": request_id,
            "extendedRequestId": request_id,
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "requestTimeEpoch": int(now * 1000),
            "identity": {"sourceIp": "127.0.0.1"},
            "messageDirection": "IN",
        }
        if route in ("$connect", "$disconnect"):
            kind = "CONNECT" if route == "$connect" else "DISCONNECT"
            if route == "$disconnect":
                ctx |= {"disconnectStatusCode": 1000, "disconnectReason": "Client closed the connection"}
            return {
                **extra,
                "headers": {"Host": DOMAIN},
                "multiValueHeaders": {"Host": [DOMAIN]},
                "isBase64Encoded": False,
                "requestContext": {**ctx, "routeKey": route, "eventType": kind},
            }
        return {
            "body": json.dumps(body),
            "isBase64Encoded": False,
            "requestContext": {**ctx, "messageId": request_id[:16], "routeKey": route, "eventType": "MESSAGE"},
        }

    def open_conversation(self) -> tuple[str, str]:
        with self.database.session() as s:
            service = ConversationService(s, self.settings, tokens=self.tokens)
            conversation, token, _ = service.start_conversation(
                self.account_id, ConversationCreate(agent_id=self.agent_id)
            )
            cid = conversation.id
        self.connections += 1
        conn = f"benchConn{self.connections:05d}="
        self.connected_at[conn] = int(time.time() * 1000)
        query = {"conversation_id": cid, "token": token}
        answer = self.dispatch("$connect", self.event(conn, "$connect", queryStringParameters=query))
        if answer.get("statusCode") != 200:
            raise RuntimeError(f"$connect refused: {answer}")
        self.dispatch("$default", self.event(conn, "$default", {"action": "start"}))
        self.seq[conn] = 0
        return cid, conn

    def close_conversation(self, conn: str) -> None:
        self.dispatch("$default", self.event(conn, "$default", {"action": "end"}))
        self.dispatch("$disconnect", self.event(conn, "$disconnect"))
        self.seq.pop(conn, None)
        self.connected_at.pop(conn, None)

    def speak(self, conn: str) -> None:
        """The caller's utterance as numbered 250 ms audio frames (not measured); the turn waits for end_of_utterance."""
        for offset in range(0, len(self.speech), CHUNK_MS * 32):
            piece = self.speech[offset : offset + CHUNK_MS * 32]
            piece += bytes(max(0, 80 * 32 - len(piece)))  # a client pads its last short chunk
            frame = {"action": "audio", "seq": self.seq[conn], "data": base64.b64encode(piece).decode()}
            self.seq[conn] += 1
            self.ahead_s += len(piece) / 32 / 1000
            self.dispatch("audio", self.event(conn, "audio", frame))

    def turn(self, conn: str, tag: str, route: str, gap_s: float) -> dict[str, Any]:
        """One turn through the $default handler; returns its timeline."""
        text = f"Turn {tag}: where is my order?"
        self.moto_reset.delete_connection(ConnectionId=conn)
        timeline = self.timeline
        timeline.reset()
        if route == "audio":
            self.utterance = text
            self.speak(conn)
            early = [kind for _, _, kind in timeline.posts if kind == "audio"]
            timeline.reset()
            body: dict[str, Any] = {"action": "end_of_utterance", "last_seq": self.seq[conn] - 1}
            if early:  # the server's VAD ended the utterance before the client did: not this route's turn
                timeline.errors.append("the server's VAD ended the utterance before end_of_utterance")
        else:
            body = {"action": "text", "text": text}
        event = self.event(conn, "$default", body)
        cpu0 = time.process_time()
        t0_s = time.perf_counter()
        self.dispatch("$default", event)
        returned = time.perf_counter_ns()
        cpu_ms = (time.process_time() - cpu0) * 1000
        audio = [p for p in timeline.posts if p[2] == "audio"]
        row: dict[str, Any] = {
            "tag": tag,
            "route": route,
            "user_text": text,
            "t0_ns": int(t0_s * 1e9),
            "handler_return_ns": returned,
            "first_audio_ns": audio[0][1] if audio else None,
            "last_audio_ns": audio[-1][1] if audio else None,
            "n_audio": len(audio),
            "llm_call_ns": timeline.llm_calls[0] if timeline.llm_calls else None,
            "tts_call_ns": timeline.tts_calls[0] if timeline.tts_calls else None,
            "tts_first_chunk_ns": timeline.tts_first_chunks[0] if timeline.tts_first_chunks else None,
            "cpu_ms": cpu_ms,
            "error": "; ".join(timeline.errors) or None,
        }
        if audio:
            row["critical_aws"] = critical_aws(timeline.sdk_calls, (t0_s, audio[0][1] / 1e9), timeline.waits)
        time.sleep(gap_s)
        return row

    # -- commands -------------------------------------------------------------------------------------------------
    def prefill(self, turns: int) -> dict[str, Any]:
        """The long conversation: ``turns`` real text turns, the history the longer contexts read."""
        cid, conn = self.open_conversation()
        self.long = (cid, conn)
        for k in range(turns):
            self.turn(conn, f"pre.{k:03d}", "text", 0.05)
        return {"conversation_id": cid, "turns": turns}

    def block(self, messages: int, route: str, tags: list[str], gap_s: float) -> list[dict[str, Any]]:
        """Turns whose LLM request carries ``messages`` messages: 4 = system + one prior exchange + the user's turn
        (a new conversation per turn); more = the long conversation read through a window of (messages - 2) / 2
        turns (42: the platform's default)."""
        rows = []
        with history_window((messages - 2) // 2 if messages > 4 else None):
            for tag in tags:
                if messages == 4:
                    _, conn = self.open_conversation()
                    self.turn(conn, f"{tag}.p", "text", gap_s)
                    rows.append(self.turn(conn, tag, route, gap_s))
                    self.close_conversation(conn)
                elif self.long is None:
                    raise RuntimeError("prefill the long conversation first")
                else:
                    rows.append(self.turn(self.long[1], tag, route, gap_s))
        return rows


@contextlib.contextmanager
def history_window(turns: int | None) -> Iterator[None]:
    """How many stored turns a turn's LLM request carries: a module constant, not a setting, so it is set here for
    the block (both systems then send the same request size) and put back after it."""
    if turns is None:
        yield
        return
    default = getattr(conversations_service, "HISTORY_TURNS", None)
    if not isinstance(default, int):
        raise RuntimeError("airies.conversations.service.HISTORY_TURNS moved: point history_window at it")
    conversations_service.HISTORY_TURNS = turns
    try:
        yield
    finally:
        conversations_service.HISTORY_TURNS = default


def main() -> None:
    with contextlib.ExitStack() as stack:
        started = time.perf_counter()
        airies = Airies(sys.argv[1], stack)
        send({"ok": True, "ready": True, "pid": os.getpid(), "setup_s": round(time.perf_counter() - started, 2)})
        for line in sys.stdin:
            command = json.loads(line)
            if command["cmd"] == "quit":
                break
            try:
                if command["cmd"] == "prefill":
                    send({"ok": True, **airies.prefill(command["turns"])})
                elif command["cmd"] == "block":
                    rows = airies.block(command["messages"], command["route"], command["tags"], command["gap_s"])
                    send({"ok": True, "rows": rows})
                else:
                    send({"ok": False, "error": f"unknown command {command['cmd']}"})
            except Exception as exc:  # report and keep serving: the orchestrator decides
                import traceback

                traceback.print_exc()
                send({"ok": False, "error": repr(exc)})
    send({"ok": True, "bye": True})


if __name__ == "__main__":
    main()
