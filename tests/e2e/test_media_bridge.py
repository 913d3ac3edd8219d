"""Phone calls over Twilio Media Streams through the media bridge into the local stack (``make run`` in a subprocess,
offline engines): a Twilio stream double sends eSpeak NG speech as 8 kHz μ-law in 20 ms frames, the bridge forwards
200 ms chunks to the voice WebSocket, and the agent's audio comes back as μ-law ``media`` with marks."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from airies.core.config import PROJECT_ROOT
from airies.media_bridge.config import BridgeConfig
from airies.media_bridge.server import MediaBridge
from airies.voice.audio.codecs import pcm16_to_ulaw, read_wav, resample_pcm16
from tests.doubles.twilio_media_client import TwilioMediaStream
from tests.doubles.twilio_server import TwilioDouble, new_sid, twilio_signature
from tests.local_stack import LocalServer, free_port, local_server

pytestmark = pytest.mark.slow
KEY = "ak_live_devkey_for_media_bridge_01"
QUESTION = PROJECT_ROOT / "examples" / "question.wav"  # eSpeak NG: "when are you open"
GREETING = "Hello, this is the clinic. We are open on weekdays and on Saturday mornings. How can I help you today?"
BYTES_PER_S = 8000  # μ-law 8 kHz


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalServer, str]]:
    with local_server(tmp_path_factory.mktemp("bridge"), KEY) as server:
        with httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as http:
            agent = http.post(
                "/api/v1/agents",
                json={
                    "name": "Clinic line",
                    "first_message": GREETING,
                    "voice": {"provider": "espeak", "voice_id": "en-us"},
                    "transcriber": {"provider": "pocketsphinx", "model": "en-us", "keywords": ["when are you open"]},
                    "endpointing": {"silence_ms": 400},
                },
            ).json()
            assert http.post(f"/api/v1/agents/{agent['id']}/deploy").status_code == 201
        yield server, agent["id"]


def question_ulaw() -> bytes:
    pcm, rate = read_wav(QUESTION.read_bytes())
    return pcm16_to_ulaw(resample_pcm16(pcm, rate, 8000))


def api(server: LocalServer) -> httpx.Client:
    return httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)


def start_conversation(server: LocalServer, agent_id: str) -> dict[str, Any]:
    with api(server) as http:
        response = http.post("/api/v1/conversations", json={"agent_id": agent_id})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def conversation(server: LocalServer, conversation_id: str) -> dict[str, Any]:
    with api(server) as http:
        body: dict[str, Any] = http.get(f"/api/v1/conversations/{conversation_id}").json()
    return body


def run_with_bridge(server: LocalServer, scenario: Callable[[MediaBridge, str], Awaitable[None]]) -> MediaBridge:
    async def main() -> MediaBridge:
        bridge = MediaBridge(BridgeConfig(api_ws_url=f"ws://127.0.0.1:{server.port}/ws", host="127.0.0.1", port=0))
        await bridge.start()
        assert bridge.server is not None
        try:
            await scenario(bridge, f"ws://127.0.0.1:{bridge.port}/twilio")
        finally:
            bridge.server.close()
            await bridge.server.wait_closed()
        return bridge

    return asyncio.run(main())


def parameters(conv: dict[str, Any], **extra: str) -> dict[str, str]:
    return {"conversation_id": conv["id"], "token": conv["token"], **extra}


async def played_through(stream: TwilioMediaStream, at_least_s: float) -> None:
    """Until the agent's audio received is at least ``at_least_s`` long and has all played."""
    await stream.wait_for(lambda: len(stream.agent_audio) >= at_least_s * BYTES_PER_S)
    await asyncio.sleep(0.5)  # the rest of the turn arrives far faster than real time
    await stream.wait_for(lambda: not stream.playing())


