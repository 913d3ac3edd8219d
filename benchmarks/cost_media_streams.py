"""Raw phone media (Twilio Media Streams: 8 kHz mu-law, one 20 ms frame per WebSocket message) on AWS: platform cost
per phone minute of the two ways to take it in, our side only (Twilio's own fees excluded).

(a) every frame straight into the WebSocket API: one API Gateway message, one Lambda invocation and one DynamoDB
    write per frame (the frame appended to the call's audio buffer, the live session read with it);
(b) a small long-lived bridge on ECS Fargate that holds Twilio's WebSocket, aggregates frames into our protocol's
    200 ms chunks and forwards those to the WebSocket API (which then does per chunk what (a) does per frame).

Both pay the agent's audio back to the caller (sent in frames of up to 3,000 ms while the agent speaks) and the data transfer
out of that audio. API Gateway, Lambda and DynamoDB prices are the conversation cost model's (``cost_model.Prices``,
us-east-1 list prices); the Fargate and load balancer prices are below, each with its source.

    python -m benchmarks.cost_media_streams        # prints both breakdowns and the fixed costs of (b)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from airies.conversations.protocol import BYTES_PER_MS, MAX_FRAME_BYTES, MAX_OUT_CHUNK_MS
from benchmarks.cost_model import Prices

# AWS Fargate, Linux/ARM (Graviton), us-east-1: https://aws.amazon.com/fargate/pricing/
FARGATE_ARM_VCPU_HOUR = 0.03238
FARGATE_ARM_GB_HOUR = 0.00356
# Application Load Balancer, us-east-1 (WebSockets to the bridge): https://aws.amazon.com/elasticloadbalancing/pricing/
ALB_HOUR = 0.0225
ALB_LCU_HOUR = 0.008
ALB_LCU_GB_PER_HOUR = 1.0  # one LCU processes 1 GB an hour for instance/IP targets (the dimension that binds here)

MB = 1024**2
AUDIO_FRAME_FIELDS_BYTES = 200  # an audio frame's JSON besides its data: type, turn id, seq, encoding, rate
GB = 1024**3


@dataclass(frozen=True)
class Call:
    frame_ms: int = 20  # Twilio Media Streams: one mu-law frame per message
    chunk_ms: int = 200  # our protocol's caller audio chunk (what the bridge forwards)
    agent_chunk_ms: int = MAX_OUT_CHUNK_MS  # the agent's audio back to the caller, per message
    agent_talk_fraction: float = 0.5  # the agent speaks half the call
    frame_lambda_ms: float = 15.0  # one invocation: parse, read the live session, append to the buffer
    lambda_gb: float = 0.5
    reads_per_message: float = 1.0  # the live session, strongly consistent (1 read unit up to 4 KB)
    writes_per_message: float = 1.0  # the frame or chunk appended (1 write unit up to 1 KB: a 20 ms frame is ~0.3 KB)
    chunk_write_units: float = 5.0  # a 200 ms chunk: 1.6 KB of mu-law, ~4.3 KB as base64 JSON -> 5 write units
    audio_bytes_per_second: float = 8000.0  # mu-law, one direction
    json_overhead: float = 1.4  # base64 (4/3) plus the JSON envelope of each media message

    @property
    def agent_units_per_message(self) -> int:
        """32 KB units API Gateway meters an agent audio frame in: base64 PCM16 plus its JSON fields."""
        return math.ceil((self.agent_chunk_ms * BYTES_PER_MS * 4 / 3 + AUDIO_FRAME_FIELDS_BYTES) / MAX_FRAME_BYTES)


@dataclass(frozen=True)
class Bridge:
    vcpu: float = 0.25
    memory_gb: float = 0.5
    calls_per_task: int = 25  # decode, aggregate and forward 25 calls' frames: a few percent of a vCPU each
    min_tasks: int = 2  # one per AZ, always on


def per_minute_direct(call: Call = Call(), p: Prices = Prices()) -> dict[str, float]:
    """(a): USD per phone minute, by line."""
    frames = 60_000 / call.frame_ms
    agent_units = 60_000 / call.agent_chunk_ms * call.agent_talk_fraction * call.agent_units_per_message
    audio_out_gb = call.audio_bytes_per_second * 60 * call.agent_talk_fraction * call.json_overhead / GB
    return {
        "api_gateway_messages_in": frames * p.ws_message,
        "api_gateway_messages_out": agent_units * p.ws_message,
        "api_gateway_connection_minute": p.ws_connection_minute,
        "lambda_requests": frames * p.lambda_request,
        "lambda_duration": frames * call.frame_lambda_ms / 1000 * call.lambda_gb * p.lambda_gb_s,
        "dynamodb_writes": frames * call.writes_per_message * p.ddb_write_unit,
        "dynamodb_reads": frames * call.reads_per_message * p.ddb_read_unit,
        "data_transfer_out": audio_out_gb * p.data_out_gb,
        "nat_processing": audio_out_gb * p.nat_gb,  # the agent's audio posted to the management API
    }


def per_minute_bridge(
    concurrent_calls: float, call: Call = Call(), bridge: Bridge = Bridge(), p: Prices = Prices()
) -> dict[str, float]:
    """(b) at ``concurrent_calls`` average concurrent phone calls: USD per phone minute, by line. The bridge's
    always-on tasks and the load balancer's hour are shared by the calls of that minute."""
    chunks = 60_000 / call.chunk_ms
    agent_units = 60_000 / call.agent_chunk_ms * call.agent_talk_fraction * call.agent_units_per_message
    tasks = max(bridge.min_tasks, -(-concurrent_calls // bridge.calls_per_task))
    task_hour = bridge.vcpu * FARGATE_ARM_VCPU_HOUR + bridge.memory_gb * FARGATE_ARM_GB_HOUR
    both_ways_gb_per_hour = call.audio_bytes_per_second * 3600 * (1 + call.agent_talk_fraction) * call.json_overhead
    lcu_hours = both_ways_gb_per_hour / GB / ALB_LCU_GB_PER_HOUR
    audio_out_gb = call.audio_bytes_per_second * 60 * call.agent_talk_fraction * call.json_overhead / GB
    caller_audio_gb = call.audio_bytes_per_second * 60 * call.json_overhead / GB
    return {
        "fargate_tasks": tasks * task_hour / 60 / concurrent_calls,
        "load_balancer_hour": ALB_HOUR / 60 / concurrent_calls,
        "load_balancer_lcu": lcu_hours * ALB_LCU_HOUR / 60,
        "api_gateway_messages_in": chunks * p.ws_message,
        "api_gateway_messages_out": agent_units * p.ws_message,
        "api_gateway_connection_minute": p.ws_connection_minute,
        "lambda_requests": chunks * p.lambda_request,
        "lambda_duration": chunks * call.frame_lambda_ms / 1000 * call.lambda_gb * p.lambda_gb_s,
        "dynamodb_writes": chunks * call.chunk_write_units * p.ddb_write_unit,
        "dynamodb_reads": chunks * call.reads_per_message * p.ddb_read_unit,
        "data_transfer_out": audio_out_gb * p.data_out_gb,
        # the bridge's chunks to the WebSocket API and the agent's audio posted back, both through the NAT gateway
        "nat_processing": (caller_audio_gb + audio_out_gb) * p.nat_gb,
    }


def _print(title: str, lines: dict[str, float]) -> None:
    print(title)
    for name, usd in lines.items():
        print(f"  {name:32} ${usd:.7f}")
    print(f"  {'total':32} ${sum(lines.values()):.5f} per phone minute")


def main() -> None:
    call = Call()
    print(
        f"Media Streams: {60_000 // call.frame_ms} frames a minute per call ({1000 // call.frame_ms} a second); "
        f"the bridge forwards {60_000 // call.chunk_ms} chunks a minute"
    )
    _print("(a) frames straight into the WebSocket API", per_minute_direct())
    for concurrent in (1, 10, 100, 1000):
        _print(f"(b) Fargate bridge, {concurrent} concurrent calls on average", per_minute_bridge(concurrent))
    bridge = Bridge()
    fixed = bridge.min_tasks * (bridge.vcpu * FARGATE_ARM_VCPU_HOUR + bridge.memory_gb * FARGATE_ARM_GB_HOUR) + ALB_HOUR
    print(f"(b) fixed cost with no call at all: ${fixed:.4f} an hour, ${fixed * 730:.2f} a month")


if __name__ == "__main__":
    main()
