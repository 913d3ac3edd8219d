"""Conversation turns: platform overhead per turn and AWS cost per conversation minute.

Runs the real ``functions/voice_ws/default.py`` handler (the ``$default`` Lambda) against moto (DynamoDB + API
Gateway Management API) and SQLite, with provider doubles that inject realistic latencies: STT 150 ms, LLM first
token 250 ms (then 20 ms per token), TTS first byte 100 ms. The per-turn credit check is the real billing one.

moto runs as a server in a separate process (the headline): AWS calls are HTTP round trips, as on AWS, and
moto's own CPU work does not compete with the handler for this interpreter's GIL. The same run against moto
in-process (``mock_aws``, every call executed inside this process) is reported next to it.
``BENCH_CONV_AWS=server|inprocess|both`` (default both) picks the modes; ``BENCH_CONV_TRACE=1`` prints each
turn's timeline (provider waits and AWS calls).

* Platform overhead = (the audio frame whose trailing silence ends the utterance arrives -> first audio
  frame posted back) - (150 + 250 + 100 ms injected). Everything else on that path is ours: VAD, DynamoDB
  state, audio assembly, the credit check, segmentation, the barge-in check before each post.
  Target p95 < 25 ms, and the first audio goes out before the LLM stream has ended.
* AWS calls on the critical path: SDK calls inside that window and outside the provider waits (a call
  hidden behind STT/LLM/TTS latency costs nothing). Their count, the round trips they form (overlapping calls
  count once) and the time waited on them are reported, plus a projection with assumed AWS latencies
  (``ASSUMED_AWS_MS``: DynamoDB 5 ms, post_to_connection 10 ms) in place of the local moto round trips.
* Cost per conversation minute: every frame of the simulated calls is counted (Lambda invocations and
  measured durations at 512 MB arm64, WebSocket messages in 32 KB units both ways, connection minutes,
  DynamoDB read/write units from item sizes, SQS usage batches, optional S3 recording PUTs) and priced at the
  public us-east-1 prices in shared/reference/voice-agent-field.md (S3 PUT: $0.005 per 1,000). The client
  streams audio continuously in 250 ms frames (server VAD), the costliest way to use the protocol.
  Target < $0.002 per minute. benchmarks/cost_model.py then adds what the doubles cannot show (real vendors' 3-5 s
  of Lambda per turn, the sweeper, NAT, data out, CloudWatch Logs, X-Ray, SnapStart) and prints the full breakdown.
  Not included: the database (RDS, a fixed monthly cost) and provider fees.

``python -m benchmarks conversation [--runs N]`` (N = turns measured, default 40).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import cost_model, harness

DEFAULT_TURNS = 40
INJECTED_MS = 150 + 250 + 100
# Assumed in-region latencies from a Lambda (the upper end of DynamoDB's usual 3-5 ms for a small item, and
# ~10 ms for an API Gateway post_to_connection). Assumptions for the projection, not measurements.
ASSUMED_AWS_MS = {"dynamodb": 5.0, "apigatewaymanagementapi": 10.0}
PRICES = {
    "lambda_request": 0.20 / 1e6,
    "lambda_gb_s": 0.0000133334,
    "ws_message": 1.00 / 1e6,
    "ws_connection_minute": 0.25 / 1e6,
    "ddb_write_unit": 0.625 / 1e6,
    "ddb_read_unit": 0.125 / 1e6,
    "sqs_request": 0.40 / 1e6,
    "s3_put": 0.005 / 1000,
}
LAMBDA_GB = 0.5  # VoiceMessageFunction MemorySize: 512
COST_TARGET = 0.002  # USD of AWS per conversation minute
CHUNK_MS = 250
MIN_CHUNK_MS = 80  # the protocol refuses shorter audio chunks (audio_too_small)
REPLY = (
    "Sure. Our clinic opens at nine in the morning on weekdays. "
    "On Saturdays we open at ten and close at two. Is there anything else?"
)


def run(args: Any = None) -> dict[str, Any]:
    sys.path.insert(0, str(harness.ROOT))
    turns = getattr(args, "runs", None) or DEFAULT_TURNS
    aws_env_defaults()
    modes = os.environ.get("BENCH_CONV_AWS", "both")
    if modes not in ("server", "inprocess", "both"):
        raise ValueError(f"BENCH_CONV_AWS must be server, inprocess or both, not {modes!r}")
    result: dict[str, Any] | None = None
    if modes in ("server", "both"):
        print("  -- moto server in a separate process (headline)")
        with moto_server() as endpoint:
            result = _run(turns, endpoint)
        result["aws"] = "moto server, separate process"
    if modes in ("inprocess", "both"):
        from moto import mock_aws

        print("  -- moto in-process (mock_aws)")
        with mock_aws():
            inprocess = _run(turns, None)
        if result is None:
            result = inprocess
            result["aws"] = "moto in-process"
        else:
            result["inprocess_moto"] = {
                k: inprocess[k]
                for k in ("overhead_ms", "sdk_call_ms", "critical_path_aws", "overhead_outside_critical_aws_ms")
            }
    assert result is not None
    return result


# ``python -m moto.server`` answers every request with ``Connection: close`` (werkzeug's development server always
# adds it, then drains the socket after each response, which would eat a kept-alive client's next request), so each
# boto3 call would open a TCP connection; on AWS, botocore keeps its connections open. The server is run with HTTP/1.1
# keep-alive instead (moto reads every request's body whole, so there is nothing to drain), unless
# ``keep_alive=False``.
MOTO_KEEP_ALIVE = """
import sys
import types
import moto.server as server
import werkzeug.serving as serving


