"""Conversation turns: platform overhead per turn and AWS cost per conversation minute.

Runs the real ``functions/voice_ws/default.py`` handler (the ``$default`` Lambda) in-process against moto
(DynamoDB + API Gateway Management API) and SQLite, with provider doubles that inject realistic latencies:
STT 150 ms, LLM first token 250 ms (then 20 ms per token), TTS first byte 100 ms.

* Platform overhead = (the audio frame whose trailing silence ends the utterance arrives -> first audio
  frame posted back) - (150 + 250 + 100 ms injected). Everything else on that path is ours: VAD, DynamoDB
  state, audio assembly, history from the database, segmentation, the barge-in check before each post.
  Target p95 < 25 ms, and the first audio goes out before the LLM stream has ended.
* Cost per conversation minute: every frame of the simulated calls is counted (Lambda invocations and
  measured durations at 512 MB arm64, WebSocket messages in 32 KB units both ways, connection minutes,
  DynamoDB read/write units from item sizes, SQS usage batches, optional S3 recording PUTs) and priced at the
  public us-east-1 prices in shared/reference/voice-agent-field.md (S3 PUT: $0.005 per 1,000). The client
  streams audio continuously in 250 ms frames (server VAD), the costliest way to use the protocol.
  Target < $0.002 per minute. Not included: the database (RDS, a fixed monthly cost) and provider fees.

``python -m benchmarks conversation [--runs N]`` (N = turns measured, default 40).
"""

from __future__ import annotations

import base64
import json
import math
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks import harness

DEFAULT_TURNS = 40
INJECTED_MS = 150 + 250 + 100
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
CHUNK_MS = 250
REPLY = (
    "Sure. Our clinic opens at nine in the morning on weekdays. "
    "On Saturdays we open at ten and close at two. Is there anything else?"
)


def run(args: Any = None) -> dict[str, Any]:
    sys.path.insert(0, str(harness.ROOT))
    turns = getattr(args, "runs", None) or DEFAULT_TURNS
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    from moto import mock_aws

    with mock_aws():
        return _run(turns)


