"""The WebSocket Lambda logic against moto (DynamoDB + API Gateway Management API) on both databases.

Frames posted back are read from moto's backend (``connections[id].data``, frames concatenated); the 410 path
uses botocore's Stubber because moto never raises GoneException.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from typing import Any
from urllib.parse import quote

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws
from sqlalchemy import select

from airies.db.models.conversations import Conversation, ConversationTurn
from airies.schemas.agents import AgentCreate
from airies.schemas.conversations import ConversationCreate
from airies.services.accounts import AccountService
from airies.services.agents import AgentService
from airies.services.conversations import ConversationService, ConversationTokens
from airies.services.sessions import SessionStore
from airies.services.websocket import ApiGatewayPoster, WebSocketService
from tests.doubles.conv_engines import FakeLLM, FakeSTT, FakeTTS, fake_engines, silence, tone

ENDPOINT = "https://abc123.execute-api.us-east-1.amazonaws.com/test"
AGENT = {
    "name": "Front desk",
    "system_prompt": "You answer questions about the clinic.",
    "first_message": "Hello, thanks for calling.",
    "llm": {"provider": "openai", "model": "gpt-4o-mini"},
    "voice": {"provider": "elevenlabs", "voice_id": "21m00Tcm4TlvDq8ikWAM"},
    "transcriber": {"provider": "deepgram", "model": "nova-3"},
    "silence_timeout_seconds": 10,
    "max_duration_seconds": 60,
}


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


CLOSED: dict[str, list[dict[str, Any]]] = {}  # frames of connections the service closed (moto drops their data)


class ClosingPoster(ApiGatewayPoster):
    def close(self, connection_id: str) -> None:
        CLOSED[connection_id] = CLOSED.get(connection_id, []) + moto_frames(connection_id)
        super().close(connection_id)


def frames_of(connection_id: str) -> list[dict[str, Any]]:
    return CLOSED.get(connection_id, []) + moto_frames(connection_id)


def moto_frames(connection_id: str) -> list[dict[str, Any]]:
    from moto.apigatewaymanagementapi.models import apigatewaymanagementapi_backends

    backend = apigatewaymanagementapi_backends["123456789012"]["us-east-1"]
    key = quote(connection_id, safe="")  # moto keys connections by the URL-encoded id
    data = backend.connections[key].data if key in backend.connections else b""
    text, out, decoder, index = data.decode(), [], json.JSONDecoder(), 0
    while index < len(text):
        obj, index = decoder.raw_decode(text, index)
        out.append(obj)
    return out


class Harness:
    def __init__(self, database: Any, settings: Any, engines: Any, recorder: Any = None, **kwargs: Any) -> None:
        self.database = database
        self.clock = Clock()
        self.settings = settings.model_copy(update={"ws_management_url": ENDPOINT, "ws_token_secret": "k" * 32})
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        self.store = SessionStore(ddb, f"ws-{uuid.uuid4().hex[:6]}", clock=self.clock)
        self.store.ensure_table()
        self.tokens = ConversationTokens(b"k" * 32, ttl_seconds=300, clock=self.clock)
        self.client = boto3.client("apigatewaymanagementapi", endpoint_url=ENDPOINT, region_name="us-east-1")
        self.poster = ClosingPoster(self.client)
        self.credit = {"allowed": True}
        self.service = WebSocketService(
            self.settings,
            database,
            self.store,
            poster_factory=lambda endpoint: self.poster,
            engines=lambda session, account_id, config: engines,
            usage_sink=lambda session: None,
            credit_gate=lambda session: (
                lambda account_id: (
                    (True, None, None) if self.credit["allowed"] else (False, "insufficient_credits", "out")
                )
            ),
            tokens=self.tokens,
            clock=self.clock,
            recorder=recorder,
        )
        with database.session() as s:
            account, _ = AccountService(s).signup(name="Co", email=f"{uuid.uuid4().hex[:8]}@ex.com")
            agents = AgentService(s)
            agent = agents.create(account.id, AgentCreate(**{**AGENT, **kwargs}))
            agents.deploy(account.id, agent.id)
            self.account_id, self.agent_id = account.id, agent.id

    def start(self) -> tuple[str, str]:
        with self.database.session() as s:
            svc = ConversationService(s, self.settings, tokens=self.tokens)
            conversation, token, _ = svc.start_conversation(self.account_id, ConversationCreate(agent_id=self.agent_id))
            return conversation.id, token

    def connect(self, conversation_id: str, token: str | None) -> tuple[str, dict[str, Any]]:
        connection_id = uuid.uuid4().hex[:15] + "="  # API Gateway ids: alphanumerics and "="
        event = {
            "queryStringParameters": {"conversation_id": conversation_id, "token": token} if token else None,
            "requestContext": {
                "routeKey": "$connect",
                "eventType": "CONNECT",
                "connectionId": connection_id,
                "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
                "stage": "test",
            },
        }
        return connection_id, self.service.handle_connection(event)

    def send(self, connection_id: str, body: str | dict[str, Any]) -> dict[str, Any]:
        raw = body if isinstance(body, str) else json.dumps(body)
        event = {
            "body": raw,
            "isBase64Encoded": False,
            "requestContext": {
                "routeKey": "$default",
                "eventType": "MESSAGE",
                "connectionId": connection_id,
                "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
                "stage": "test",
            },
        }
        return self.service.handle_message(event)

    def audio(self, connection_id: str, pcm: bytes, start_seq: int = 0, chunk_ms: int = 200) -> int:
        size = chunk_ms * 32
        seq = start_seq
        for offset in range(0, len(pcm), size):
            self.send(
                connection_id,
                {"action": "audio", "seq": seq, "data": base64.b64encode(pcm[offset : offset + size]).decode()},
            )
            seq += 1
        return seq

    def turns(self, conversation_id: str) -> list[ConversationTurn]:
        with self.database.session() as s:
            return list(
                s.scalars(
                    select(ConversationTurn)
                    .where(ConversationTurn.conversation_id == conversation_id)
                    .order_by(ConversationTurn.seq)
                )
            )

    def conversation(self, conversation_id: str) -> Conversation:
        with self.database.session() as s:
            return s.get(Conversation, conversation_id)


def types(frames: list[dict[str, Any]]) -> list[str]:
    return [f["type"] for f in frames]


@pytest.fixture
def aws():
    with mock_aws():
        yield


def test_connect_rejects_missing_expired_and_foreign_tokens(aws, database, settings) -> None:
    h = Harness(database, settings, fake_engines())
    cid, token = h.start()
    other_cid, _ = h.start()
    assert h.connect(cid, None)[1]["statusCode"] == 401
    assert h.connect(other_cid, token)[1]["statusCode"] == 401  # token bound to another conversation
    forged = ConversationTokens(b"x" * 32).issue(cid, h.account_id)[0]
    assert h.connect(cid, forged)[1]["statusCode"] == 401
    h.clock.now += 301
    response = h.connect(cid, token)[1]
    assert response["statusCode"] == 401 and "expired" in response["body"]


def test_first_message_text_turn_and_history(aws, database, settings) -> None:
    llm = FakeLLM(reply="We open at nine. Anything else?")
    h = Harness(database, settings, fake_engines(llm=llm))
    cid, token = h.start()
    conn, response = h.connect(cid, token)
    assert response["statusCode"] == 200
    h.send(conn, {"action": "start"})
    frames = frames_of(conn)
    assert frames[0]["type"] == "ready" and frames[0]["conversation_id"] == cid
    assert "audio" in types(frames) and types(frames)[-1] == "turn_end"
    h.send(conn, {"action": "text", "text": "When do you open?"})
    frames = frames_of(conn)
    last_turn = [f for f in frames if f.get("turn_id") == frames[-1]["turn_id"]]
    assert types(last_turn)[0] == "transcript" and last_turn[0]["text"] == "When do you open?"
    assert (
        "".join(f["delta"] for f in last_turn if f["type"] == "agent_text").strip() == "We open at nine. Anything else?"
    )
    audio = [f for f in last_turn if f["type"] == "audio"]
    assert [f["seq"] for f in audio] == list(range(len(audio)))
    end = last_turn[-1]
    assert end["status"] == "completed" and end["latency"]["first_audio_ms"] is not None
    assert end["usage"]["completion_tokens"] > 0 and float(end["cost"]["total"]) > 0
    turns = h.turns(cid)
    assert [t.input_mode for t in turns] == ["none", "text"]
    assert turns[1].agent_text == "We open at nine. Anything else?"
    # history sent to the LLM: the first message as the assistant's, then the user's question
    messages = llm.requests[-1].messages
    assert messages[1] == {"role": "assistant", "content": "Hello, thanks for calling."}
    assert messages[-1] == {"role": "user", "content": "When do you open?"}
    assert h.conversation(cid).status == "active" and h.conversation(cid).turn_count == 2


def test_server_vad_ends_utterance_and_transcribes(aws, database, settings) -> None:
    stt = FakeSTT(text="book an appointment")
    h = Harness(database, settings, fake_engines(stt=stt), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    h.send(conn, {"action": "start"})
    seq = h.audio(conn, silence(400))
    seq = h.audio(conn, tone(600), seq)
    assert not stt.calls  # still speaking
    h.audio(conn, silence(600), seq)  # trailing silence > endpointing (500 ms)
    assert len(stt.calls) == 1 and stt.calls[0] >= 600 * 32  # the utterance, leading silence not buffered
    assert stt.calls[0] < (600 + 600 + 400) * 32
    frames = frames_of(conn)
    transcript = [f for f in frames if f["type"] == "transcript"]
    assert transcript[0]["text"] == "book an appointment"
    end = [f for f in frames if f["type"] == "turn_end"][-1]
    assert end["latency"]["endpointing_ms"] >= 500 and end["usage"]["stt_seconds"] > 0.5


def test_utterance_audio_from_a_warm_container_or_from_dynamodb(aws, database, settings) -> None:
    """A container that handled every frame of an utterance hands it to STT without reading DynamoDB; one that
    missed frames (another container took them) reads the buffered chunks. STT gets the same audio either way."""
    heard: list[bytes] = []
    stt = FakeSTT(text=lambda pcm: heard.append(pcm) or "book an appointment")
    h = Harness(database, settings, fake_engines(stt=stt), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    h.send(conn, {"action": "start"})
    queries: list[Any] = []
    chunks = h.store._chunks
    h.store._chunks = lambda *args: queries.append(args) or chunks(*args)  # type: ignore[method-assign]
    seq = h.audio(conn, silence(400))
    seq = h.audio(conn, tone(600), seq)
    seq = h.audio(conn, silence(600), seq)
    trailing = heard[0][len(tone(600)) :]  # the silence up to the end of the utterance
    assert heard[0] == tone(600) + trailing and trailing and not trailing.strip(b"\x00") and queries == []
    seq = h.audio(conn, tone(400), seq)
    h.service._heard.clear()  # as if those frames had reached another container
    seq = h.audio(conn, tone(200), seq)
    h.audio(conn, silence(600), seq)
    assert queries and heard[1] == tone(400) + tone(200) + trailing
    assert [t.user_text for t in h.turns(cid)] == ["book an appointment"] * 2


def test_explicit_end_of_utterance_is_idempotent_with_vad(aws, database, settings) -> None:
    stt = FakeSTT()
    h = Harness(database, settings, fake_engines(stt=stt), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    h.audio(conn, tone(400))
    h.send(conn, {"action": "end_of_utterance"})
    h.send(conn, {"action": "end_of_utterance"})  # nothing buffered any more
    assert len(stt.calls) == 1
    assert frames_of(conn)[-1]["type"] == "error" and frames_of(conn)[-1]["code"] == "no_audio"


def test_barge_in_stops_within_one_chunk_and_history_keeps_what_was_heard(aws, database, settings) -> None:
    holder: dict[str, Any] = {}

    def on_chunk(n: int) -> None:
        if n == 3:  # a concurrent $default invocation, as API Gateway would run it
            t = threading.Thread(target=holder["h"].send, args=(holder["conn"], {"action": "interrupt"}))
            t.start()
            t.join()
            holder["posted"] = types(frames_of(holder["conn"])).count("audio")  # when the interrupt was stored

    tts = FakeTTS(chunk_ms=250, on_chunk=on_chunk)
    llm = FakeLLM(reply="First sentence here. Second sentence is long and will be cut. Third one never heard.")
    h = Harness(database, settings, fake_engines(llm=llm, tts=tts), first_message_mode="assistant_waits_for_user")
    holder["h"] = h
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    holder["conn"] = conn
    h.send(conn, {"action": "text", "text": "tell me"})
    frames = frames_of(conn)
    kinds = types(frames)
    assert "interrupted" in kinds
    audio_frames = kinds.count("audio")
    # The interrupt landed while chunk 3 was being synthesised (synthesis may run ahead of the posts): after it,
    # at most one more chunk goes out (one already in flight, or one whose barge-in check had already answered).
    assert holder["posted"] <= audio_frames <= holder["posted"] + 1
    assert "audio" not in kinds[kinds.index("interrupted") :]
    interrupted = frames[kinds.index("interrupted")]
    end = frames[-1]
    assert end["type"] == "turn_end" and end["status"] == "interrupted"
    turn = h.turns(cid)[-1]
    assert turn.interrupted and turn.agent_text == interrupted["heard_text"]
    assert turn.agent_text_generated.startswith("First sentence here.")
    assert "never heard" not in turn.agent_text and len(turn.agent_text) < len("First sentence here. Second")
    assert h.conversation(cid).interruption_count == 1


def test_interrupt_with_played_ms_keeps_only_played_words(aws, database, settings) -> None:
    holder: dict[str, Any] = {}

    def on_chunk(n: int) -> None:
        if n == 6:
            holder["h"].send(holder["conn"], {"action": "interrupt", "played_ms": 0})

    tts = FakeTTS(chunk_ms=250, on_chunk=on_chunk)
    h = Harness(database, settings, fake_engines(tts=tts), first_message_mode="assistant_waits_for_user")
    holder["h"] = h
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    holder["conn"] = conn
    h.send(conn, {"action": "text", "text": "hi"})
    assert h.turns(cid)[-1].agent_text == ""  # posted but never played: the caller heard nothing


def test_caller_end_call_phrase_says_goodbye_and_ends(aws, database, settings) -> None:
    llm = FakeLLM()
    h = Harness(database, settings, fake_engines(llm=llm), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    h.send(conn, {"action": "text", "text": "ok thanks, goodbye!"})
    frames = frames_of(conn)
    assert frames[-1]["type"] == "ended" and frames[-1]["reason"] == "caller_end_call_phrase"
    assert not llm.requests  # the goodbye needs no model call
    said = "".join(f["delta"] for f in frames if f["type"] == "agent_text")
    assert "Goodbye" in said
    conversation = h.conversation(cid)
    assert conversation.status == "ended" and conversation.end_reason == "caller_end_call_phrase"
    h.send(conn, {"action": "text", "text": "hello?"})  # the connection is gone from the state table
    assert frames_of(conn)[-1]["code"] == "conversation_ended"


def test_llm_end_call_tool_ends_after_reply(aws, database, settings) -> None:
    h = Harness(
        database,
        settings,
        fake_engines(llm=FakeLLM(reply="Glad I could help.", end_call_tool=True)),
        first_message_mode="assistant_waits_for_user",
    )
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    h.send(conn, {"action": "text", "text": "that is all"})
    assert frames_of(conn)[-1]["reason"] == "end_call_tool"
    assert h.conversation(cid).end_reason == "end_call_tool"


def test_out_of_credits_ends_politely(aws, database, settings) -> None:
    llm = FakeLLM()
    h = Harness(database, settings, fake_engines(llm=llm), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    h.credit["allowed"] = False
    h.send(conn, {"action": "text", "text": "one more question"})
    frames = frames_of(conn)
    said = "".join(f["delta"] for f in frames if f["type"] == "agent_text")
    assert "run out of credits" in said and "audio" in types(frames)
    assert frames[-1]["type"] == "ended" and frames[-1]["reason"] == "insufficient_credits"
    assert not llm.requests


def test_silence_timeout_reminds_once_then_ends(aws, database, settings) -> None:
    h = Harness(database, settings, fake_engines(), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    h.clock.now += 5
    h.send(conn, {"action": "ping"})
    assert types(frames_of(conn)) == ["pong"]
    h.clock.now += 6  # 11 s > silence_timeout_seconds (10)
    assert h.service.sweep() == {"reminder": 1}
    said = "".join(f["delta"] for f in frames_of(conn) if f["type"] == "agent_text")
    assert said.strip() == "Are you still there?"
    assert h.service.sweep() == {}  # one reminder only
    h.clock.now += 11
    assert h.service.sweep() == {"silence_timeout": 1}
    assert frames_of(conn)[-1]["reason"] == "silence_timeout"
    assert h.conversation(cid).end_reason == "silence_timeout"


def test_max_duration_and_abandoned_sessions(aws, database, settings) -> None:
    h = Harness(database, settings, fake_engines(), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    for _ in range(7):  # keep talking so silence never times out
        h.clock.now += 9
        h.send(conn, {"action": "text", "text": "still here"})
    assert h.conversation(cid).status == "active"
    h.clock.now += 9  # 72 s > max_duration_seconds (60)
    h.send(conn, {"action": "ping"})
    assert frames_of(conn)[-1]["reason"] == "max_duration"
    cid2, token2 = h.start()
    conn2, _ = h.connect(cid2, token2)
    h.service.handle_connection(
        {"requestContext": {"routeKey": "$disconnect", "eventType": "DISCONNECT", "connectionId": conn2}}
    )
    h.clock.now += 31
    assert h.service.sweep() == {"caller_disconnected": 1}
    assert h.conversation(cid2).end_reason == "caller_disconnected"


def test_gone_connection_is_dropped_alone(aws, database, settings) -> None:
    h = Harness(database, settings, fake_engines(), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    gone, _ = h.connect(cid, token)
    alive, _ = h.connect(cid, token)  # a second connection (e.g. a monitor) on the same conversation
    stubbed = boto3.client("apigatewaymanagementapi", endpoint_url=ENDPOINT, region_name="us-east-1")
    stubber = Stubber(stubbed)
    for connection_id in sorted([gone, alive]):  # the service posts in sorted order
        expected = {"ConnectionId": connection_id, "Data": b'{"type":"pong","v":1}'}
        if connection_id == gone:
            stubber.add_client_error(
                "post_to_connection", service_error_code="GoneException", http_status_code=410, expected_params=expected
            )
        else:
            stubber.add_response("post_to_connection", {}, expected_params=expected)
    stubber.activate()
    h.poster = ApiGatewayPoster(stubbed)
    assert h.service.broadcast_to_conversation(cid, {"type": "pong", "v": 1}) == 1
    stubber.assert_no_pending_responses()
    session = h.store.get(cid)
    assert gone not in session.connections and alive in session.connections
    assert h.store.connection(gone) is None and h.store.connection(alive) is not None
    assert h.conversation(cid).status == "active"


def test_bad_frames_get_errors_and_leave_state_alone(aws, database, settings) -> None:
    h = Harness(database, settings, fake_engines(), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    h.send(conn, "{not json")
    h.send(conn, {"action": "dance"})
    h.send(conn, {"action": "audio", "data": "!!notbase64!!"})
    h.send(conn, {"action": "audio", "data": base64.b64encode(b"\x01\x02\x03").decode()})
    h.send(conn, {"action": "audio", "data": base64.b64encode(tone(300)).decode()})
    h.send(conn, {"action": "text", "text": ""})
    h.send(conn, {"action": "text", "text": "hi", "extra": 1})
    codes = [f["code"] for f in frames_of(conn)]
    assert codes == [
        "malformed_json",
        "unknown_action",
        "bad_audio",
        "bad_audio",
        "audio_too_large",
        "invalid_frame",
        "invalid_frame",
    ]
    session = h.store.get(cid)
    assert session.state == "listening" and session.audio_ms == 0 and session.turn_seq == 0
    for _ in range(15):
        h.send(conn, {"action": "ping"})
    codes = [f.get("code") for f in frames_of(conn)[7:]]
    assert codes.count(None) == 10 and codes.count("rate_limited") == 5  # 10 control frames per second


def test_recording_stores_both_sides_as_sent(aws, database, settings) -> None:
    from airies.audio.codecs import read_wav
    from airies.services.conversations import S3Recorder

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="rec-test")
    h = Harness(
        database,
        settings,
        fake_engines(stt=FakeSTT(text="hello")),
        recorder=S3Recorder(s3, "rec-test"),
        first_message_mode="assistant_waits_for_user",
        recording_enabled=True,
    )
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    seq = h.audio(conn, tone(600))
    h.send(conn, {"action": "end_of_utterance", "last_seq": seq - 1})
    turn = h.turns(cid)[-1]
    assert set(turn.recording) == {"caller", "agent"}
    caller = s3.get_object(Bucket="rec-test", Key=turn.recording["caller"]["key"])["Body"].read()
    pcm, rate = read_wav(caller)
    assert rate == 16000 and len(pcm) == 600 * 32
    sent = b"".join(base64.b64decode(f["data"]) for f in frames_of(conn) if f["type"] == "audio")
    agent = read_wav(s3.get_object(Bucket="rec-test", Key=turn.recording["agent"]["key"])["Body"].read())[0]
    assert agent == sent and turn.recording["agent"]["key"].startswith(f"recordings/{h.account_id}/{cid}/")