class KeepAlive(server.MotoRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # the status line, headers and body go out in separate writes

    def send_header(self, keyword, value):
        if keyword.lower() != "connection":
            super().send_header(keyword, value)


class NoDrain:
    def register(self, *args):
        pass

    def select(self, timeout=None):
        return []

    def close(self):
        pass


serving.selectors = types.SimpleNamespace(DefaultSelector=NoDrain, EVENT_READ=1)
server.MotoRequestHandler = KeepAlive
server.main(sys.argv[1:])
"""


@contextlib.contextmanager
def moto_server(*, keep_alive: bool = True) -> Iterator[str]:
    """moto's server in a child process on a free local port (HTTP/1.1 keep-alive unless ``keep_alive=False``);
    yields its endpoint URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ("-c", MOTO_KEEP_ALIVE) if keep_alive else ("-m", "moto.server")
    child = subprocess.Popen(
        [sys.executable, *server, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if child.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


class CountingPoster:
    """The real API Gateway poster (moto), counting messages and 32 KB units, noting in ``first_at`` when the first
    frame starting with one of ``starts`` went out: once posted, or as the post is issued (``stamp_before_post``)."""

    def __init__(
        self, inner: Any, starts: tuple[bytes, ...] = (b'{"type":"audio"',), *, stamp_before_post: bool = False
    ) -> None:
        self.inner = inner
        self.starts = starts
        self.stamp_before_post = stamp_before_post
        self.messages = 0
        self.units = 0
        self.bytes_out = 0
        self.first_at: float | None = None

    def post(self, connection_id: str, data: bytes) -> bool:
        watched = self.first_at is None and data.startswith(self.starts)
        if watched and self.stamp_before_post:
            self.first_at = time.perf_counter()
        ok = self.inner.post(connection_id, data)
        if watched and not self.stamp_before_post:
            self.first_at = time.perf_counter()
        self.messages += 1
        self.units += max(1, math.ceil(len(data) / 32768))
        self.bytes_out += len(data)
        return bool(ok)

    def close(self, connection_id: str) -> None:
        self.inner.close(connection_id)


class ProviderWaits:
    """Wraps the provider doubles to note when each injected wait ran: STT, LLM until its first token, TTS until
    its first chunk. AWS calls hidden behind these waits are not on the critical path."""

    def __init__(self, engines: Any) -> None:
        self.spans: list[tuple[float, float]] = []
        self.engines = engines
        stt, tts, llm = engines.stt, engines.tts, engines.llm
        waits = self

        class Stt:
            async def transcribe(self, pcm16: bytes, sample_rate: int, options: Any) -> Any:
                start = time.perf_counter()
                try:
                    return await stt.transcribe(pcm16, sample_rate, options)
                finally:
                    waits.spans.append((start, time.perf_counter()))

        class Tts:
            name = tts.name

            async def synthesize(self, text: str, options: Any) -> AsyncIterator[bytes]:
                start, first = time.perf_counter(), True
                async for chunk in tts.synthesize(text, options):
                    if first:
                        waits.spans.append((start, time.perf_counter()))
                        first = False
                    yield chunk

            async def list_voices(self) -> list[Any]:
                return []

        async def streamer(request: Any) -> AsyncIterator[Any]:
            start, first = time.perf_counter(), True
            async for event in llm(request):
                if first:
                    waits.spans.append((start, time.perf_counter()))
                    first = False
                yield event

        engines.stt, engines.tts, engines.llm = Stt(), Tts(), streamer


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _minus(span: tuple[float, float], holes: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Parts of ``span`` outside the (merged, sorted) ``holes``."""
    out, (a, b) = [], span
    for lo, hi in holes:
        if hi <= a or lo >= b:
            continue
        if lo > a:
            out.append((a, lo))
        a = max(a, hi)
    if a < b:
        out.append((a, b))
    return out


def critical_aws(
    calls: list[tuple[float, float, str, str]], window: tuple[float, float], waits: list[tuple[float, float]]
) -> dict[str, Any]:
    """AWS calls that delayed the first audio: inside ``window`` and not hidden behind a provider wait.

    Overlapping calls form one round trip; the projection swaps each round trip's measured time for the slowest
    assumed AWS latency among its calls.
    """
    holes = _union([w for w in waits if w[1] > window[0] and w[0] < window[1]])
    exposed: list[tuple[float, float, str, str]] = []
    count = 0
    for a, b, service, operation in calls:
        parts = [p for p in _minus((max(a, window[0]), min(b, window[1])), holes) if p[1] - p[0] > 1e-4]
        count += bool(parts)  # 0.1 ms: a call merely touching a wait's edge is not on the path
        exposed += [(lo, hi, service, operation) for lo, hi in parts]
    if os.environ.get("BENCH_CONV_TRACE"):  # each turn's timeline, ms from the end-of-utterance frame
        ms = lambda t: round((t - window[0]) * 1000, 1)  # noqa: E731
        print(f"   turn: first audio at {ms(window[1])}, provider waits {[(ms(a), ms(b)) for a, b in holes]}")
        for a, b, _, op in sorted(calls):
            if b > window[0] and a < window[1]:
                print(f"     {op} {ms(a)} -> {ms(b)}")
    trips: list[list[tuple[float, float, str, str]]] = []
    for call in sorted(exposed):
        if trips and call[0] <= max(c[1] for c in trips[-1]):
            trips[-1].append(call)
        else:
            trips.append([call])
    waited = sum(max(c[1] for c in trip) - trip[0][0] for trip in trips) * 1000
    assumed = sum(max(ASSUMED_AWS_MS[c[2]] for c in trip) for trip in trips)
    return {
        "calls": count,
        "round_trips": len(trips),
        "waited_ms": waited,
        "assumed_ms": assumed,
        "shape": " + ".join(" || ".join(sorted({c[3] for c in trip})) for trip in trips),
        "provider_waits_ms": sum(min(b, window[1]) - max(a, window[0]) for a, b in holes) * 1000,
    }


def spoken(text: str) -> bytes:
    """Real speech (eSpeak NG), so the server VAD sees what it sees on a call; a pure tone is not speech."""
    from airies.voice.audio.codecs import read_wav, resample_pcm16

    with tempfile.NamedTemporaryFile(suffix=".wav") as handle:
        subprocess.run(["espeak-ng", "-w", handle.name, text], check=True)
        pcm, rate = read_wav(Path(handle.name).read_bytes())
    return resample_pcm16(pcm, rate, 16000)


WS_DOMAIN = "bench.execute-api.us-east-1.amazonaws.com"
MANAGEMENT_URL = f"https://{WS_DOMAIN}/prod"
TOKEN_SECRET = b"b" * 32


def aws_env_defaults() -> None:
    """Credentials and region for boto3 against moto, Powertools tracing off and its logs quiet (unless set)."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")


def bench_database(prefix: str) -> tuple[Any, str, str]:
    """A migrated database (``BENCH_DATABASE_URL``, else SQLite in a new temporary folder): it, its URL, the folder."""
    from airies.core.database import Database
    from airies.migrations.runner import upgrade_head

    tmp = tempfile.mkdtemp(prefix=prefix)
    url = os.environ.get("BENCH_DATABASE_URL") or f"sqlite:///{tmp}/bench.db"
    upgrade_head(url)
    return Database(url, pool_size=2), url, tmp


@dataclass
class VoiceStack:
    settings: Any
    database: Any
    tokens: Any
    service: Any
    dispatch: Any  # the functions/voice_ws handlers by route
    usage_batches: dict[str, int]  # SQS batches the usage events would take (10 a batch)


def voice_stack(
    database: Any,
    tmp: str,
    store: Any,
    poster: Any,
    engines: Any,
    *,
    settings: dict[str, Any] | None = None,
    **service: Any,
) -> VoiceStack:
    """The live edge as built on Lambda, on ``store`` and ``poster`` (moto) with ``engines`` (the doubles): the real
    billing credit check, usage events counted in SQS batches, and the ``functions/voice_ws`` handlers loaded and
    handed this service. ``settings``: more Settings fields; ``service``: more WebSocketService arguments."""
    from airies.conversations.live import WebSocketService
    from airies.conversations.service import ConversationTokens, billing_credit_gate
    from airies.core.config import Settings
    from airies.local.ws_gateway import load_voice_handlers

    config = Settings(
        stage="local",
        data_dir=tmp,
        ws_token_secret=TOKEN_SECRET.decode(),
        ws_management_url=MANAGEMENT_URL,
        **(settings or {}),
    )
    usage_batches = {"n": 0}
    tokens = ConversationTokens(TOKEN_SECRET)
    live = WebSocketService(
        config,
        database,
        store,
        poster_factory=lambda endpoint: poster,
        engines=lambda session, account_id, agent_config: engines,
        usage_sink=lambda session: (
            lambda events: usage_batches.__setitem__("n", usage_batches["n"] + math.ceil(len(events) / 10))
        ),
        credit_gate=lambda session: billing_credit_gate(config, session),  # the real one: it is on the path
        tokens=tokens,
        **service,
    )
    dispatch = load_voice_handlers()
    import voice_runtime

    voice_runtime.set_service(live)
    voice_runtime.settle()  # as voice_runtime.service() does after a cold start
    return VoiceStack(config, database, tokens, live, dispatch, usage_batches)


def started_conversations(stack: VoiceStack, count: int) -> list[tuple[str, str]]:
    """A new account with a deployed agent that waits for the caller, and ``count`` conversations started with it:
    each one's id and token."""
    from airies.accounts.service import AccountService
    from airies.agents.schemas import AgentCreate
    from airies.agents.service import AgentService
    from airies.conversations.schemas import ConversationCreate
    from airies.conversations.service import ConversationService

    with stack.database.session() as s:
        account, _ = AccountService(s).signup(name="Bench", email=f"bench-{uuid.uuid4().hex[:8]}@example.com")
        agents = AgentService(s)
        agent = agents.create(
            account.id,
            AgentCreate(
                name="Bench",
                first_message_mode="assistant_waits_for_user",
                voice={"provider": "elevenlabs", "voice_id": "21m00Tcm4TlvDq8ikWAM"},
                transcriber={"provider": "deepgram", "model": "nova-3"},
            ),
        )
        agents.deploy(account.id, agent.id)
        conversations = ConversationService(s, stack.settings, tokens=stack.tokens)
        started = []
        for _ in range(count):
            conversation, token, _ = conversations.start_conversation(account.id, ConversationCreate(agent_id=agent.id))
            started.append((conversation.id, token))
        return started


def request_context(connection_id: str, route: str, event_type: str) -> dict[str, Any]:
    """The request context API Gateway sends (the handlers parse it with the Powertools WebSocket models)."""
    return {
        "domainName": WS_DOMAIN,
        "stage": "prod",
        "connectionId": connection_id,
        "apiId": "bench",
        "requestId": "bench",
        "extendedRequestId": "bench",
        "requestTime": "06/Dec/2026:00:00:00 +0000",
        "requestTimeEpoch": 1796515200000,
        "connectedAt": 1796515200000,
        "identity": {"sourceIp": "127.0.0.1"},
        "messageDirection": "IN",
        "messageId": "bench",
        "routeKey": route,
        "eventType": event_type,
    }


def _run(turns: int, endpoint: str | None) -> dict[str, Any]:
    """One measured session; ``endpoint``: a moto server's URL, or None for moto in-process (``mock_aws``)."""
    import boto3
    from botocore.config import Config

    from airies.conversations.live import ApiGatewayPoster
    from airies.conversations.sessions import SessionStore
    from tests.doubles.conv_engines import FakeLLM, FakeSTT, FakeTTS, fake_engines, silence

    database, url, tmp = bench_database("bench-conv-")
    # As built on Lambda (sessions.dynamodb_client, websocket.management_poster), pointed at moto.
    ddb = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=endpoint)
    # The client streams in real time; the handlers see a clock that advances with the audio sent.
    sim = {"t": time.time()}
    store = SessionStore(ddb, "bench-ws-state", clock=lambda: sim["t"])
    store.ensure_table()
    poster = CountingPoster(
        ApiGatewayPoster(
            boto3.client(
                "apigatewaymanagementapi",
                endpoint_url=endpoint or MANAGEMENT_URL,
                region_name="us-east-1",
                config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 2}),
            )
        )
    )
    llm = FakeLLM(reply=REPLY, first_token_s=0.250, per_token_s=0.020)
    engines = fake_engines(
        stt=FakeSTT(text="what time do you open", latency_s=0.150),
        llm=llm,
        tts=FakeTTS(first_byte_s=0.100, ms_per_char=65, chunk_ms=100, per_chunk_s=0.005),
    )
    waits = ProviderWaits(engines)
    # moto keeps every byte posted to a connection in one growing bytes object (copied on each post): a cost
    # API Gateway does not have. Dropping it between turns, through a client outside the measurement, keeps
    # the post round trip flat over the run.
    moto_reset = boto3.client(
        "apigatewaymanagementapi", endpoint_url=endpoint or MANAGEMENT_URL, region_name="us-east-1"
    )
    stack = voice_stack(database, tmp, store, poster, engines, clock=lambda: sim["t"])
    dispatch, usage_batches = stack.dispatch, stack.usage_batches
    [(cid, token)] = started_conversations(stack, 1)

    # Every AWS SDK call (start, end, service), to find the ones the first audio waited for.
    sdk_calls: list[tuple[float, float, str, str]] = []
    for client, service_name in ((ddb, "dynamodb"), (poster.inner.client, "apigatewaymanagementapi")):
        original = client._make_api_call

        def timed(operation: str, params: dict[str, Any], _original: Any = original, _name: str = service_name) -> Any:
            start = time.perf_counter()
            try:
                return _original(operation, params)
            finally:
                sdk_calls.append((start, time.perf_counter(), _name, operation))

        client._make_api_call = timed

    critical: list[dict[str, Any]] = []
    round_trips: dict[str, list[float]] = {}  # every SDK call's duration, by operation
    lam = {"invocations": 0, "seconds": 0.0, "turn_seconds": 0.0}
    ws_in_units = 0
    connection_id = "benchConn0001="

    def invoke(route: str, event: dict[str, Any]) -> float:
        lam["invocations"] += 1
        posted = poster.messages
        start = time.perf_counter()
        dispatch(route, event)
        took = time.perf_counter() - start
        lam["seconds"] += took
        if poster.messages > posted + 1:  # this invocation ran a turn (audio frames went out)
            lam["turn_seconds"] += took
        return start

    invoke(
        "$connect",
        {
            "queryStringParameters": {"conversation_id": cid, "token": token},
            "headers": {"Host": WS_DOMAIN},
            "multiValueHeaders": {"Host": [WS_DOMAIN]},
            "isBase64Encoded": False,
            "requestContext": request_context(connection_id, "$connect", "CONNECT"),
        },
    )

    def frame(body: dict[str, Any]) -> float:
        nonlocal ws_in_units
        raw = json.dumps(body)
        ws_in_units += max(1, math.ceil(len(raw) / 32768))
        return invoke(
            "audio" if body["action"] == "audio" else "$default",
            {
                "body": raw,
                "isBase64Encoded": False,
                "requestContext": request_context(connection_id, "$default", "MESSAGE"),
            },
        )

    frame({"action": "start"})
    speech, pause = spoken("what time do you open on saturday morning and do you take walk in patients"), silence(750)
    seq = 0
    overheads: list[float] = []
    first_before_end: list[bool] = []
    streamed_ms = 0.0
    for _ in range(turns):
        moto_reset.delete_connection(ConnectionId=connection_id)
        poster.first_at = None
        trigger = None
        for pcm in (speech, pause):
            for offset in range(0, len(pcm), CHUNK_MS * 32):
                piece = pcm[offset : offset + CHUNK_MS * 32]
                piece += bytes(max(0, MIN_CHUNK_MS * 32 - len(piece)))  # a client pads its last short chunk
                started = frame({"action": "audio", "seq": seq, "data": base64.b64encode(piece).decode()})
                seq += 1
                streamed_ms += len(piece) / 32
                sim["t"] += len(piece) / 32 / 1000
                if poster.first_at is not None and trigger is None:
                    trigger = started  # this frame's trailing silence ended the utterance and ran the turn
        if trigger is None or poster.first_at is None:
            sent = ddb.get_item(TableName="bench-ws-state", Key={"pk": {"S": f"conv#{cid}"}, "sk": {"S": "session"}})
            raise RuntimeError(f"no turn ran; posts so far {poster.messages}; session {sent.get('Item')}")
        overheads.append((poster.first_at - trigger) * 1000 - INJECTED_MS)
        critical.append(critical_aws(sdk_calls, (trigger, poster.first_at), waits.spans))
        for a, b, _, operation in sdk_calls:
            round_trips.setdefault(operation, []).append((b - a) * 1000)
        sdk_calls.clear()
        waits.spans.clear()
        first_before_end.append(poster.first_at < llm.finished_at[-1])
        # The agent speaks while the client keeps streaming (silent) audio: count those frames too.
        agent_ms = len(REPLY) * 65
        for _ in range(int(agent_ms // CHUNK_MS)):
            frame({"action": "audio", "seq": seq, "data": base64.b64encode(silence(CHUNK_MS)).decode()})
            seq += 1
            streamed_ms += CHUNK_MS
            sim["t"] += CHUNK_MS / 1000
    minutes = streamed_ms / 60000

    session_item = ddb.get_item(TableName="bench-ws-state", Key={"pk": {"S": f"conv#{cid}"}, "sk": {"S": "session"}})[
        "Item"
    ]
    session_kb = math.ceil(harness.item_bytes(session_item) / 1024)  # DynamoDB's size: names + values
    writes, reads = store.ops["write"], store.ops["read"]
    # Units: chunk puts ~6.5-8 KB each -> 8 WRU; session updates bill the item size; everything else is 1 unit.
    stored_chunks = store.ops.get("chunk_write", 0)
    wru = stored_chunks * 8 + (writes - stored_chunks) * session_kb
    rru = reads * max(1, math.ceil(session_kb / 4))
    usage = {
        "lambda_invocations": lam["invocations"],
        "lambda_gb_seconds": round(lam["seconds"] * LAMBDA_GB, 3),
        "ws_messages_in_units": ws_in_units,
        "ws_messages_out_units": poster.units,
        "ws_connection_minutes": round(minutes, 3),
        "ddb_write_units": wru,
        "ddb_read_units": rru,
        "sqs_requests": usage_batches["n"],
        "s3_puts_if_recording": 2 * turns,
        "audio_frames": seq,
        "stored_chunks": stored_chunks,
        "session_item_kb": session_kb,
    }
    dollars = {
        "lambda": usage["lambda_invocations"] * PRICES["lambda_request"]
        + usage["lambda_gb_seconds"] * PRICES["lambda_gb_s"],
        "websocket": (ws_in_units + poster.units) * PRICES["ws_message"] + minutes * PRICES["ws_connection_minute"],
        "dynamodb": wru * PRICES["ddb_write_unit"] + rru * PRICES["ddb_read_unit"],
        "sqs": usage["sqs_requests"] * PRICES["sqs_request"],
    }
    per_minute = {k: v / minutes for k, v in dollars.items()}
    total = sum(per_minute.values())
    recording = usage["s3_puts_if_recording"] * PRICES["s3_put"] / minutes
    p50, p95 = harness.percentile(overheads, 50), harness.percentile(overheads, 95)
    waited = [c["waited_ms"] for c in critical]
    own = [o - c["waited_ms"] for o, c in zip(overheads, critical, strict=True)]
    projected = [o + c["assumed_ms"] for o, c in zip(own, critical, strict=True)]
    shapes: dict[str, int] = {}
    for c in critical:
        shapes[c["shape"]] = shapes.get(c["shape"], 0) + 1
    pct = harness.percentile
    print(f"  overhead per turn: p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {max(overheads):.1f} ms over {turns} turns")
    sdk = {op: {"n": len(v), "p50": round(pct(v, 50), 2), "p95": round(pct(v, 95), 2)} for op, v in round_trips.items()}
    print("  SDK call durations (ms): " + ", ".join(f"{op} p50 {v['p50']} p95 {v['p95']}" for op, v in sdk.items()))
    print(
        f"  AWS calls on the critical path: p50 {pct([c['calls'] for c in critical], 50)} calls in "
        f"{pct([c['round_trips'] for c in critical], 50)} round trips, waited p50 {pct(waited, 50):.1f} ms, "
        f"p95 {pct(waited, 95):.1f} ms; shapes {shapes}"
    )
    excess = [c["provider_waits_ms"] - INJECTED_MS for c in critical]
    print(
        f"  overhead outside those calls: p50 {pct(own, 50):.1f} ms, p95 {pct(own, 95):.1f} ms; of which the "
        f"doubles' waits running past their nominal {INJECTED_MS} ms (timer granularity, their own work): "
        f"p50 {pct(excess, 50):.1f} ms"
    )
    print(
        f"  projected with assumed AWS latencies {ASSUMED_AWS_MS}: p50 {pct(projected, 50):.1f} ms, "
        f"p95 {pct(projected, 95):.1f} ms"
    )
    print(f"  first audio before the LLM stream ended: {sum(first_before_end)}/{turns} turns")
    print(
        "  AWS $/conversation minute as measured against the doubles: "
        + ", ".join(f"{k} {v:.6f}" for k, v in per_minute.items())
        + f" = {total:.6f} (+{recording:.6f} with recording)"
    )
    model = cost_model.breakdown(
        cost_model.Measured(
            minutes=minutes,
            turns=turns,
            lambda_invocations=lam["invocations"],
            lambda_gb_seconds=lam["seconds"] * LAMBDA_GB,
            turn_gb_seconds=lam["turn_seconds"] * LAMBDA_GB,
            ws_in_units=ws_in_units,
            ws_out_units=poster.units,
            ws_out_bytes=poster.bytes_out,
            ddb_write_units=wru,
            ddb_read_units=rru,
            sqs_requests=usage_batches["n"],
            stored_chunks=stored_chunks,
        )
    )
    cost_model.print_breakdown(model, COST_TARGET)
    database.dispose()
    return {
        "turns": turns,
        "injected_provider_ms": INJECTED_MS,
        "overhead_ms": {
            "p50": round(p50, 2),
            "p95": round(p95, 2),
            "max": round(max(overheads), 2),
            "min": round(min(overheads), 2),
        },
        "sdk_call_ms": sdk,
        "critical_path_aws": {
            "calls_p50": pct([c["calls"] for c in critical], 50),
            "calls_max": max(c["calls"] for c in critical),
            "round_trips_p50": pct([c["round_trips"] for c in critical], 50),
            "waited_ms": {"p50": round(pct(waited, 50), 2), "p95": round(pct(waited, 95), 2)},
            "shapes": shapes,
        },
        "overhead_outside_critical_aws_ms": {"p50": round(pct(own, 50), 2), "p95": round(pct(own, 95), 2)},
        "provider_waits_over_nominal_ms": {"p50": round(pct(excess, 50), 2), "p95": round(pct(excess, 95), 2)},
        "projected_overhead_ms": {
            "assumed_aws_ms": ASSUMED_AWS_MS,
            "p50": round(pct(projected, 50), 2),
            "p95": round(pct(projected, 95), 2),
        },
        "first_audio_before_llm_end": f"{sum(first_before_end)}/{turns}",
        "simulated_minutes": round(minutes, 3),
        "counted": usage,
        "usd_per_minute": {
            **{k: round(v, 7) for k, v in per_minute.items()},
            "total": round(total, 7),
            "recording_extra": round(recording, 7),
        },
        "aws_cost_model": model,
        "database": url.split(":", 1)[0],
        "targets": [
            harness.target("platform overhead per turn, p95", p95, 25.0, "ms"),
            harness.target(
                "turns whose first audio came after the LLM stream ended", turns - sum(first_before_end), 0, "turns"
            ),
            harness.target(
                "AWS cost per conversation minute, as measured against the doubles", total, COST_TARGET, "USD"
            ),
            harness.target(
                "AWS cost per conversation minute with vendor latency, sweeper, NAT, logs, X-Ray, SnapStart",
                model["total"],
                COST_TARGET,
                "USD",
            ),
        ],
    }
