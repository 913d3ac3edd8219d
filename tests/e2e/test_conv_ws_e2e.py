"""Whole conversations over a real WebSocket (``websockets``) against the local stack: uvicorn serving the API and
the local gateway, which runs the real ``functions/voice_ws`` handlers; DynamoDB in a moto server.

Engines: the offline ones (eSpeak NG speech in, PocketSphinx, offline responder, eSpeak NG out), the wire-level
doubles of OpenAI, Deepgram and ElevenLabs through the real SDKs, and interface doubles where a test needs a
precise script (barge-in timing, credits).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from airies.api.app import create_app
from airies.conversations.live import WebSocketService
from airies.conversations.service import ConversationTokens
from airies.conversations.sessions import SessionStore
from airies.local.ws_gateway import UVICORN_WS, LocalWsGateway, load_voice_handlers
from airies.voice.audio.codecs import read_wav, resample_pcm16
from tests.conftest import signup
from tests.doubles.conv_engines import FakeLLM, FakeTTS, fake_engines, silence

pytestmark = pytest.mark.slow

SECRET = "e2e-token-secret-0123456789abcdef0123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture(scope="module")
def moto_endpoint():  # type: ignore[no-untyped-def]
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


class LiveStack:
    """uvicorn (API + /ws gateway) in a thread, the real voice_ws handlers, a WebSocketService built here."""

    def __init__(self, database: Any, settings: Any, moto: str, **service_kwargs: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.clock = Clock()
        self.settings = settings.model_copy(
            update={
                "public_api_url": f"http://127.0.0.1:{self.port}",
                "public_ws_url": f"ws://127.0.0.1:{self.port}/ws",
                "ws_token_secret": SECRET,
                "ws_state_table": f"ws-{uuid.uuid4().hex[:8]}",
            }
        )
        ddb = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=moto)
        self.store = SessionStore(ddb, self.settings.ws_state_table, clock=self.clock)
        self.store.ensure_table()
        self.tokens = ConversationTokens(SECRET.encode(), ttl_seconds=300, clock=self.clock)
        dispatch = load_voice_handlers()
        import voice_runtime  # the module the handlers share (loaded by load_voice_handlers)

        service_kwargs.setdefault("credit_gate", lambda session: None)
        self.service = WebSocketService(
            self.settings, database, self.store, tokens=self.tokens, clock=self.clock, **service_kwargs
        )
        voice_runtime.set_service(self.service)
        self.app = create_app(self.settings, database)
        self.app.state.live_sessions = self.service  # REST end/delete reach the same live sessions
        self.app.state.conversation_tokens = self.tokens  # tokens follow the stack's clock
        engines = service_kwargs.get("engines")
        if engines is not None:
            self.app.state.conversation_engines = lambda config: engines(None, "", config)
        self.gateway = LocalWsGateway(dispatch, domain=f"127.0.0.1:{self.port}")
        self.gateway.mount(self.app)

        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", ws=UVICORN_WS)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 15
        while not self.server.started:
            assert time.time() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        import httpx

        self.http = httpx.Client(base_url=self.settings.public_api_url, timeout=60)
        self.auth = signup(self.http)

    def stop(self) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(10)
        # Leave no warm "container" behind: later tests (the sample-event invoker) load the handlers afresh.
        import voice_runtime

        voice_runtime.set_service(None)
        for name in [n for n in sys.modules if n == "voice_runtime" or n.startswith("_airies_voice_ws_")]:
            del sys.modules[name]
        code_dir = str(Path(voice_runtime.__file__).parent)
        if code_dir in sys.path:
            sys.path.remove(code_dir)

    def agent(self, client: Any, auth: dict[str, str], **config: Any) -> str:
        body = {"name": "E2E agent", "system_prompt": "You are the clinic's receptionist.", **config}
        response = client.post("/api/v1/agents", json=body, headers=auth)
        assert response.status_code == 201, response.text
        agent_id = response.json()["id"]
        assert client.post(f"/api/v1/agents/{agent_id}/deploy", headers=auth).status_code == 201
        return agent_id

    def start(self, client: Any, auth: dict[str, str], agent_id: str) -> dict[str, Any]:
        response = client.post("/api/v1/conversations", json={"agent_id": agent_id}, headers=auth)
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["ws_url"].startswith(self.settings.public_ws_url)
        return body


async def recv_until(ws: Any, stop: Any, timeout: float = 30.0) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                frame = json.loads(await ws.recv())
                frames.append(frame)
                if stop(frame):
                    return frames
    except TimeoutError:
        seen = [{k: v for k, v in f.items() if k != "audio"} for f in frames]
        raise AssertionError(f"no awaited frame within {timeout} s; received: {seen}") from None


def pcm_frames(pcm: bytes, ms: int = 200) -> list[str]:
    size = ms * 32
    if len(pcm) % size and len(pcm) % size < 80 * 32:  # frames under 80 ms are refused: pad the last one
        pcm += bytes(80 * 32 - len(pcm) % size)
    return [
        json.dumps({"action": "audio", "seq": i, "data": base64.b64encode(pcm[o : o + size]).decode()})
        for i, o in enumerate(range(0, len(pcm), size))
    ]


def spoken(text: str, tmp_path: Path) -> bytes:
    out = tmp_path / "utterance.wav"
    subprocess.run(["espeak-ng", "-w", str(out), text], check=True)
    pcm, rate = read_wav(out.read_bytes())
    return resample_pcm16(pcm, rate, 16000)


def turn_frames(frames: list[dict[str, Any]], turn_id: str) -> list[dict[str, Any]]:
    return [f for f in frames if f.get("turn_id") == turn_id]


def test_spoken_conversation_with_offline_engines(database, settings, moto_endpoint, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from websockets.asyncio.client import connect

    stack = LiveStack(database, settings, moto_endpoint)  # no keys: PocketSphinx, offline responder, eSpeak NG
    client, auth = stack.http, stack.auth
    try:
        phrase = "what are your opening hours"  # PocketSphinx decodes this one exactly with its grammar
        agent_id = stack.agent(
            client,
            auth,
            first_message="Hello, this is the clinic.",
            voice={"provider": "espeak", "voice_id": "en-us"},
            transcriber={"provider": "pocketsphinx", "model": "en-us"},
            metadata={"expected_phrases": [phrase, "goodbye"]},
        )
        start = stack.start(client, auth, agent_id)
        utterance = spoken(phrase, tmp_path) + silence(900)

        async def talk() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            async with connect(start["ws_url"]) as ws:
                await ws.send(json.dumps({"action": "start"}))
                greeting = await recv_until(ws, lambda f: f["type"] == "turn_end")
                for frame in pcm_frames(utterance):
                    await ws.send(frame)
                    await asyncio.sleep(0.02)
                reply = await recv_until(ws, lambda f: f["type"] == "turn_end")
                return greeting, reply

        greeting, reply = asyncio.run(talk())
        assert greeting[0]["type"] == "ready" and "audio" in [f["type"] for f in greeting]
        transcript = next(f for f in reply if f["type"] == "transcript")
        # The socket delivered the utterance intact: the transcript is exactly what the same offline engine, with
        # the agent's model (built at deploy from all of its phrases), makes of the whole recording (PocketSphinx
        # may drop words of eSpeak speech: that is the engine, not us).
        from airies.agents.config import AgentConfig
        from airies.voice.factory import build_voice_service
        from airies.voice.speech_models import expected_phrases_for_agent

        config = AgentConfig.model_validate(client.get(f"/api/v1/agents/{agent_id}", headers=auth).json()["config"])
        direct = asyncio.run(
            build_voice_service(stack.settings).speech_to_text(
                utterance,
                16000,
                transcriber={"provider": "pocketsphinx", "model": "en-us"},
                expected_phrases=expected_phrases_for_agent(config),
                prebuilt_only=True,
            )
        )
        assert direct.metadata["language_model"] == "domain_lm"  # the deploy built it
        assert transcript["text"] == direct.text and set(direct.text.split()) <= set(phrase.split())
        assert len(direct.text.split()) >= 3
        audio = b"".join(base64.b64decode(f["data"]) for f in reply if f["type"] == "audio")
        assert len(audio) > 16000  # more than half a second of synthesised reply
        end = reply[-1]
        assert end["status"] == "completed" and end["latency"]["stt_ms"] is not None
        assert end["latency"]["endpointing_ms"] >= 500
        detail = client.get(f"/api/v1/conversations/{start['id']}", headers=auth).json()
        assert detail["turns"][-1]["user_text"] == direct.text and detail["status"] == "active"
    finally:
        stack.stop()


def test_wire_doubles_turn_and_barge_in(database, settings, moto_endpoint) -> None:  # type: ignore[no-untyped-def]
    from websockets.asyncio.client import connect

    from tests.doubles.deepgram_server import DeepgramServer
    from tests.doubles.elevenlabs_server import ElevenLabsServer
    from tests.doubles.openai_server import OpenAIDouble, Reply

    with OpenAIDouble() as oa, DeepgramServer(latency=0.0) as dg, ElevenLabsServer(latency=0.0, chunk_delay=0.05) as el:
        oa.default = Reply(
            text="Our clinic opens at nine in the morning. We close at six in the evening. "
            "On Saturdays we open at ten. Sundays we are closed."
        )
        dg.transcripts.script("when do you open")
        keyed = settings.model_copy(
            update={
                "openai_api_key": "sk-test",
                "openai_base_url": oa.base_url,
                "deepgram_api_key": dg.api_key,
                "deepgram_base_url": dg.url,
                "elevenlabs_api_key": el.api_key,
                "elevenlabs_base_url": el.url,
            }
        )
        stack = LiveStack(database, keyed, moto_endpoint)
        client, auth = stack.http, stack.auth
        try:
            agent_id = stack.agent(client, auth, first_message_mode="assistant_waits_for_user")
            start = stack.start(client, auth, agent_id)

            async def talk() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
                async with connect(start["ws_url"]) as ws:
                    await ws.send(json.dumps({"action": "start"}))
                    await recv_until(ws, lambda f: f["type"] == "ready")
                    for frame in pcm_frames(silence(100) + spoken_tone()):
                        await ws.send(frame)
                    await ws.send(json.dumps({"action": "end_of_utterance"}))
                    # barge in after the second audio frame of the reply
                    first = await recv_until(ws, lambda f: f["type"] == "audio" and f["seq"] == 1)
                    await ws.send(json.dumps({"action": "interrupt"}))
                    rest = await recv_until(ws, lambda f: f["type"] == "turn_end")
                    return first, rest

            first, rest = asyncio.run(talk())
            assert next(f for f in first if f["type"] == "transcript")["text"] == "when do you open"
            kinds = [f["type"] for f in rest]
            assert "interrupted" in kinds
            after = kinds[kinds.index("interrupted") + 1 :]
            assert "audio" not in after  # nothing posted after the interruption
            # Stopped within a chunk of the interrupt reaching the server: one chunk may already be on the wire when
            # the interrupt leaves the client, and one more may go out once the server holds it (the bound the
            # handler tests check at the moment the interrupt is stored).
            assert kinds[: kinds.index("interrupted")].count("audio") <= 2
            end = rest[-1]
            assert end["status"] == "interrupted" and end["usage"]["llm_provider"] == "openai"
            assert oa.requests and dg.requests and el.requests
            history = client.get(f"/api/v1/conversations/{start['id']}/transcript", headers=auth).json()["messages"]
            heard = history[-1]["text"]
            assert history[-1]["interrupted"] and "Sundays" not in heard
        finally:
            stack.stop()


def spoken_tone() -> bytes:
    from tests.doubles.conv_engines import tone

    return tone(800)


def test_end_call_phrase_silence_timeout_credits_and_stale_token(database, settings, moto_endpoint) -> None:  # type: ignore[no-untyped-def]
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    credit = {"allowed": True}
    engines = fake_engines(llm=FakeLLM(reply="Sure thing."), tts=FakeTTS(ms_per_char=10))
    stack = LiveStack(
        database,
        settings,
        moto_endpoint,
        engines=lambda session, account_id, config: engines,
        credit_gate=lambda session: lambda account_id: (credit["allowed"], "insufficient_credits", "no credit"),
    )
    client, auth = stack.http, stack.auth
    try:
        agent_id = stack.agent(client, auth, first_message_mode="assistant_waits_for_user", silence_timeout_seconds=5)

        async def session(script: Any) -> list[dict[str, Any]]:
            start = stack.start(client, auth, agent_id)
            async with connect(start["ws_url"]) as ws:
                await ws.send(json.dumps({"action": "start"}))
                await recv_until(ws, lambda f: f["type"] == "ready")
                frames = await script(ws)
            return start, frames

        async def goodbye(ws: Any) -> list[dict[str, Any]]:
            await ws.send(json.dumps({"action": "text", "text": "that's all, bye bye"}))
            frames = await recv_until(ws, lambda f: f["type"] == "ended")
            await ws.wait_closed()  # the server closes the socket after "ended"
            return frames

        start, frames = asyncio.run(session(goodbye))
        assert frames[-1]["reason"] == "caller_end_call_phrase"

        async def reconnect() -> int:
            try:
                async with connect(start["ws_url"]):
                    return 101
            except InvalidStatus as exc:
                return exc.response.status_code

        assert asyncio.run(reconnect()) == 410  # the conversation has ended
        stack.clock.offset += 301
        assert asyncio.run(reconnect()) == 401  # and the token has expired
        stack.clock.offset = 0

        async def silent(ws: Any) -> list[dict[str, Any]]:
            stack.clock.offset += 6
            await ws.send(json.dumps({"action": "ping"}))
            frames = await recv_until(ws, lambda f: f["type"] == "turn_end")
            stack.clock.offset += 6
            await ws.send(json.dumps({"action": "ping"}))
            return frames + await recv_until(ws, lambda f: f["type"] == "ended")

        _, frames = asyncio.run(session(silent))
        said = "".join(f.get("delta", "") for f in frames)
        assert said.strip() == "Are you still there?" and frames[-1]["reason"] == "silence_timeout"
        stack.clock.offset = 0

        async def broke(ws: Any) -> list[dict[str, Any]]:
            credit["allowed"] = False
            await ws.send(json.dumps({"action": "text", "text": "one more thing"}))
            return await recv_until(ws, lambda f: f["type"] == "ended")

        _, frames = asyncio.run(session(broke))
        assert frames[-1]["reason"] == "insufficient_credits"
        assert "run out of credits" in "".join(f.get("delta", "") for f in frames)
    finally:
        stack.stop()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_gateway_refuses_missing_token_with_a_json_401_and_no_error_log(database, settings, moto_endpoint) -> None:  # type: ignore[no-untyped-def]
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    stack = LiveStack(database, settings, moto_endpoint)
    server_log = Records()
    uvicorn_error = logging.getLogger("uvicorn.error")  # where uvicorn logs handshakes and protocol faults
    uvicorn_error.addHandler(server_log)
    level = uvicorn_error.level
    uvicorn_error.setLevel(logging.INFO)  # the stack runs uvicorn at "warning": its handshake lines are INFO
    try:

        async def attempt() -> tuple[int, bytes]:
            try:
                async with connect(f"ws://127.0.0.1:{stack.port}/ws"):
                    return 101, b""
            except InvalidStatus as exc:
                return exc.response.status_code, exc.response.body

        status, body = asyncio.run(attempt())
    finally:
        stack.stop()  # the server has finished with the refused connection (and logged whatever it logs)
        uvicorn_error.removeHandler(server_log)
        uvicorn_error.setLevel(level)
    assert status == 401 and json.loads(body)["code"] == "invalid_token"
    assert any('"WebSocket /ws" 401' in r.getMessage() for r in server_log.records)
    assert [r.getMessage() for r in server_log.records if r.levelno >= logging.WARNING] == []


def test_reconnect_after_the_first_token_expired_with_a_refreshed_token(database, settings, moto_endpoint) -> None:  # type: ignore[no-untyped-def]
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    llm = FakeLLM(reply="Sure thing.")
    engines = fake_engines(llm=llm, tts=FakeTTS(ms_per_char=10))
    stack = LiveStack(database, settings, moto_endpoint, engines=lambda session, account_id, config: engines)
    client, auth = stack.http, stack.auth
    try:
        agent_id = stack.agent(client, auth, first_message_mode="assistant_waits_for_user")
        start = stack.start(client, auth, agent_id)

        async def first_call() -> list[dict[str, Any]]:
            async with connect(start["ws_url"]) as ws:
                await ws.send(json.dumps({"action": "start"}))
                frames = await recv_until(ws, lambda f: f["type"] == "ready")
                await ws.send(json.dumps({"action": "text", "text": "I need an appointment"}))
                return frames + await recv_until(ws, lambda f: f["type"] == "turn_end")

        frames = asyncio.run(first_call())  # then the line drops (the socket closes)
        assert frames[0]["resumed"] is False and frames[-1]["status"] == "completed"
        stack.clock.offset += 301  # the first token has expired

        async def attempt(url: str) -> int:
            try:
                async with connect(url):
                    return 101
            except InvalidStatus as exc:
                return exc.response.status_code

        assert asyncio.run(attempt(start["ws_url"])) == 401
        fresh = client.post(f"/api/v1/conversations/{start['id']}/token", headers=auth)
        assert fresh.status_code == 200, fresh.text

        async def resume() -> list[dict[str, Any]]:
            async with connect(fresh.json()["ws_url"]) as ws:
                await ws.send(json.dumps({"action": "start"}))
                frames = await recv_until(ws, lambda f: f["type"] == "ready")
                await ws.send(json.dumps({"action": "text", "text": "tomorrow morning please"}))
                return frames + await recv_until(ws, lambda f: f["type"] == "turn_end")

        frames = asyncio.run(resume())
        assert frames[0]["type"] == "ready" and frames[0]["resumed"] is True
        assert frames[-1]["status"] == "completed"
        assert llm.requests[-1].messages[-3:] == [
            {"role": "user", "content": "I need an appointment"},
            {"role": "assistant", "content": "Sure thing."},
            {"role": "user", "content": "tomorrow morning please"},
        ]
        detail = client.get(f"/api/v1/conversations/{start['id']}", headers=auth).json()
        assert detail["status"] == "active" and len(detail["turns"]) == 2
    finally:
        stack.stop()
