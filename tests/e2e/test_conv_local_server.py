"""``make run``: the real local server (``python -m airies.local.server``: moto, embedded SQLite, the extension
hook that mounts ``airies.local.ws_gateway`` at /ws) in a subprocess, driven by a real WebSocket client with the
offline engines (offline responder, eSpeak NG)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.local_stack import local_server as run_local_server

pytestmark = pytest.mark.slow
KEY = "ak_live_devkey_for_ws_tests_0001"


@pytest.fixture
def local_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    with run_local_server(tmp_path, KEY) as server:
        yield server.base, server.port, server.log


def test_make_run_serves_the_voice_websocket(local_server) -> None:  # type: ignore[no-untyped-def]
    from websockets.asyncio.client import connect

    base, port, _log = local_server
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
        agent = http.post(
            "/api/v1/agents",
            json={
                "name": "Clinic",
                "first_message": "Hello, this is the clinic.",
                "voice": {"provider": "espeak", "voice_id": "en-us"},
                "transcriber": {"provider": "pocketsphinx", "model": "en-us"},
            },
        )
        assert agent.status_code == 201, agent.text
        agent_id = agent.json()["id"]
        assert http.post(f"/api/v1/agents/{agent_id}/deploy").status_code == 201
        started = http.post("/api/v1/conversations", json={"agent_id": agent_id})
        assert started.status_code == 201, started.text
        conversation = started.json()
        # The dev account's plan allows several calls at once (the Free tier allows one).
        another = http.post("/api/v1/conversations", json={"agent_id": agent_id})
        assert another.status_code == 201, another.text
        assert http.get("/api/v1/billing/balance").json()["tier"] == "pro"
    assert conversation["ws_url"].startswith(f"ws://127.0.0.1:{port}/ws?")

    async def recv_until(ws: Any, stop: Any) -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        async with asyncio.timeout(60):
            while True:
                frames.append(json.loads(await ws.recv()))
                if stop(frames[-1]):
                    return frames

    async def call() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        async with connect(conversation["ws_url"]) as ws:
            await ws.send(json.dumps({"action": "start"}))
            greeting = await recv_until(ws, lambda f: f["type"] == "turn_end")
            await ws.send(json.dumps({"action": "text", "text": "What are your opening hours?"}))
            reply = await recv_until(ws, lambda f: f["type"] == "turn_end")
            await ws.send(json.dumps({"action": "end"}))
            ended = await recv_until(ws, lambda f: f["type"] == "ended")
            await ws.wait_closed()  # the server closes the socket after "ended"
            return greeting, reply, ended

    greeting, reply, ended = asyncio.run(call())
    assert greeting[0]["type"] == "ready" and greeting[0]["conversation_id"] == conversation["id"]
    said = "".join(f["delta"] for f in greeting if f["type"] == "agent_text")
    assert said.strip() == "Hello, this is the clinic."
    audio = b"".join(base64.b64decode(f["data"]) for f in greeting if f["type"] == "audio")
    assert len(audio) > 8000  # eSpeak NG spoke it
    assert [f["text"] for f in reply if f["type"] == "transcript"] == ["What are your opening hours?"]
    assert reply[-1]["status"] == "completed" and "audio" in [f["type"] for f in reply]
    assert ended[-1]["reason"] == "caller_ended" and ended[-1]["turns"] == 2
    with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
        detail = http.get(f"/api/v1/conversations/{conversation['id']}").json()
    assert detail["status"] == "ended" and detail["end_reason"] == "caller_ended" and len(detail["turns"]) == 2
