"""Phone turns over Twilio ConversationRelay: relay turn overhead, and AWS cost per phone minute (our side).

Runs the real ``functions/voice_ws`` handlers (``$connect``, ``$default``) against moto in a separate process
(DynamoDB + API Gateway Management API; AWS calls are HTTP round trips, as on AWS) and SQLite, with an LLM double
whose first token comes after 250 ms (then 20 ms per token). The per-turn credit check is the real billing one.

* Relay turn overhead = (a ``prompt`` with ``last: true`` arrives -> the first ``text`` token is posted back) - the
  injected 250 ms of LLM first-token latency. Everything else on that path is ours: parsing, the control-frame
  limit, the live state in DynamoDB, claiming the turn, the database reads and credit check, the barge-in check
  before the post, the translation to the relay's messages. Target p95 < 10 ms.
* Baseline, in the same run and interleaved turn by turn: the same text turn from a protocol v1 web client
  (``{"action": "text"}`` -> its first ``agent_text`` frame), which streams sentences and then synthesises speech
  (the TTS double answers at once); the relay streams the LLM's tokens.
* AWS cost per phone minute (our side only; Twilio's relay and voice minutes are the customer's carrier cost,
  booked per call from pricing.json): every message of the simulated calls is counted (Lambda invocations, their
  measured time at 512 MB arm64 plus the real LLM's time, as the invocation stays open while the model writes;
  WebSocket messages in and out in 32 KB units (each token is a message), connection minutes; DynamoDB units; SQS
  usage batches), at ``PHONE_TURNS_PER_MINUTE`` caller turns a minute, with ``cost_model``'s us-east-1 prices and
  its per-call sweeper line. Target < $0.002 per phone minute.
  Not included: the database (RDS, a fixed monthly cost), the NAT gateway's traffic to the LLM (~20 KB a turn,
  ``cost_model.Assumptions.llm_kb_per_turn``; it is added) and provider fees.

The handshake's Twilio signature is not on the measured path (checked once per call at ``$connect``); the run uses
a verifier that accepts every handshake, so no phone number is needed.

``python -m benchmarks relay [--runs N]`` (N = turns measured per protocol, default 40).
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any

from benchmarks import cost_model, harness
from benchmarks.bench_conversation import (
    WS_DOMAIN,
    CountingPoster,
    aws_env_defaults,
    bench_database,
    moto_server,
    request_context,
    started_conversations,
    voice_stack,
)

DEFAULT_TURNS = 40
LLM_FIRST_TOKEN_S = 0.250
LLM_PER_TOKEN_S = 0.020
OVERHEAD_TARGET_MS = 10.0
COST_TARGET = 0.002  # USD of AWS per phone minute
PHONE_TURNS_PER_MINUTE = 4.0  # a caller turn and its reply every 15 s
LLM_SECONDS_PER_TURN = 2.0  # a real model's reply: first token ~0.5 s, then streaming; the invocation waits for it
LAMBDA_GB = 0.5  # VoiceMessageFunction MemorySize
# An assumed in-region DynamoDB round trip from a Lambda (the upper end of the usual 3-5 ms for a small item), for
# the projection; moto's round trips on a shared machine are several times longer. An assumption, not a measurement.
ASSUMED_DDB_MS = 5.0
TIMED_DDB = ("count_control_frame", "get", "begin_turn", "turn_status")
REPLY = "Sure. Our clinic opens at nine in the morning on weekdays, and at ten on Saturdays. Anything else?"
QUESTION = "What time do you open on Saturday?"


def critical_wait(
    calls: list[tuple[str, float, float]], start: float, llm_called: float, first_text_at: float
) -> tuple[float, int]:
    """Seconds the first token waited on DynamoDB, and the round trips it waited for: calls that ran between the
    message's arrival and the LLM call, and the part of calls still running when the LLM's first token came."""
    token_at = llm_called + LLM_FIRST_TOKEN_S
    waited, trips = 0.0, 0
    for _name, began, ended in calls:
        if began < start or began > first_text_at:
            continue
        part = (min(ended, llm_called) - began) if began < llm_called else 0.0
        part += max(0.0, min(ended, first_text_at) - max(began, token_at))
        if part > 0:
            waited += part
            trips += 1
    return waited, trips


def run(args: Any = None) -> dict[str, Any]:
    sys.path.insert(0, str(harness.ROOT))
    turns = getattr(args, "runs", None) or DEFAULT_TURNS
    aws_env_defaults()
    with moto_server() as endpoint:
        result = _run(turns, endpoint)
    result["aws"] = "moto server, separate process"
    return result


def _run(turns: int, endpoint: str) -> dict[str, Any]:
    import boto3
    from botocore.config import Config

    from airies.conversations.live import ApiGatewayPoster
    from airies.conversations.sessions import SessionStore
    from tests.doubles.conv_engines import FakeLLM, FakeSTT, FakeTTS, fake_engines

    database, url, tmp = bench_database("bench-relay-")
    ddb = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=endpoint)
    store = SessionStore(ddb, "bench-relay-state")
    store.ensure_table()
    # The live state's DynamoDB calls of a turn, to find those its first token waited for: ended before the LLM was
    # called, or still running when the LLM's first token came (the claim, the barge-in check before the post).
    ddb_calls: list[tuple[str, float, float]] = []
    for method in TIMED_DDB:
        original = getattr(store, method)

        def timed(*args: Any, _original: Any = original, _name: str = method, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                ddb_calls.append((_name, began, time.perf_counter()))

        setattr(store, method, timed)
    management = boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 2}),
    )
    # The first reply text of a turn (a relay ``text`` token, or a web ``agent_text`` frame), as the post is issued.
    poster = CountingPoster(
        ApiGatewayPoster(management), (b'{"type":"text"', b'{"type":"agent_text"'), stamp_before_post=True
    )
    llm = FakeLLM(reply=REPLY, first_token_s=LLM_FIRST_TOKEN_S, per_token_s=LLM_PER_TOKEN_S)
    engines = fake_engines(stt=FakeSTT(), llm=llm, tts=FakeTTS())
    llm_called: list[float] = []

    def timed_llm(request: Any) -> Any:
        llm_called.append(time.perf_counter())
        return llm(request)

    engines.llm = timed_llm
    stack = voice_stack(
        database,
        tmp,
        store,
        poster,
        engines,
        settings={"public_ws_url": f"wss://{WS_DOMAIN}/prod", "ws_control_frames_per_second": 1000},
        relay_verifier=lambda conversation_id, account_id, url, signature: None,  # not on the measured path
    )
    dispatch, usage_batches = stack.dispatch, stack.usage_batches
    started = dict(zip(("relay", "web"), started_conversations(stack, 2), strict=True))

    lam = {"invocations": 0, "seconds": 0.0}
    ws_in_units = 0

    def connect(name: str, connection_id: str) -> None:
        cid, token = started[name]
        query = {"conversation_id": cid, "token": token, **({"relay": "twilio"} if name == "relay" else {})}
        headers = {"Host": WS_DOMAIN, "X-Twilio-Signature": "bench"}
        answer = dispatch(
            "$connect",
            {
                "queryStringParameters": query,
                "headers": headers,
                "multiValueHeaders": {k: [v] for k, v in headers.items()},
                "isBase64Encoded": False,
                "requestContext": request_context(connection_id, "$connect", "CONNECT"),
            },
        )
        if answer.get("statusCode") != 200:
            raise RuntimeError(f"{name} handshake refused: {answer}")

    def send(connection_id: str, body: dict[str, Any], *, count: bool) -> float:
        nonlocal ws_in_units
        raw = json.dumps(body)
        event = {
            "body": raw,
            "isBase64Encoded": False,
            "requestContext": request_context(connection_id, "$default", "MESSAGE"),
        }
        start = time.perf_counter()
        dispatch("$default", event)
        if count:
            lam["invocations"] += 1
            lam["seconds"] += time.perf_counter() - start
            ws_in_units += max(1, math.ceil(len(raw) / 32768))
        return start

    relay_conn, web_conn = "benchRelay001=", "benchWeb00001="
    connect("relay", relay_conn)
    connect("web", web_conn)
    send(relay_conn, {"type": "setup", "callSid": "CA" + "0" * 32, "accountSid": "AC" + "0" * 32}, count=True)
    send(web_conn, {"action": "start"}, count=False)

    overheads: dict[str, list[float]] = {"relay": [], "web": []}
    before_llm: dict[str, list[float]] = {"relay": [], "web": []}
    critical_ddb: list[float] = []
    critical_trips: list[int] = []
    relay_posts = relay_units = relay_bytes = 0
    relay_ops = {"write": 0, "read": 0}
    for _ in range(turns):
        for name, connection_id, body in (
            ("relay", relay_conn, {"type": "prompt", "voicePrompt": QUESTION, "lang": "en-US", "last": True}),
            ("web", web_conn, {"action": "text", "text": QUESTION}),
        ):
            management.delete_connection(ConnectionId=connection_id)  # moto keeps every posted byte; drop them
            poster.first_at = None
            units, sent, out = poster.units, poster.messages, poster.bytes_out
            w, r = store.ops["write"], store.ops["read"]
            ddb_calls.clear()
            start = send(connection_id, body, count=name == "relay")
            if poster.first_at is None:
                raise RuntimeError(f"the {name} turn posted no text")
            overheads[name].append((poster.first_at - start) * 1000 - LLM_FIRST_TOKEN_S * 1000)
            before_llm[name].append((llm_called[-1] - start) * 1000)
            if name == "relay":
                waited, trips = critical_wait(ddb_calls, start, llm_called[-1], poster.first_at)
                critical_ddb.append(waited * 1000)
                critical_trips.append(trips)
                relay_bytes += poster.bytes_out - out
                relay_ops["write"] += store.ops["write"] - w
                relay_ops["read"] += store.ops["read"] - r
                relay_posts += poster.messages - sent
                relay_units += poster.units - units

    pct = harness.percentile
    stats = {
        name: {
            "p50": round(pct(v, 50), 2),
            "p95": round(pct(v, 95), 2),
            "min": round(min(v), 2),
            "max": round(max(v), 2),
        }
        for name, v in overheads.items()
    }
    own = [o - c for o, c in zip(overheads["relay"], critical_ddb, strict=True)]
    projected = [o + n * ASSUMED_DDB_MS for o, n in zip(own, critical_trips, strict=True)]
    stats["relay"]["critical_dynamodb_round_trips_p50"] = pct(critical_trips, 50)
    stats["relay"]["critical_dynamodb_ms_p50"] = round(pct(critical_ddb, 50), 2)
    stats["relay"]["without_dynamodb_ms_p50"] = round(pct(own, 50), 2)
    stats["relay"]["without_dynamodb_ms_p95"] = round(pct(own, 95), 2)
    stats["relay"]["projected_ms_p50"] = round(pct(projected, 50), 2)
    stats["relay"]["projected_ms_p95"] = round(pct(projected, 95), 2)
    for name, v in before_llm.items():
        stats[name]["before_llm_call_p50"] = round(pct(v, 50), 2)
        stats[name]["before_llm_call_p95"] = round(pct(v, 95), 2)
    print(
        f"  relay turn overhead (prompt -> first text token, minus {LLM_FIRST_TOKEN_S * 1000:.0f} ms of LLM): "
        f"p50 {stats['relay']['p50']} ms, p95 {stats['relay']['p95']} ms over {turns} turns; of which before the "
        f"LLM call p50 {stats['relay']['before_llm_call_p50']} ms, p95 {stats['relay']['before_llm_call_p95']} ms"
    )
    print(
        f"  of it, waited on DynamoDB (p50 {stats['relay']['critical_dynamodb_round_trips_p50']} round trips): p50 "
        f"{stats['relay']['critical_dynamodb_ms_p50']} ms on moto; the rest p50 {stats['relay']['without_dynamodb_ms_p50']}"
        f" ms, p95 {stats['relay']['without_dynamodb_ms_p95']} ms; projected with {ASSUMED_DDB_MS:g} ms DynamoDB round "
        f"trips: p50 {stats['relay']['projected_ms_p50']} ms, p95 {stats['relay']['projected_ms_p95']} ms"
    )
    print(
        f"  baseline, web text turn (text -> first agent_text): p50 {stats['web']['p50']} ms, "
        f"p95 {stats['web']['p95']} ms"
    )

    # Cost per phone minute: the measured relay turns, scaled to PHONE_TURNS_PER_MINUTE turns a minute.
    minutes = turns / PHONE_TURNS_PER_MINUTE
    session_item = ddb.get_item(
        TableName="bench-relay-state", Key={"pk": {"S": f"conv#{started['relay'][0]}"}, "sk": {"S": "session"}}
    )["Item"]
    session_kb = math.ceil(harness.item_bytes(session_item) / 1024)  # DynamoDB's size: names + values
    wru = relay_ops["write"] * session_kb
    rru = relay_ops["read"] * max(1, math.ceil(session_kb / 4))
    p = cost_model.Prices()
    a = cost_model.Assumptions()
    measured_gb_s = lam["seconds"] * LAMBDA_GB
    llm_gb_s = max(0.0, turns * LLM_SECONDS_PER_TURN * LAMBDA_GB - measured_gb_s)
    lines = {
        "lambda (measured relay messages + the real LLM's time per turn)": (
            lam["invocations"] * p.lambda_request + (measured_gb_s + llm_gb_s) * p.lambda_gb_s
        )
        / minutes,
        "websocket messages (prompts in, tokens out) + connection minutes": (ws_in_units + relay_units)
        * p.ws_message
        / minutes
        + p.ws_connection_minute,
        "dynamodb (measured: live state, turn claims, barge-in checks)": (
            wru * p.ddb_write_unit + rru * p.ddb_read_unit
        )
        / minutes,
        "sqs (usage events)": usage_batches["n"] * p.sqs_request / minutes,
        "sweeper (index query, per call)": a.sweeps_per_call_minute
        * (math.ceil(a.session_item_kb / 4) * p.ddb_read_unit + (math.ceil(a.session_item_kb) + 2) * p.ddb_write_unit)
        + a.sweeper_shards * 0.5 * p.ddb_read_unit / a.concurrent_calls,
        "nat gateway data (LLM traffic + tokens to the management API)": (
            a.llm_kb_per_turn * 1024 * PHONE_TURNS_PER_MINUTE + relay_bytes / minutes
        )
        / cost_model.GB
        * p.nat_gb,
        "data transfer out (tokens to the carrier)": relay_bytes / minutes / cost_model.GB * p.data_out_gb,
        "cloudwatch logs (invocation lines + EMF)": (
            lam["invocations"] / minutes * a.log_bytes_per_invocation + PHONE_TURNS_PER_MINUTE * a.emf_bytes_per_turn
        )
        / cost_model.GB
        * p.logs_ingest_gb,
        "x-ray traces (5% sampled)": lam["invocations"] / minutes * a.xray_sampled_fraction * p.xray_trace,
    }
    total = sum(lines.values())
    print(f"  AWS cost per phone minute (our side, {PHONE_TURNS_PER_MINUTE:g} turns a minute), USD:")
    for line, value in lines.items():
        print(f"    {line:<72} {value:.6f}")
    verdict = "met" if total < COST_TARGET else "NOT met"
    print(f"    {'total':<72} {total:.6f} (target < {COST_TARGET}: {verdict})")
    database.dispose()
    counted = {
        "relay_turns": turns,
        "lambda_invocations": lam["invocations"],
        "lambda_measured_seconds": round(lam["seconds"], 3),
        "ws_in_units": ws_in_units,
        "ws_out_units": relay_units,
        "ws_out_messages": relay_posts,
        "ws_out_bytes": relay_bytes,
        "ddb_write_units": wru,
        "ddb_read_units": rru,
        "session_item_kb": session_kb,
        "sqs_requests": usage_batches["n"],
    }
    return {
        "turns": turns,
        "injected_llm_first_token_ms": LLM_FIRST_TOKEN_S * 1000,
        "relay_overhead_ms": stats["relay"],
        "baseline_web_text_overhead_ms": stats["web"],
        "phone_turns_per_minute": PHONE_TURNS_PER_MINUTE,
        "llm_seconds_per_turn": LLM_SECONDS_PER_TURN,
        "counted": counted,
        "usd_per_phone_minute": {**{k: round(v, 8) for k, v in lines.items()}, "total": round(total, 8)},
        "database": url.split(":", 1)[0],
        "targets": [
            harness.target("relay turn overhead, p95 (moto)", stats["relay"]["p95"], OVERHEAD_TARGET_MS, "ms"),
            harness.target(
                f"relay turn overhead, p95, projected with {ASSUMED_DDB_MS:g} ms DynamoDB round trips",
                stats["relay"]["projected_ms_p95"],
                OVERHEAD_TARGET_MS,
                "ms",
            ),
            harness.target("AWS cost per phone minute (our side)", total, COST_TARGET, "USD", digits=6),
        ],
    }
