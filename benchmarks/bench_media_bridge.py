"""Latency the media bridge adds, per caller chunk and per agent frame, beside a direct connection in the same run.

One process, one event loop, loopback sockets: a stand-in for the voice WebSocket API (it timestamps what arrives
and sends agent audio on demand), the real bridge (``airies.media_bridge``) in front of it, and a Twilio stream
client speaking Twilio's messages.

* caller chunk: Twilio's 10th 20 ms frame of a chunk sent -> the 200 ms ``audio`` frame arriving at the API. The
  baseline is the same ``audio`` frame sent by a client straight to the API (one hop instead of two).
* agent frame: a 200 ms ``audio`` frame sent by the API -> the Twilio client holding its ten ``media`` messages and
  their mark. The baseline is the same frame sent by the API straight to a client.

Bridge-added = bridge path minus baseline, at p50 and p95. Frames are sent one chunk at a time (the next after the
previous arrived; the chunk's last frame 20 ms after the others, as Twilio paces them), so the figures are the
bridge's own cost, not queueing.

    python -m benchmarks media_bridge [--requests N]      # N chunks each way (default 300: one phone minute)
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import numpy as np

from airies.media_bridge.config import BridgeConfig
from airies.media_bridge.server import MediaBridge
from benchmarks import harness

DEFAULT_CHUNKS = 300  # one phone minute of caller audio
FRAME_BYTES = 160
TARGET_ADDED_P95_MS = 5.0  # the bridge's share of the latency budget per chunk


class FakeApi:
    """The voice WebSocket API's role: timestamps ``audio`` frames, keeps each connection to send agent audio."""

    def __init__(self) -> None:
        self.arrivals: asyncio.Queue[float] = asyncio.Queue()
        self.connections: asyncio.Queue[Any] = asyncio.Queue()

    async def handle(self, connection: Any) -> None:
        await self.connections.put(connection)
        async for raw in connection:
            if json.loads(raw).get("action") == "audio":
                await self.arrivals.put(time.perf_counter())


def ulaw_speech(n_bytes: int) -> bytes:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, n_bytes, dtype=np.uint8).tobytes()


