"""AWS cost per conversation minute: what the conversation benchmark measured, plus what it cannot measure.

``bench_conversation`` counts every Lambda invocation, WebSocket message, DynamoDB unit and SQS request of simulated
calls against doubles that answer in milliseconds. On AWS a call also pays for what this module adds, each line
from a stated assumption (``Assumptions``; us-east-1 list prices, November 2026):

* Lambda time of real vendors: a turn keeps its invocation open while STT, the LLM and TTS answer, 3-5 s with real
  vendors (``turn_lambda_seconds``) instead of the doubles' fraction of a second.
* The sweeper as the code runs it: each minute it Queries the 16 shards of the sparse ``live-sessions`` index
  (shared by all live calls); a live call is due about once a minute (its silence deadline passes between two
  runs), so its session is read (one consistent read per 4 KB) and its next deadline written back (the session
  item's write units, plus two index writes: ``sweep_at`` is the index's sort key). Stale items (chunks, ended
  sessions) are never read: ``bench_sweeper`` shows its reads flat with table size. For comparison the total is
  also printed with the sweeper that Scanned the whole table every minute, reading each 8 KB chunk about once
  per minute of its former 2-hour TTL.
* Chunks as configured: a turn's used chunks are deleted when ``AIRIES_WS_DELETE_USED_CHUNKS`` is set
  (``Assumptions.delete_used_chunks``, off by default as in the settings): a DeleteItem costs write units by
  item size (8 per 8 KB chunk), as much as the put. Otherwise their short TTL removes them for free and the
  delete is priced beside the total.
* NAT gateway: data processed both ways for vendor traffic (caller audio to STT, TTS audio back, LLM tokens) and
  for the agent audio posted to the WebSocket management API (a public endpoint); the gateway's hourly charge is a
  fixed monthly cost, printed separately and amortised at ``monthly_minutes``.
* Data transfer out: the agent audio the WebSocket API sends to callers.
* CloudWatch Logs ingestion (Lambda's own lines and Powertools logs per invocation, EMF metrics per turn) and
  X-Ray traces (default sampling: 1 per second, then 5 percent).
* SnapStart: a restore per new execution environment of each voice function with SnapStart (``restores_per_minute``);
  the snapshot cache is fixed.

Run through ``python -m benchmarks conversation`` (which prints the full breakdown); ``breakdown`` is pure and
unit-tested (tests/unit/test_bench_cost_model.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

GB = 1024**3


@dataclass(frozen=True)
class Prices:
    lambda_request: float = 0.20 / 1e6
    lambda_gb_s: float = 0.0000133334  # arm64
    ws_message: float = 1.00 / 1e6  # per 32 KB unit
    ws_connection_minute: float = 0.25 / 1e6
    ddb_write_unit: float = 0.625 / 1e6
    ddb_read_unit: float = 0.125 / 1e6
    sqs_request: float = 0.40 / 1e6
    nat_gb: float = 0.045
    nat_hour: float = 0.045  # per gateway (one per AZ)
    data_out_gb: float = 0.09
    logs_ingest_gb: float = 0.50
    xray_trace: float = 5.00 / 1e6
    snapstart_restore_gb: float = 0.0001397998
    snapstart_cache_gb_s: float = 0.0000015046


@dataclass(frozen=True)
class Assumptions:
    turn_lambda_seconds: float = 4.0  # 3-5 s of Lambda time per turn with real vendors
    lambda_gb: float = 0.5  # VoiceMessageFunction MemorySize
    chunk_kb: float = 8.0  # a 250 ms caller audio chunk, base64 in DynamoDB
    scan_minutes_per_chunk: float = 120.0  # a scanning sweeper read a chunk every minute of its former 2-hour TTL
    sweeper_shards: int = 16  # live-sessions index partitions queried each minute
    sweeps_per_call_minute: float = 1.0  # a live call is due about once a run (silence deadline 30 s, runs 60 s)
    session_item_kb: float = 2.0  # a live session item (state, counters; its agent config is an item of its own)
    delete_used_chunks: bool = False  # AIRIES_WS_DELETE_USED_CHUNKS
    concurrent_calls: int = 100  # calls sharing one sweeper run (fixed costs per minute are split across them)
    sweeper_seconds: float = 0.3  # one sweeper run of 100 due-or-not sessions, 512 MB
    caller_audio_kb_per_min: float = 960.0  # 16 kHz PCM16 while speaking (half the minute) to the STT vendor
    tts_audio_kb_per_min: float = 960.0  # the same back from the TTS vendor for the agent's half
    llm_kb_per_turn: float = 20.0  # prompt + streamed tokens
    log_bytes_per_invocation: float = 700.0  # START/END/REPORT lines + one Powertools line at INFO
    emf_bytes_per_turn: float = 1500.0  # one EMF document per turn (latencies, usage)
    xray_sampled_fraction: float = 0.05
    restores_per_minute: float = 0.05  # one new voice environment per 20 conversation minutes, per function
    snapstart_voice_functions: int = 2  # VoiceMessageFunction and VoiceConnectFunction restore, 512 MB each
    nat_gateways: int = 2  # one per AZ
    monthly_minutes: float = 1_000_000.0  # conversation minutes a month that share the fixed costs


@dataclass(frozen=True)
class Measured:
    """What the benchmark counted over ``minutes`` of simulated conversation."""

    minutes: float
    turns: int
    lambda_invocations: int
    lambda_gb_seconds: float  # measured against the doubles
    turn_gb_seconds: float  # the part of it spent in invocations that ran a turn
    ws_in_units: int
    ws_out_units: int
    ws_out_bytes: int  # agent audio and control frames sent to the caller
    ddb_write_units: float
    ddb_read_units: float
    sqs_requests: int
    stored_chunks: int


def breakdown(m: Measured, a: Assumptions = Assumptions(), p: Prices = Prices()) -> dict[str, Any]:
    """USD per conversation minute, line by line; ``total`` is what the code costs (the sweeper queries the
    index; used chunks deleted or left to their short TTL as ``delete_used_chunks`` says),
    ``total_with_scanning_sweeper`` what it cost while the sweeper scanned the table."""
    per_min = 1.0 / m.minutes
    turns_per_min = m.turns * per_min
    chunks_per_min = m.stored_chunks * per_min
    lines: dict[str, float] = {}

    # Measured, with the doubles' turn time replaced by real vendors' time.
    vendor_gb_s = max(0.0, m.turns * a.turn_lambda_seconds * a.lambda_gb - m.turn_gb_seconds)
    lines["lambda (measured frames + turns at real vendor latency)"] = (
        m.lambda_invocations * p.lambda_request + (m.lambda_gb_seconds + vendor_gb_s) * p.lambda_gb_s
    ) * per_min
    lines["websocket messages + connection minutes"] = (m.ws_in_units + m.ws_out_units) * p.ws_message * per_min + (
        p.ws_connection_minute
    )
    lines["dynamodb (measured: session, chunks, counters)"] = (
        m.ddb_write_units * p.ddb_write_unit + m.ddb_read_units * p.ddb_read_unit
    ) * per_min
    lines["sqs (usage events)"] = m.sqs_requests * p.sqs_request * per_min

    # The sweeper: shard queries (eventually consistent, 0.5 unit each) shared by the live calls; per due call a
    # consistent read of its session and the write of its next deadline (item + old and new index entries).
    shared_queries = a.sweeper_shards * 0.5 * p.ddb_read_unit / a.concurrent_calls
    due_reads = a.sweeps_per_call_minute * math.ceil(a.session_item_kb / 4) * p.ddb_read_unit
    reschedule = a.sweeps_per_call_minute * (math.ceil(a.session_item_kb) + 2) * p.ddb_write_unit
    sweeper_lambda = (p.lambda_request + a.sweeper_seconds * 0.5 * p.lambda_gb_s) / a.concurrent_calls
    lines["sweeper (index query, per call)"] = shared_queries + due_reads + reschedule + sweeper_lambda

    explicit_delete = chunks_per_min * a.chunk_kb * p.ddb_write_unit
    if a.delete_used_chunks:
        lines["dynamodb (delete used chunks: AIRIES_WS_DELETE_USED_CHUNKS)"] = explicit_delete

    lines["nat gateway data (vendors both ways + agent audio to the management API)"] = (
        (
            a.caller_audio_kb_per_min * 1024
            + a.tts_audio_kb_per_min * 1024
            + a.llm_kb_per_turn * 1024 * turns_per_min
            + m.ws_out_bytes * per_min
        )
        / GB
        * p.nat_gb
    )
    lines["data transfer out (agent audio to callers)"] = m.ws_out_bytes * per_min / GB * p.data_out_gb
    lines["cloudwatch logs (invocation lines + EMF)"] = (
        (m.lambda_invocations * per_min * a.log_bytes_per_invocation + turns_per_min * a.emf_bytes_per_turn)
        / GB
        * p.logs_ingest_gb
    )
    lines["x-ray traces (5% sampled)"] = m.lambda_invocations * per_min * a.xray_sampled_fraction * p.xray_trace
    lines["snapstart restores"] = (
        a.snapstart_voice_functions * a.restores_per_minute * a.lambda_gb * p.snapstart_restore_gb
    )

    total = sum(lines.values())
    # The comparison: a sweeper that Scanned the table read every chunk once a minute for its (2-hour) TTL.
    scan = chunks_per_min * a.scan_minutes_per_chunk * (a.chunk_kb / 4) * 0.5 * p.ddb_read_unit
    not_in_total = {"a sweeper scanning the table (before the index; chunks kept 2 hours)": round(scan, 8)}
    if not a.delete_used_chunks:
        not_in_total["explicit delete of used chunks (a short TTL does it free)"] = round(explicit_delete, 8)
    fixed_monthly = {
        "nat gateways (hours)": a.nat_gateways * p.nat_hour * 24 * 30,
        "snapstart cache (API 1 GB + $connect and $default 0.5 GB each, one version each)": (
            (1.0 + a.snapstart_voice_functions * a.lambda_gb) * 30 * 24 * 3600 * p.snapstart_cache_gb_s
        ),
    }
    fixed_per_minute = sum(fixed_monthly.values()) / a.monthly_minutes
    return {
        "usd_per_minute": {k: round(v, 8) for k, v in lines.items()},
        "total": round(total, 8),
        "total_with_scanning_sweeper": round(total + scan, 8),
        "not_in_total": not_in_total,
        "fixed_monthly_usd": {k: round(v, 2) for k, v in fixed_monthly.items()},
        "fixed_per_minute_at_monthly_minutes": round(fixed_per_minute, 8),
        "total_with_fixed": round(total + fixed_per_minute, 8),
        "assumptions": asdict(a),
    }


def print_breakdown(result: dict[str, Any], target: float) -> None:
    print("  AWS cost per conversation minute (USD), with what the doubles cannot show:")
    for name, value in result["usd_per_minute"].items():
        print(f"    {name:<82} {value:.6f}")
    chunks = "deleted once used" if result["assumptions"]["delete_used_chunks"] else "expire by TTL"
    print(f"    {f'total (index sweeper, chunks {chunks})':<82} {result['total']:.6f}")
    for name, value in result["not_in_total"].items():
        print(f"    + {name:<80} {value:.6f}")
    print(
        f"    {'total with a sweeper scanning the table (for comparison)':<82} {result['total_with_scanning_sweeper']:.6f}"
    )
    fixed = ", ".join(f"{k} ${v}" for k, v in result["fixed_monthly_usd"].items())
    minutes = result["assumptions"]["monthly_minutes"]
    print(
        f"    fixed per month: {fixed}; at {minutes:,.0f} minutes/month: +{result['fixed_per_minute_at_monthly_minutes']:.6f}"
    )
    verdict = "met" if result["total"] < target else "NOT met"
    print(
        f"    target < {target} per minute: {verdict} ({result['total']:.6f}); with fixed costs {result['total_with_fixed']:.6f}"
    )