class CountingPoster:
    """The real API Gateway poster (moto), counting messages and 32 KB units, noting when audio first goes out."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.messages = 0
        self.units = 0
        self.first_audio_at: float | None = None

    def post(self, connection_id: str, data: bytes) -> bool:
        ok = self.inner.post(connection_id, data)
        if self.first_audio_at is None and data.startswith(b'{"type":"audio"'):
            self.first_audio_at = time.perf_counter()
        self.messages += 1
        self.units += max(1, math.ceil(len(data) / 32768))
        return ok

    def close(self, connection_id: str) -> None:
        self.inner.close(connection_id)


def spoken(text: str) -> bytes:
    """Real speech (eSpeak NG), so the server VAD sees what it sees on a call; a pure tone is not speech."""
    import subprocess

    from airies.audio.codecs import read_wav, resample_pcm16

    with tempfile.NamedTemporaryFile(suffix=".wav") as handle:
        subprocess.run(["espeak-ng", "-w", handle.name, text], check=True)
        pcm, rate = read_wav(Path(handle.name).read_bytes())
    return resample_pcm16(pcm, rate, 16000)


def _run(turns: int) -> dict[str, Any]:
    import boto3

    from airies.config import Settings
    from airies.db.engine import Database
    from airies.db.migrate import upgrade_head
    from airies.local.ws_gateway import load_voice_handlers
    from airies.schemas.agents import AgentCreate
    from airies.schemas.conversations import ConversationCreate
    from airies.services.accounts import AccountService
    from airies.services.agents import AgentService
    from airies.services.conversations import ConversationService, ConversationTokens
    from airies.services.sessions import SessionStore
    from airies.services.websocket import ApiGatewayPoster, WebSocketService
    from tests.doubles.conv_engines import FakeLLM, FakeSTT, FakeTTS, fake_engines, silence

    tmp = tempfile.mkdtemp(prefix="bench-conv-")
    url = os.environ.get("BENCH_DATABASE_URL") or f"sqlite:///{tmp}/bench.db"
    upgrade_head(url)
    database = Database(url, pool_size=2)
    settings = Settings(
        stage="local",
        data_dir=tmp,
        ws_token_secret="b" * 32,
        ws_management_url="https://bench.execute-api.us-east-1.amazonaws.com/prod",
    )
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    # The client streams in real time; the handlers see a clock that advances with the audio sent.
    sim = {"t": time.time()}
    store = SessionStore(ddb, "bench-ws-state", clock=lambda: sim["t"])
    store.ensure_table()
    poster = CountingPoster(
        ApiGatewayPoster(
            boto3.client("apigatewaymanagementapi", endpoint_url=settings.ws_management_url, region_name="us-east-1")
        )
    )
    llm = FakeLLM(reply=REPLY, first_token_s=0.250, per_token_s=0.020)
    engines = fake_engines(
        stt=FakeSTT(text="what time do you open", latency_s=0.150),
        llm=llm,
        tts=FakeTTS(first_byte_s=0.100, ms_per_char=65, chunk_ms=100, per_chunk_s=0.005),
    )
    usage_batches = {"n": 0}
    tokens = ConversationTokens(b"b" * 32)
    service = WebSocketService(
        settings,
        database,
        store,
        poster_factory=lambda endpoint: poster,
        engines=lambda session, account_id, config: engines,
        usage_sink=lambda session: (
            lambda events: usage_batches.__setitem__("n", usage_batches["n"] + math.ceil(len(events) / 10))
        ),
        credit_gate=lambda session: None,
        tokens=tokens,
        clock=lambda: sim["t"],
    )
    dispatch = load_voice_handlers()
    import voice_runtime

    voice_runtime.set_service(service)

    with database.session() as s:
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
        conversation, token, _ = ConversationService(s, settings, tokens=tokens).start_conversation(
            account.id, ConversationCreate(agent_id=agent.id)
        )
        cid = conversation.id

    # Time spent inside AWS SDK calls (moto, in this process): measured so the overhead can be split into
    # what the emulator costs and what our code costs.
    sdk_calls: list[tuple[float, float]] = []
    for client in (ddb, poster.inner.client):
        original = client._make_api_call

        def timed(operation: str, params: dict[str, Any], _original: Any = original) -> Any:
            start = time.perf_counter()
            try:
                return _original(operation, params)
            finally:
                sdk_calls.append((start, time.perf_counter()))

        client._make_api_call = timed

    def sdk_ms(lo: float, hi: float) -> float:
        spans = sorted((max(a, lo), min(b, hi)) for a, b in sdk_calls if b > lo and a < hi)
        total, cursor = 0.0, lo
        for a, b in spans:
            a = max(a, cursor)
            if b > a:
                total += b - a
                cursor = b
        return total * 1000

    sdk_share: list[float] = []
    lam = {"invocations": 0, "seconds": 0.0}
    ws_in_units = 0
    connection_id = "benchConn0001="

    def invoke(route: str, event: dict[str, Any]) -> float:
        lam["invocations"] += 1
        start = time.perf_counter()
        dispatch(route, event)
        took = time.perf_counter() - start
        lam["seconds"] += took
        return start

    ctx = {"domainName": "bench.execute-api.us-east-1.amazonaws.com", "stage": "prod", "connectionId": connection_id}
    invoke(
        "$connect",
        {
            "queryStringParameters": {"conversation_id": cid, "token": token},
            "requestContext": {**ctx, "routeKey": "$connect", "eventType": "CONNECT"},
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
                "requestContext": {**ctx, "routeKey": "$default", "eventType": "MESSAGE"},
            },
        )

    frame({"action": "start"})
    speech, pause = spoken("what time do you open on saturday morning and do you take walk in patients"), silence(750)
    seq = 0
    overheads: list[float] = []
    first_before_end: list[bool] = []
    streamed_ms = 0.0
    for _ in range(turns):
        poster.first_audio_at = None
        trigger = None
        for pcm in (speech, pause):
            for offset in range(0, len(pcm), CHUNK_MS * 32):
                piece = pcm[offset : offset + CHUNK_MS * 32]
                started = frame({"action": "audio", "seq": seq, "data": base64.b64encode(piece).decode()})
                seq += 1
                streamed_ms += len(piece) / 32
                sim["t"] += len(piece) / 32 / 1000
                if poster.first_audio_at is not None and trigger is None:
                    trigger = started  # this frame's trailing silence ended the utterance and ran the turn
        if trigger is None or poster.first_audio_at is None:
            sent = ddb.get_item(TableName="bench-ws-state", Key={"pk": {"S": f"conv#{cid}"}, "sk": {"S": "session"}})
            raise RuntimeError(f"no turn ran; posts so far {poster.messages}; session {sent.get('Item')}")
        overheads.append((poster.first_audio_at - trigger) * 1000 - INJECTED_MS)
        sdk_share.append(sdk_ms(trigger, poster.first_audio_at))
        first_before_end.append(poster.first_audio_at < llm.finished_at[-1])
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
    session_kb = math.ceil(len(json.dumps(session_item)) / 1024)
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
    own = [o - s_ for o, s_ in zip(overheads, sdk_share, strict=True)]
    own_p95 = harness.percentile(own, 95)
    # The SDK figure is the union of SDK calls overlapping the window; some of them overlap provider waits (the
    # prefetched barge-in checks, the background chunk write), so "outside" is only a lower bound of our share.
    print(
        f"  AWS SDK (moto) calls overlapping that window: p50 {harness.percentile(sdk_share, 50):.1f} ms; "
        f"overhead outside them (a lower bound): p50 {harness.percentile(own, 50):.1f} ms, p95 {own_p95:.1f} ms"
    )
    print(f"  overhead per turn: p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {max(overheads):.1f} ms over {turns} turns")
    print(f"  first audio before the LLM stream ended: {sum(first_before_end)}/{turns} turns")
    print(
        "  AWS $/conversation minute: "
        + ", ".join(f"{k} {v:.6f}" for k, v in per_minute.items())
        + f" = {total:.6f} (+{recording:.6f} with recording)"
    )
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
        "overhead_inside_aws_sdk_calls_ms": {
            "p50": round(harness.percentile(sdk_share, 50), 2),
            "p95": round(harness.percentile(sdk_share, 95), 2),
        },
        "overhead_outside_aws_sdk_calls_ms": {"p50": round(harness.percentile(own, 50), 2), "p95": round(own_p95, 2)},
        "first_audio_before_llm_end": f"{sum(first_before_end)}/{turns}",
        "simulated_minutes": round(minutes, 3),
        "counted": usage,
        "usd_per_minute": {
            **{k: round(v, 7) for k, v in per_minute.items()},
            "total": round(total, 7),
            "recording_extra": round(recording, 7),
        },
        "database": url.split(":", 1)[0],
        "targets": [
            harness.target("platform overhead per turn, p95", p95, 25.0, "ms"),
            harness.target(
                "turns whose first audio came after the LLM stream ended", turns - sum(first_before_end), 0, "turns"
            ),
            harness.target("AWS cost per conversation minute", total, 0.002, "USD"),
        ],
    }


def main() -> dict[str, Any]:
    result = run()
    for item in result["targets"]:
        print(
            f"  [{'ok' if item['ok'] else 'MISS'}] {item['name']}: {item['value']} {item['unit']} (<= {item['limit']})"
        )
    return result


if __name__ == "__main__":
    main()