def agent_frame(turn_id: str, seq: int) -> str:
    t = np.arange(3200) / 16000
    pcm = (4000 * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()
    data = base64.b64encode(pcm).decode()
    return json.dumps(
        {
            "type": "audio",
            "v": 1,
            "turn_id": turn_id,
            "seq": seq,
            "encoding": "pcm_s16le",
            "sample_rate": 16000,
            "data": data,
        }
    )


def media_message(stream_sid: str, chunk: int, payload: bytes) -> str:
    media = {
        "track": "inbound",
        "chunk": str(chunk),
        "timestamp": str(chunk * 20),
        "payload": base64.b64encode(payload).decode(),
    }
    return json.dumps({"event": "media", "sequenceNumber": str(chunk + 2), "streamSid": stream_sid, "media": media})


async def measure(chunks: int) -> dict[str, Any]:
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    api = FakeApi()
    async with serve(api.handle, "127.0.0.1", 0) as api_server:
        api_port = next(iter(api_server.sockets)).getsockname()[1]
        bridge = MediaBridge(BridgeConfig(api_ws_url=f"ws://127.0.0.1:{api_port}/", host="127.0.0.1", port=0))
        await bridge.start()
        assert bridge.server is not None
        try:
            speech = ulaw_speech(FRAME_BYTES * 10 * chunks)
            stream_sid = "MZ" + "0" * 32
            caller_bridge: list[float] = []
            agent_bridge: list[float] = []
            async with connect(f"ws://127.0.0.1:{bridge.port}/twilio") as twilio:
                start = {
                    "streamSid": stream_sid,
                    "callSid": "CA" + "0" * 32,
                    "accountSid": "AC" + "0" * 32,
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": {"conversation_id": "conv_bench", "token": "t", "barge_in_ms": "0"},
                }
                await twilio.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
                await twilio.send(json.dumps({"event": "start", "sequenceNumber": "1", "start": start}))
                api_side = await asyncio.wait_for(api.connections.get(), 10)
                for index in range(chunks):
                    for frame in range(10):
                        offset = (index * 10 + frame) * FRAME_BYTES
                        if frame == 9:  # Twilio paces frames 20 ms apart: the first nine are handled by now
                            await asyncio.sleep(0.02)
                        sent = time.perf_counter()
                        await twilio.send(
                            media_message(stream_sid, index * 10 + frame, speech[offset : offset + FRAME_BYTES])
                        )
                    arrived = await asyncio.wait_for(api.arrivals.get(), 10)
                    caller_bridge.append((arrived - sent) * 1000)
                for seq in range(chunks):
                    sent = time.perf_counter()
                    await api_side.send(agent_frame("turn_bench", seq))
                    while True:  # ten media messages, then the frame's mark(s)
                        message = json.loads(await asyncio.wait_for(twilio.recv(), 10))
                        if message["event"] == "mark" and message["mark"]["name"].endswith(f":{(seq + 1) * 200}"):
                            break
                    agent_bridge.append((time.perf_counter() - sent) * 1000)

            caller_direct: list[float] = []
            agent_direct: list[float] = []
            async with connect(f"ws://127.0.0.1:{api_port}/") as direct:
                api_direct = await asyncio.wait_for(api.connections.get(), 10)
                pcm = base64.b64encode(bytes(6400)).decode()
                for seq in range(chunks):
                    sent = time.perf_counter()
                    await direct.send(json.dumps({"action": "audio", "seq": seq, "data": pcm}))
                    arrived = await asyncio.wait_for(api.arrivals.get(), 10)
                    caller_direct.append((arrived - sent) * 1000)
                for seq in range(chunks):
                    sent = time.perf_counter()
                    await api_direct.send(agent_frame("turn_bench", seq))
                    await asyncio.wait_for(direct.recv(), 10)
                    agent_direct.append((time.perf_counter() - sent) * 1000)
        finally:
            bridge.server.close()
            await bridge.server.wait_closed()
    return {
        "caller_chunk": {
            "bridge": harness.latency_stats(caller_bridge),
            "direct": harness.latency_stats(caller_direct),
        },
        "agent_frame": {"bridge": harness.latency_stats(agent_bridge), "direct": harness.latency_stats(agent_direct)},
    }


def run(args: Any) -> dict[str, Any]:
    chunks = getattr(args, "requests", None) or DEFAULT_CHUNKS
    asyncio.run(measure(20))  # warm-up: imports, numpy tables, the VAD
    figures = asyncio.run(measure(chunks))
    added = {
        direction: {
            "p50_ms": round(figures[direction]["bridge"]["p50_ms"] - figures[direction]["direct"]["p50_ms"], 3),
            "p95_ms": round(figures[direction]["bridge"]["p95_ms"] - figures[direction]["direct"]["p95_ms"], 3),
        }
        for direction in ("caller_chunk", "agent_frame")
    }
    for direction in ("caller_chunk", "agent_frame"):
        bridge, direct = figures[direction]["bridge"], figures[direction]["direct"]
        print(
            f"{direction:<13} bridge p50 {bridge['p50_ms']:7.3f} ms  p95 {bridge['p95_ms']:7.3f} ms | "
            f"direct p50 {direct['p50_ms']:7.3f} ms  p95 {direct['p95_ms']:7.3f} ms | "
            f"added p50 {added[direction]['p50_ms']:7.3f} ms  p95 {added[direction]['p95_ms']:7.3f} ms"
        )
    return {
        "chunks": chunks,
        **figures,
        "added": added,
        "targets": [
            harness.target(
                "caller chunk: bridge-added p95", added["caller_chunk"]["p95_ms"], TARGET_ADDED_P95_MS, "ms"
            ),
            harness.target("agent frame: bridge-added p95", added["agent_frame"]["p95_ms"], TARGET_ADDED_P95_MS, "ms"),
        ],
    }


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=None)
    run(parser.parse_args())