def test_a_phone_call_through_the_bridge(stack: tuple[LocalServer, str]) -> None:
    server, agent_id = stack
    conv = start_conversation(server, agent_id)

    async def scenario(bridge: MediaBridge, url: str) -> None:
        async with TwilioMediaStream(url, parameters(conv, barge_in_ms="0")) as stream:
            await played_through(stream, 2.0)  # the greeting, spoken first, as μ-law frames with marks
            greeting = len(stream.agent_audio)
            assert greeting % 160 == 0  # whole 20 ms frames
            assert stream.echoed == stream.marks()  # every mark came back once its audio played
            stream.say(question_ulaw())
            await played_through(stream, greeting / BYTES_PER_S + 1.0)  # the answer
            answered = len(stream.agent_audio)
            await stream.dtmf("5")
            await played_through(stream, answered / BYTES_PER_S + 0.5)
            await stream.stop()
            await stream.wait_for(stream.closed.is_set)  # the bridge ends the stream: the call ends
            assert stream.clears == 0
        # The bridge's handler counts the call out just after the close handshake this side has already seen.
        async with asyncio.timeout(5):
            while bridge.active:
                await asyncio.sleep(0.02)

    run_with_bridge(server, scenario)
    detail = conversation(server, conv["id"])
    assert detail["status"] == "ended" and detail["end_reason"] == "caller_ended"
    users = [turn["user_text"] for turn in detail["turns"]]
    # PocketSphinx on 8 kHz phone audio sometimes misses the first words: the turn is the caller's question.
    assert any(text and text.endswith("open") for text in users), users
    assert "(the caller pressed 5 on the keypad)" in users
    assert [t["input_mode"] for t in detail["turns"] if t["user_text"]] == ["audio", "text"]


def test_barge_in_clears_twilio_and_keeps_what_the_caller_heard(stack: tuple[LocalServer, str]) -> None:
    server, agent_id = stack
    conv = start_conversation(server, agent_id)

    async def scenario(bridge: MediaBridge, url: str) -> None:
        async with TwilioMediaStream(url, parameters(conv, barge_in_ms="200", backoff_ms="500")) as stream:
            await stream.wait_for(lambda: len(stream.echoed) >= 5)  # the greeting is playing
            stream.say(question_ulaw())  # the caller talks over it
            await stream.wait_for(lambda: stream.clears == 1)
            assert not stream.playing()  # Twilio dropped the rest and echoed its marks
            greeting_turn = stream.marks()[0].rpartition(":")[0]
            # The agent answers the question: audio of a new turn.
            await stream.wait_for(lambda: any(not m.startswith(greeting_turn) for m in stream.marks()))
            assert stream.clears == 1
            await stream.stop()
            await stream.wait_for(stream.closed.is_set)

    run_with_bridge(server, scenario)
    detail = conversation(server, conv["id"])
    greeting = detail["turns"][0]
    assert greeting["status"] == "interrupted"
    assert greeting["agent_text"] and len(greeting["agent_text"]) < len(GREETING)  # what the caller heard
    assert GREETING.startswith(greeting["agent_text"].rstrip(". "))
    assert any((turn["user_text"] or "").endswith("open") for turn in detail["turns"][1:])


def test_bad_messages_do_not_break_the_bridge_or_the_call(stack: tuple[LocalServer, str]) -> None:
    server, agent_id = stack
    conv = start_conversation(server, agent_id)

    async def scenario(bridge: MediaBridge, url: str) -> None:
        base = url.removesuffix("/twilio")
        async with httpx.AsyncClient() as http:
            health = await http.get(base.replace("ws://", "http://") + "/health")
            assert health.status_code == 200 and health.json()["status"] == "ok"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(base + "/elsewhere"):
                pass
        assert refused.value.response.status_code == 404
        # A stream without the conversation's parameters, and one whose token is forged, are closed (1008).
        for params in ({}, parameters(conv, token="forged")):
            async with TwilioMediaStream(url, params) as lost:
                await asyncio.wait_for(lost.closed.wait(), 30)
        async with TwilioMediaStream(url, parameters(conv, barge_in_ms="0")) as stream:
            for raw in (
                "not json",
                b"\x00\x01 binary",
                json.dumps([1, 2]),
                json.dumps({"event": "nonsense"}),
                json.dumps({"event": "media", "media": {"payload": "***"}}),
                json.dumps({"event": "media"}),
                json.dumps({"event": "dtmf", "dtmf": {"digit": "Z"}}),
                json.dumps({"event": "mark", "mark": {}}),
                json.dumps({"event": "mark", "mark": {"name": "turn_unknown:100"}}),
                json.dumps({"event": "start"}),
            ):
                await stream.send_raw(raw)
            await played_through(stream, 2.0)
            greeting = len(stream.agent_audio)
            stream.say(question_ulaw())
            await played_through(stream, greeting / BYTES_PER_S + 1.0)
            await stream.stop()
            await stream.wait_for(stream.closed.is_set)
        assert bridge.bad_messages >= 9
        assert bridge.failed_calls == 0

    run_with_bridge(server, scenario)
    detail = conversation(server, conv["id"])
    assert any((turn["user_text"] or "").endswith("open") for turn in detail["turns"])
    assert detail["end_reason"] == "caller_ended"


def test_the_agent_ending_the_call_closes_the_stream_after_its_last_words(stack: tuple[LocalServer, str]) -> None:
    server, agent_id = stack
    conv = start_conversation(server, agent_id)

    async def scenario(bridge: MediaBridge, url: str) -> None:
        async with TwilioMediaStream(url, parameters(conv)) as stream:
            await stream.wait_for(lambda: len(stream.agent_audio) >= 8000)
            with api(server) as http:  # ended over REST while the greeting plays
                ended = await asyncio.to_thread(
                    http.put, f"/api/v1/conversations/{conv['id']}", json={"status": "ended"}
                )
            assert ended.status_code == 200, ended.text
            await stream.wait_for(stream.closed.is_set)
            assert stream.echoed[-1] == "end"  # the bridge waited for the caller to hear what was sent
            assert not stream.playing()

    run_with_bridge(server, scenario)
    assert conversation(server, conv["id"])["end_reason"] == "api_request"


def test_make_run_starts_the_bridge_and_a_media_stream_number_s_call_reaches_it(tmp_path: Path) -> None:
    """The whole chain: a number in telephony mode media_stream, Twilio's signed voice webhook answered with
    <Connect><Stream>, and the stream (at the URL and with the parameters of that TwiML) through make run's bridge."""
    bridge_port = free_port()
    with TwilioDouble() as twilio:
        env = {
            "AIRIES_LOCAL_MEDIA_BRIDGE_PORT": str(bridge_port),
            "AIRIES_MEDIA_BRIDGE_URL": f"ws://127.0.0.1:{bridge_port}/twilio",
            "AIRIES_TWILIO_API_BASE": twilio.url,
        }
        with local_server(tmp_path, KEY, env=env) as server:
            assert f"media bridge ws://127.0.0.1:{bridge_port}/twilio" in server.log.read_text()
            health = httpx.get(f"http://127.0.0.1:{bridge_port}/health", timeout=10)
            assert health.status_code == 200 and health.json()["active_calls"] == 0
            account_sid, auth_token = twilio.add_account()
            twilio.add_number(account_sid, "+14155550100")
            with api(server) as http:
                agent = http.post(
                    "/api/v1/agents",
                    json={
                        "name": "Line",
                        "first_message": "Hello.",
                        "voice": {"provider": "espeak", "voice_id": "en-us"},
                    },
                ).json()
                assert http.post(f"/api/v1/agents/{agent['id']}/deploy").status_code == 201
                number = http.post(
                    "/api/v1/phone-numbers",
                    json={
                        "phone_number": "+14155550100",
                        "twilio": {"account_sid": account_sid, "auth_token": auth_token},
                        "agent_id": agent["id"],
                        "telephony_mode": "media_stream",
                    },
                ).json()
            form = {"CallSid": new_sid("CA"), "AccountSid": account_sid, "From": "+14155550199", "To": "+14155550100"}
            answer = httpx.post(
                number["voice_url"],
                content=urlencode(form),
                headers={
                    "content-type": "application/x-www-form-urlencoded",
                    "x-twilio-signature": twilio_signature(auth_token, number["voice_url"], form),
                },
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            stream = ET.fromstring(answer.text).find("./Connect/Stream")
            assert stream is not None
            url = stream.get("url", "")
            params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}

            async def call() -> None:
                async with TwilioMediaStream(url, params, account_sid=account_sid, call_sid=form["CallSid"]) as line:
                    await played_through(line, 0.3)  # the greeting came through the stack's own bridge
                    await line.stop()
                    await line.wait_for(line.closed.is_set)

            asyncio.run(call())
            assert conversation(server, params["conversation_id"])["end_reason"] == "caller_ended"
