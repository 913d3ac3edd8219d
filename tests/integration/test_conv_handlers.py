"""The WebSocket Lambda logic against moto (DynamoDB + API Gateway Management API) on both databases.

Frames posted back are read from moto's backend (``connections[id].data``, frames concatenated); the 410 path
uses botocore's Stubber because moto never raises GoneException.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws
from sqlalchemy import select

from airies.accounts.service import AccountService
from airies.agents.config import AgentConfig
from airies.agents.schemas import AgentCreate
from airies.agents.service import AgentService
from airies.conversations.live import ApiGatewayPoster, WebSocketService
from airies.conversations.live_runtime import turn_deadline
from airies.conversations.live_sessions import LiveSessions
from airies.conversations.models import Conversation, ConversationTurn
from airies.conversations.orchestrator import OUT_OF_CREDIT_MESSAGE, TurnRequest, Utterance
from airies.conversations.schemas import ConversationCreate
from airies.conversations.service import ConversationService, ConversationTokens
from airies.conversations.sessions import CONFIG_PART_BYTES, CONFIG_TEXT_BYTES, ControlFlood, SessionStore
from airies.conversations.turns import TurnMode
from airies.core.errors import NotFoundError
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


@dataclasses.dataclass
class InvocationClock:
    """The Lambda context's clock, set by the test."""

    remaining_ms: int

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


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
            agents = AgentService(s, settings=self.settings)  # its URL guard checks tool URLs
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
    # The live session keeps the published config in an item of its own, without its defaults: DynamoDB bills
    # every write of the session item (one per caller frame) by the item's size.
    with h.database.session() as s:
        published = ConversationService(s, h.settings, tokens=h.tokens).config_for(h.conversation(cid))
    stored = h.store.config(cid)
    assert stored == published.compact_json() and AgentConfig.model_validate(stored) == published
    assert len(json.dumps(stored)) < len(json.dumps(published.model_dump(mode="json"))) // 2
    session_item = h.store.client.get_item(
        TableName=h.store.table, Key={"pk": {"S": f"conv#{cid}"}, "sk": {"S": "session"}}
    )["Item"]
    assert "config" not in session_item and h.store.get(cid).config == {}
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


def _long_prompt(kind: str) -> str:
    """Just under the 200,000-character limit, 3 bytes a character in UTF-8: repeated text (compresses into one
    item) or random ideographs (still over an item's size once compressed)."""
    if kind == "repeated":
        return "日本語のお問い合わせ。" * 18_000
    rng = random.Random(7)
    return "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(199_000))


@pytest.mark.parametrize("kind", ["repeated", "random"])
def test_a_config_over_dynamodbs_item_size_connects_and_runs_its_turns(aws, database, settings, kind: str) -> None:
    """A valid agent config can be larger than the 400 KB DynamoDB accepts in one item (a long system prompt in a
    script of 3 bytes a character): the call still connects, and the config read back, as a container that did not
    take the connect reads it, is the published one."""
    prompt = _long_prompt(kind)
    assert len(prompt.encode()) > 400_000
    llm = FakeLLM(reply="Certainly.")
    h = Harness(database, settings, fake_engines(llm=llm), system_prompt=prompt)
    cid, token = h.start()
    conn, response = h.connect(cid, token)
    assert response["statusCode"] == 200
    assert h.connect(cid, token)[1]["statusCode"] == 200  # a second connect stores the same config again
    stored = h.store.config(cid)
    assert stored is not None and stored["system_prompt"] == prompt
    items = h.store.client.query(
        TableName=h.store.table,
        KeyConditionExpression="pk = :pk AND begins_with(sk, :sk)",
        ExpressionAttributeValues={":pk": {"S": f"conv#{cid}"}, ":sk": {"S": "config"}},
    )["Items"]
    assert len(items) == (1 if kind == "repeated" else 2)
    h.send(conn, {"action": "text", "text": "Can you help?"})
    assert types(frames_of(conn))[-1] == "turn_end" and frames_of(conn)[-1]["status"] == "completed"
    assert llm.requests[-1].messages[0]["content"].startswith(prompt[:1000])


@pytest.mark.parametrize("size", [CONFIG_TEXT_BYTES - 1000, CONFIG_TEXT_BYTES + 1000, 3 * CONFIG_PART_BYTES])
def test_the_config_item_round_trips_at_every_size_and_survives_a_rewrite(aws, size: int) -> None:
    """Each side of the text/packed boundary and a config of several parts (incompressible): stored, stored again
    (a later connect), read back equal."""
    store = SessionStore(boto3.client("dynamodb", region_name="us-east-1"), f"ws-{uuid.uuid4().hex[:6]}")
    store.ensure_table()
    config = {"system_prompt": base64.b64encode(random.Random(size).randbytes(size * 3 // 4)).decode()}
    for _ in range(2):
        store._store_config("conv_1", json.dumps(config))
        assert store.config("conv_1") == config


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


def test_end_of_utterance_after_this_containers_audio_claims_the_turn_in_one_write(aws, database, settings) -> None:
    stt = FakeSTT()
    h = Harness(database, settings, fake_engines(stt=stt), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    h.audio(conn, tone(400))
    calls: list[tuple[str, str]] = []
    h.store.client.meta.events.register(
        "before-call.dynamodb.*", lambda model, params, **_: calls.append((model.name, repr(params)))
    )
    h.send(conn, {"action": "end_of_utterance"})
    assert len(stt.calls) == 1 and types(frames_of(conn))[-1] == "turn_end"
    turn_id = frames_of(conn)[-1]["turn_id"]
    # The frame's count and the turn's claim are one conditional write: no count or read of the session first.
    first = next(c for c in calls if c[0] in ("GetItem", "UpdateItem", "PutItem"))
    assert first[0] == "UpdateItem" and turn_id in first[1]
    h.send(conn, {"action": "end_of_utterance"})  # the same utterance again: no second turn
    assert len(stt.calls) == 1


def test_an_utterance_this_container_heard_is_transcribed_while_it_is_claimed(aws, database, settings) -> None:
    """The end_of_utterance after this container's audio: STT and the model are asked while the claim is in
    flight, and the turn's first post waits for it; a lost claim posts nothing and stores nothing."""
    stt = FakeSTT(text="where is my order")
    llm = FakeLLM(first_token_s=1.0)
    h = Harness(database, settings, fake_engines(stt=stt, llm=llm), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    begin_turn = h.store.begin_turn
    asked: list[tuple[int, int]] = []
    lose = [False]

    def slow_claim(conversation_id: str, turn_id: str, **kwargs: Any) -> Any:
        time.sleep(0.2)  # the claim is still in flight when STT and the model are asked
        asked.append((len(stt.calls), len(llm.requests)))
        if lose[0]:
            h.store.end(conversation_id, "caller_ended")  # another invocation ended the call first
        return begin_turn(conversation_id, turn_id, **kwargs)

    h.store.begin_turn = slow_claim  # type: ignore[method-assign]
    seq = h.audio(conn, tone(400))
    h.send(conn, {"action": "end_of_utterance", "last_seq": seq - 1})
    assert asked == [(1, 1)] and types(frames_of(conn))[-1] == "turn_end"
    assert [t.user_text for t in h.turns(cid)] == ["where is my order"]
    lose[0] = True
    seq = h.audio(conn, tone(400), seq)
    before = len(frames_of(conn))
    h.send(conn, {"action": "end_of_utterance", "last_seq": seq - 1})
    assert asked[-1] == (2, 2)  # asked ahead of the claim, which lost: no transcript, audio or turn_end
    assert [(f["type"], f.get("code")) for f in frames_of(conn)[before:]] == [("error", "conversation_ended")]
    assert len(h.turns(cid)) == 1 and not llm.finished_at[1:]


@pytest.mark.parametrize("state", ["listening", "speaking"])
def test_an_utterance_ended_while_the_agent_answers_is_claimed_before_it_is_transcribed(
    aws, database, settings, state
) -> None:
    """A turn run ahead writes its claim once its provider requests have left, unless the agent is still answering:
    the claim is what cancels that answer, so it does not wait for STT."""
    transcribed: list[int] = []
    stt = FakeSTT(text=lambda pcm: transcribed.append(1) or "hello", latency_s=0.2)
    h = Harness(database, settings, fake_engines(stt=stt), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    seq = h.audio(conn, tone(400))
    hint = h.service.edge._utterance_hint(cid)  # the live state as this container's last chunk left it
    assert hint is not None and hint.state == "listening"
    begin_turn = h.store.begin_turn
    claimed_after: list[int] = []

    def claim(conversation_id: str, turn_id: str, **kwargs: Any) -> Any:
        claimed_after.append(len(transcribed))
        return begin_turn(conversation_id, turn_id, **kwargs)

    h.store.begin_turn = claim  # type: ignore[method-assign]
    request = TurnRequest(TurnMode.AUDIO, utterance=Utterance(end_seq=seq - 1), expected_utt=hint.utt, count_limit=10)
    h.service.orchestrator.run(dataclasses.replace(hint, state=state), h.poster, request)
    assert claimed_after == ([0] if state == "speaking" else [1])
    assert [t.user_text for t in h.turns(cid)] == ["hello"]


def test_a_turn_run_ahead_on_audio_that_began_elsewhere_runs_again_on_the_claimed_chunks(
    aws, database, settings
) -> None:
    """The audio this container held began where its last view of the live state said; if the claim shows the
    utterance began elsewhere, the turn run ahead posts nothing and runs again on the buffered chunks the claim
    names (read from DynamoDB): one transcript, one stored turn, from the right audio."""
    heard: list[bytes] = []
    stt = FakeSTT(text=lambda pcm: heard.append(pcm) or f"transcription {len(heard)}")
    h = Harness(database, settings, fake_engines(stt=stt), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    seq = h.audio(conn, tone(200) + tone(400, freq=660))  # chunks 0, 1, 2 (200 ms each)
    h.store.set_segment_start(cid, 1)  # elsewhere, the utterance was made to start at chunk 1 (same utterance)
    h.send(conn, {"action": "end_of_utterance", "last_seq": seq - 1})
    assert heard[0] == tone(200) + tone(400, freq=660)  # ahead, from this container's cache
    assert heard[1:] == [tone(400, freq=660)]  # again, from the chunks the claim named
    frames = frames_of(conn)
    assert [f["text"] for f in frames if f["type"] == "transcript"] == ["transcription 2"]
    assert types(frames).count("turn_end") == 1
    assert [t.user_text for t in h.turns(cid)] == ["transcription 2"]


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


def test_a_turn_out_of_invocation_time_is_cut_stored_billed_and_released(aws, database, settings) -> None:
    invocation = InvocationClock(remaining_ms=8_000)

    def on_chunk(n: int) -> None:
        if n == 2:  # the invocation runs out of time once the caller has the reply's first audio
            waited = time.monotonic() + 10
            while "audio" not in types(frames_of(conn)) and time.monotonic() < waited:
                time.sleep(0.01)
            invocation.remaining_ms = 4_000

    tts = FakeTTS(chunk_ms=250, on_chunk=on_chunk)
    llm = FakeLLM(reply="First sentence here. Second sentence is long and will be cut. Third one never heard.")
    h = Harness(database, settings, fake_engines(llm=llm, tts=tts), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    # What the voice handler does with the Lambda context: the turn stops 5 s before the invocation's end.
    with turn_deadline(invocation, margin_ms=5_000):
        h.send(conn, {"action": "text", "text": "tell me"})
    frames = frames_of(conn)
    kinds = types(frames)
    assert kinds.count("audio") >= 1 and "interrupted" in kinds
    assert "audio" not in kinds[kinds.index("interrupted") :]
    assert frames[-1]["type"] == "turn_end" and frames[-1]["status"] == "interrupted"
    turn = h.turns(cid)[-1]
    assert turn.interrupted and turn.agent_text == frames[kinds.index("interrupted")]["heard_text"]
    assert "never heard" not in turn.agent_text
    assert turn.usage["prompt_tokens"] == 120 and turn.usage["tts_characters"] > 0  # the work done is billed
    # Released: the next frame's turn (a fresh invocation, no deadline) runs to the end.
    h.send(conn, {"action": "text", "text": "again"})
    assert h.turns(cid)[-1].status == "completed"


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
    """A typed turn asks the model while its credit is read; out of credit, that request is cancelled before any
    of its reply is said or billed, and the caller hears the notice instead."""
    llm = FakeLLM(first_token_s=1.0)
    h = Harness(database, settings, fake_engines(llm=llm), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    h.credit["allowed"] = False
    h.send(conn, {"action": "text", "text": "one more question"})
    frames = frames_of(conn)
    said = "".join(f["delta"] for f in frames if f["type"] == "agent_text")
    assert said.strip() == OUT_OF_CREDIT_MESSAGE and "audio" in types(frames)
    assert frames[-1]["type"] == "ended" and frames[-1]["reason"] == "insufficient_credits"
    assert len(llm.requests) <= 1 and not llm.finished_at  # asked at most once, and cut before its reply
    (turn,) = h.turns(cid)
    assert turn.agent_text == OUT_OF_CREDIT_MESSAGE and turn.usage["prompt_tokens"] == 0
    assert types(frames).count("transcript") == 1 and types(frames).count("turn_end") == 1


def test_a_gate_that_cannot_be_read_fails_the_turn_and_the_call_listens_again(aws, database, settings) -> None:
    """A typed turn's credit is read on its claim's thread while the model works; if that read fails, nothing of the
    turn is said or stored, the caller gets an error and the session goes back to listening."""
    llm = FakeLLM(first_token_s=1.0)
    h = Harness(database, settings, fake_engines(llm=llm), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    h.send(conn, {"action": "text", "text": "first"})
    gate = h.service.runtime.credit_gate

    def unavailable(account_id: str) -> Any:
        raise RuntimeError("the billing database is unavailable")

    h.service.runtime.credit_gate = lambda session: unavailable
    before = len(frames_of(conn))
    h.send(conn, {"action": "text", "text": "second"})
    assert [(f["type"], f.get("code")) for f in frames_of(conn)[before:]] == [("error", "internal_error")]
    assert not llm.finished_at[1:] and [t.user_text for t in h.turns(cid)] == ["first"]
    assert h.store.get(cid).state == "listening"
    h.service.runtime.credit_gate = gate
    h.send(conn, {"action": "text", "text": "third"})
    assert frames_of(conn)[-1]["type"] == "turn_end"
    assert [t.user_text for t in h.turns(cid)] == ["first", "third"]


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


def index_keys(h: Harness) -> list[str]:
    """The conversations in the live-sessions index, every shard."""
    found: list[str] = []
    for shard in range(16):
        page = h.store.client.query(
            TableName=h.store.table,
            IndexName="live-sessions",
            KeyConditionExpression="live_shard = :s",
            ExpressionAttributeValues={":s": {"S": f"live#{shard}"}},
        )
        found += [item["pk"]["S"].split("#", 1)[1] for item in page["Items"]]
    return sorted(found)


def test_the_sweeper_queries_the_sessions_that_are_due_bounded_per_run(aws, database, settings) -> None:
    """No Scan: the sweeper reads only the live sessions whose deadline has come (the sparse live-sessions index),
    at most ``sweeper_max_sessions_per_run`` a run, then writes each one's next deadline; an ended session leaves
    the index."""
    h = Harness(database, settings, fake_engines(), first_message_mode="assistant_waits_for_user")
    h.service.runtime.settings = h.settings.model_copy(update={"sweeper_max_sessions_per_run": 2})
    conversations = [h.start() for _ in range(3)]
    connections = [h.connect(cid, token)[0] for cid, token in conversations]
    ids = sorted(cid for cid, _ in conversations)
    assert index_keys(h) == ids

    def no_scan(**kwargs: Any) -> Any:
        raise AssertionError("the sweeper scanned the table")

    h.store.client.scan = no_scan  # type: ignore[method-assign]
    reads = h.store.ops["read"]
    assert h.service.sweep() == {}  # nobody is due (silence_timeout_seconds: 10)
    assert h.store.ops["read"] - reads == 16  # one Query per shard, no session read
    h.clock.now += 11
    assert h.service.sweep() == {"reminder": 2}  # two a run
    assert h.service.sweep() == {"reminder": 1}  # the third; the first two are not due again yet
    assert h.service.sweep() == {}
    h.clock.now += 11
    assert h.service.sweep() == {"silence_timeout": 2}
    assert h.service.sweep() == {"silence_timeout": 1}
    assert index_keys(h) == [] and all(h.conversation(cid).status == "ended" for cid in ids)
    assert all(frames_of(conn)[-1]["reason"] == "silence_timeout" for conn in connections)


@pytest.mark.parametrize("delete", [True, False])
def test_a_turn_deletes_the_audio_chunks_it_used_when_asked(aws, database, settings, delete) -> None:
    h = Harness(database, settings, fake_engines(), first_message_mode="assistant_waits_for_user")
    h.service.runtime.settings = h.settings.model_copy(update={"ws_delete_used_chunks": delete})
    cid, token = h.start()
    conn, _ = h.connect(cid, token)

    def chunks() -> list[str]:
        page = h.store.client.query(
            TableName=h.store.table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :c)",
            ExpressionAttributeValues={":pk": {"S": f"conv#{cid}"}, ":c": {"S": "chunk#"}},
            ConsistentRead=True,
        )
        return [item["sk"]["S"] for item in page["Items"]]

    seq = h.audio(conn, tone(600))
    stored = chunks()
    assert len(stored) == 3 and all(
        int(
            h.store.client.get_item(TableName=h.store.table, Key={"pk": {"S": f"conv#{cid}"}, "sk": {"S": sk}})["Item"][
                "ttl"
            ]["N"]
        )
        <= h.clock.now + 300
        for sk in stored
    )  # a short TTL as the backstop
    h.service._heard.clear()  # the turn reads them from DynamoDB
    h.audio(conn, silence(600), seq)
    assert h.turns(cid)[-1].input_mode == "audio"
    if not delete:  # left to their TTL
        assert [sk for sk in chunks() if sk in stored] == stored
        return
    for _ in range(300):  # deleted off the turn's critical path
        left = [sk for sk in chunks() if sk in stored]
        if not left:
            break
        threading.Event().wait(0.01)
    assert left == []


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
    from airies.conversations.service import S3Recorder
    from airies.voice.audio.codecs import read_wav

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


# --- conversations ended or deleted elsewhere ------------------------------------------------------------------
def set_row(h: Harness, conversation_id: str, **values: Any) -> None:
    with h.database.session() as s:
        row = s.get(Conversation, conversation_id)
        for key, value in values.items():
            setattr(row, key, value)


def end_row(h: Harness, conversation_id: str, reason: str = "api_request") -> None:
    """End the conversation in the database only, as a REST call on another server would."""
    with h.database.session() as s:
        ConversationService(s, h.settings, tokens=h.tokens).end_conversation(h.account_id, conversation_id, reason)


def delete_row(h: Harness, conversation_id: str) -> None:
    with h.database.session() as s:
        ConversationService(s, h.settings, tokens=h.tokens).delete(h.account_id, conversation_id)


def closed_by_server(connection_id: str) -> bool:
    return connection_id in CLOSED


def test_end_of_a_deleted_conversation_still_closes_the_socket_and_the_sweep_goes_on(aws, database, settings) -> None:
    h = Harness(database, settings, fake_engines(), first_message_mode="assistant_waits_for_user")
    gone, gone_token = h.start()
    kept, kept_token = h.start()
    gone_conn, _ = h.connect(gone, gone_token)
    kept_conn, _ = h.connect(kept, kept_token)
    delete_row(h, gone)
    assert h.service.end(gone, "max_duration", None) is True  # end_conversation returned None: no exception
    ended = frames_of(gone_conn)[-1]
    assert ended["type"] == "ended" and ended["reason"] == "max_duration"
    assert (ended["duration_seconds"], ended["turns"], ended["cost_usd"]) == (0.0, 0, "0.000000000")
    assert closed_by_server(gone_conn) and h.store.connection(gone_conn) is None
    assert h.store.get(gone).state == "ended"

    # A sweep over several sessions: one whose row was deleted, one whose live-state write fails, one due to end.
    third, third_token = h.start()
    h.connect(third, third_token)
    fourth, fourth_token = h.start()
    h.connect(fourth, fourth_token)
    delete_row(h, third)
    broken = h.store.end

    def end(conversation_id: str, reason: str) -> Any:
        if conversation_id == fourth:
            raise RuntimeError("DynamoDB is having a bad day")
        return broken(conversation_id, reason)

    h.store.end = end  # type: ignore[method-assign]
    h.clock.now += 61  # every session is past max_duration_seconds (60)
    assert h.service.sweep() == {"closed_elsewhere": 1, "max_duration": 1, "errors": 1}
    assert frames_of(kept_conn)[-1]["reason"] == "max_duration"
    assert h.conversation(kept).end_reason == "max_duration"
    assert h.store.get(third).end_reason == "deleted"
    assert h.conversation(fourth).status == "active"  # nothing ended for it: the next sweep tries again


def test_minutes_are_billed_to_the_live_sessions_last_activity(aws, database, settings) -> None:
    import time as _time
    from datetime import UTC, datetime

    h = Harness(database, settings, fake_engines(), first_message_mode="assistant_waits_for_user")
    h.clock.now = _time.time() - 3600  # an hour ago: nothing is capped at "now"
    started = h.clock.now
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    set_row(h, cid, started_at=datetime.fromtimestamp(started, UTC))
    h.clock.now += 120
    h.audio(conn, tone(200))  # caller speech: the last activity (no turn: no trailing silence yet)
    h.service.handle_connection(
        {"requestContext": {"routeKey": "$disconnect", "eventType": "DISCONNECT", "connectionId": conn}}
    )
    h.clock.now += 40  # gone for 40 s: the sweeper ends it
    assert h.service.sweep() == {"caller_disconnected": 1}
    row = h.conversation(cid)
    assert row.end_reason == "caller_disconnected" and row.duration_seconds == pytest.approx(120, abs=0.01)

    cid2, token2 = h.start()
    conn2, _ = h.connect(cid2, token2)
    set_row(h, cid2, started_at=datetime.fromtimestamp(h.clock.now, UTC))
    h.clock.now += 45  # a silent caller, still connected, hangs up: billed to the hang-up
    h.send(conn2, {"action": "end"})
    assert frames_of(conn2)[-1]["reason"] == "caller_ended"
    assert h.conversation(cid2).duration_seconds == pytest.approx(45, abs=0.01)


@pytest.mark.parametrize("how", ["ended", "deleted"])
def test_a_turn_of_a_conversation_closed_elsewhere_ends_the_live_session(aws, database, settings, how) -> None:
    """The live session outlived its row (its close failed): a typed turn's request, sent while the row is read,
    is cut before any of its reply, and the call ends."""
    llm = FakeLLM(first_token_s=1.0)
    h = Harness(database, settings, fake_engines(llm=llm), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    if how == "ended":
        end_row(h, cid, "api_request")
    else:
        delete_row(h, cid)
    h.send(conn, {"action": "text", "text": "are you there?"})
    frames = frames_of(conn)
    assert types(frames) == ["ended"] and frames[0]["reason"] == ("api_request" if how == "ended" else "deleted")
    assert len(llm.requests) <= 1 and not llm.finished_at  # cut before its reply
    assert closed_by_server(conn) and h.store.get(cid).state == "ended"
    assert h.turns(cid) == []


@pytest.mark.parametrize("how", ["ended", "deleted"])
def test_a_turn_refused_when_stored_ends_the_live_session_without_turn_end(aws, database, settings, how) -> None:
    from datetime import timedelta

    h: Harness

    def close_elsewhere(n: int) -> None:
        # While the reply is spoken, the conversation is ended (before this turn began) or deleted elsewhere.
        if n != 1:  # the reply's first chunk
            return
        if how == "ended":
            end_row(h, cid, "api_request")
            with h.database.session() as s:
                row = s.get(Conversation, cid)
                row.ended_at = row.ended_at - timedelta(hours=1)
        else:
            delete_row(h, cid)

    engines = fake_engines(llm=FakeLLM(reply="Sure, one moment."), tts=FakeTTS(on_chunk=close_elsewhere))
    h = Harness(database, settings, engines, first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    h.send(conn, {"action": "text", "text": "book me in"})
    kinds = types(frames_of(conn))
    assert "turn_end" not in kinds and kinds[-1] == "ended" and "audio" in kinds
    assert frames_of(conn)[-1]["reason"] == ("api_request" if how == "ended" else "deleted")
    assert h.turns(cid) == [] and h.store.get(cid).state == "ended"


def test_rest_end_and_delete_end_the_live_session_at_once(aws, database, settings) -> None:
    from fastapi.testclient import TestClient

    from airies.api.app import create_app

    h = Harness(database, settings, fake_engines(), first_message_mode="assistant_waits_for_user")
    with database.session() as s:
        _, key = AccountService(s).signup(name="Rest", email=f"{uuid.uuid4().hex[:8]}@ex.com")
    app = create_app(h.settings, database)
    app.state.live_sessions = h.service
    app.state.conversation_tokens = h.tokens
    headers = {"Authorization": f"Bearer {key.raw_key}"}
    owner = {"Authorization": f"Bearer {owner_key(h)}"}
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    h.send(conn, {"action": "text", "text": "hello"})
    with TestClient(app) as client:
        assert client.put(f"/api/v1/conversations/{cid}", json={"status": "ended"}, headers=headers).status_code == 404
        assert h.store.get(cid).state == "listening"  # another tenant's call touches nothing
        response = client.put(f"/api/v1/conversations/{cid}", json={"status": "ended"}, headers=owner)
        assert response.status_code == 200 and response.json()["end_reason"] == "api_request"
        ended = frames_of(conn)[-1]
        assert ended["type"] == "ended" and ended["reason"] == "api_request" and ended["turns"] == 1
        assert closed_by_server(conn) and h.store.get(cid).state == "ended" and h.store.connection(conn) is None
        assert h.connect(cid, token)[1]["statusCode"] == 410

        cid2, token2 = h.start()
        conn2, _ = h.connect(cid2, token2)
        assert client.delete(f"/api/v1/conversations/{cid2}", headers=owner).status_code == 204
        assert frames_of(conn2)[-1]["reason"] == "deleted" and closed_by_server(conn2)
        assert h.store.get(cid2).state == "ended" and h.conversation(cid2) is None


def owner_key(h: Harness) -> str:
    """A fresh API key of the harness's account."""
    from airies.accounts.service import AccountService as Accounts

    with h.database.session() as s:
        issued = Accounts(s).create_key(h.account_id, name="test")
    return issued.raw_key


# --- failures after the claim, $connect of a deleted agent, unexpected errors -----------------------------------
def test_a_failing_turn_returns_the_session_to_listening_and_reports_an_internal_error(aws, database, settings) -> None:
    engines = fake_engines(stt=FakeSTT(text="book an appointment"))
    failures = {"left": 1}

    def factory(session: Any, account_id: str, config: Any) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("secret connection string postgres://admin:hunter2@db")
        return engines

    h = Harness(database, settings, engines, first_message_mode="assistant_waits_for_user")
    h.service.engines = factory
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    seq = h.audio(conn, tone(400))
    h.send(conn, {"action": "end_of_utterance"})
    error = frames_of(conn)[-1]
    assert error["type"] == "error" and error["code"] == "internal_error"
    assert "hunter2" not in json.dumps(error) and error["details"] is None
    assert h.store.get(cid).state == "listening"  # not stuck in "thinking"
    # The server VAD ends the next utterance again, and the turn runs.
    seq = h.audio(conn, tone(400), seq)
    h.audio(conn, silence(600), seq)
    assert frames_of(conn)[-1]["type"] == "turn_end" and h.turns(cid)[-1].user_text == "book an appointment"
    assert h.store.get(cid).state == "listening"


def test_connect_for_a_deleted_agent_is_refused_with_a_4xx(aws, database, settings) -> None:
    h = Harness(database, settings, fake_engines())
    cid, token = h.start()
    with database.session() as s:
        AgentService(s).delete(h.account_id, h.agent_id)
    _, response = h.connect(cid, token)
    assert response["statusCode"] == 409 and json.loads(response["body"])["code"] == "agent_deleted"


# --- flood guard, live state machine, minimum chunk size ------------------------------------------------------------
def test_audio_flood_is_refused_before_it_counts(aws, database, settings) -> None:
    h = Harness(database, settings, fake_engines(), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    # The clock stands still: 5 s of burst is allowed at once, then nothing more until time passes.
    seq = h.audio(conn, silence(5000))
    assert [f.get("code") for f in frames_of(conn)] == []
    before = h.store.get(cid)
    h.send(conn, {"action": "audio", "seq": seq, "data": base64.b64encode(tone(200)).decode()})
    assert frames_of(conn)[-1]["code"] == "rate_limited"
    after = h.store.get(cid)
    assert (after.audio_ms, after.speech_ms, after.silence_ms, after.last_activity) == (
        before.audio_ms,
        before.speech_ms,
        before.silence_ms,
        before.last_activity,
    )
    h.clock.now += 1  # 1 s later: 1.5 s more audio is fine
    seq = h.audio(conn, silence(1400), seq + 1)
    assert types(frames_of(conn)).count("error") == 1 and h.store.get(cid).audio_ms == 6400


def test_live_state_is_speaking_from_the_first_audio_out_then_listening(aws, database, settings) -> None:
    h = Harness(database, settings, fake_engines(), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    events: list[tuple[str, Any]] = []
    post, set_speaking, finish = h.poster.post, h.store.set_speaking, h.store.finish_turn

    def posting(connection_id: str, data: bytes) -> bool:
        kind = json.loads(data)["type"]
        events.append(("post", kind, h.store.get(cid).state if kind in ("agent_text", "audio") else None))
        return post(connection_id, data)

    def speaking(conversation_id: str, turn_id: str) -> bool:
        done = set_speaking(conversation_id, turn_id)
        events.append(("set_speaking", done, h.store.get(cid).state))
        return done

    def finishing(conversation_id: str, turn_id: str, spoken: str | None = None) -> Any:
        events.append(("finish", None, h.store.get(cid).state))
        return finish(conversation_id, turn_id, spoken)

    h.poster.post = posting  # type: ignore[method-assign]
    h.store.set_speaking = speaking  # type: ignore[method-assign]
    h.store.finish_turn = finishing  # type: ignore[method-assign]
    h.send(conn, {"action": "text", "text": "hi"})
    first_audio = next(i for i, e in enumerate(events) if e[:2] == ("post", "audio"))
    assert events[first_audio][2] == "thinking"  # before the first audio: thinking
    flips = [e for e in events if e[0] == "set_speaking"]
    assert flips == [("set_speaking", True, "speaking")]
    assert events.index(flips[0]) > first_audio
    assert events.index(flips[0]) < next(i for i, e in enumerate(events) if e[0] == "finish")
    assert next(e for e in events if e[0] == "finish")[2] == "speaking"
    assert h.store.get(cid).state == "listening"
    # A late flip (the turn already finished) changes nothing.
    assert h.store.set_speaking(cid, h.store.get(cid).turn_id) is False
    assert h.store.get(cid).state == "listening"


def test_short_chunks_are_refused_unless_they_end_the_utterance(aws, database, settings) -> None:
    heard: list[bytes] = []
    stt = FakeSTT(text=lambda pcm: heard.append(pcm) or "what time is it")
    h = Harness(database, settings, fake_engines(stt=stt), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    h.send(conn, {"action": "audio", "seq": 0, "data": base64.b64encode(tone(20)).decode()})
    refused = frames_of(conn)[-1]
    assert refused["code"] == "audio_too_small" and refused["details"] == {"bytes": 640, "min_bytes": 2560}
    assert h.store.get(cid).audio_ms == 0
    seq = h.audio(conn, tone(400), 1)
    h.send(
        conn,
        {"action": "audio", "seq": seq, "data": base64.b64encode(tone(40)).decode(), "end_of_utterance": True},
    )
    assert heard == [tone(400) + tone(40)]  # the short last chunk ended the utterance and is part of it
    assert frames_of(conn)[-1]["type"] == "turn_end" and h.turns(cid)[-1].user_text == "what time is it"


# --- barge-in by voice, first message generated by the model, REST interruption ---------------------------------
def wait_until_speaking(h: Harness, conversation_id: str) -> None:
    """The thinking -> speaking write goes off the turn's critical path: wait for it (the backoff runs from it)."""
    for _ in range(500):
        if h.store.get(conversation_id).state == "speaking":
            return
        threading.Event().wait(0.01)
    raise AssertionError("the turn never started speaking")


def test_caller_voice_barges_in_while_the_agent_speaks(aws, database, settings) -> None:
    holder: dict[str, Any] = {}

    def on_chunk(n: int) -> None:
        if n == 3:  # the caller starts talking over the agent (0.6 s of voice; the threshold is 0.2 s)
            wait_until_speaking(holder["h"], holder["cid"])
            holder["h"].clock.now += 1.0  # past the backoff after the agent started speaking
            for seq in range(3):
                t = threading.Thread(
                    target=holder["h"].send,
                    args=(
                        holder["conn"],
                        {"action": "audio", "seq": seq, "data": base64.b64encode(tone(200)).decode()},
                    ),
                )
                t.start()
                t.join()

    tts = FakeTTS(chunk_ms=250, on_chunk=on_chunk)
    llm = FakeLLM(reply="First sentence here. Second sentence is long and will be cut. Third one never heard.")
    h = Harness(database, settings, fake_engines(llm=llm, tts=tts), first_message_mode="assistant_waits_for_user")
    holder["h"] = h
    cid, token = h.start()
    holder["cid"] = cid
    conn, _ = h.connect(cid, token)
    holder["conn"] = conn
    h.send(conn, {"action": "text", "text": "tell me"})
    kinds = types(frames_of(conn))
    assert "interrupted" in kinds and "audio" not in kinds[kinds.index("interrupted") :]
    assert frames_of(conn)[-1]["status"] == "interrupted"
    turn = h.turns(cid)[-1]
    assert turn.interrupted and "never heard" not in turn.agent_text
    assert h.store.get(cid).speech_ms >= 200  # the caller's speech is kept for their own utterance


@pytest.mark.parametrize(
    ("interruption", "voice_ms", "after_s", "interrupts"),
    [
        ({}, 600, 0.5, False),  # within the default 1 s backoff after the agent's first audio
        ({}, 600, 1.0, True),
        ({"backoff_seconds": 0, "min_words": 2}, 600, 0.0, False),  # two words are ~0.8 s of voiced speech
        ({"backoff_seconds": 0, "min_words": 2}, 2000, 0.0, True),
    ],
)
def test_voice_barge_in_waits_for_the_backoff_and_min_words(
    aws, database, settings, interruption, voice_ms, after_s, interrupts
) -> None:
    holder: dict[str, Any] = {}

    def on_chunk(n: int) -> None:
        if n == 3:
            h = holder["h"]
            wait_until_speaking(h, holder["cid"])
            h.clock.now += after_s
            for seq in range(voice_ms // 200):
                data = base64.b64encode(tone(200)).decode()
                t = threading.Thread(
                    target=h.send, args=(holder["conn"], {"action": "audio", "seq": seq, "data": data})
                )
                t.start()
                t.join()

    llm = FakeLLM(reply=LONG_REPLY)
    h = Harness(
        database,
        settings,
        fake_engines(llm=llm, tts=FakeTTS(chunk_ms=250, on_chunk=on_chunk)),
        first_message_mode="assistant_waits_for_user",
        interruption=interruption,
    )
    holder["h"] = h
    cid, token = h.start()
    holder["cid"] = cid
    conn, _ = h.connect(cid, token)
    holder["conn"] = conn
    h.send(conn, {"action": "text", "text": "tell me"})
    end = frames_of(conn)[-1]
    assert end["type"] == "turn_end" and end["status"] == ("interrupted" if interrupts else "completed")
    assert h.turns(cid)[-1].interrupted is interrupts


def test_assistant_generates_the_first_message(aws, database, settings) -> None:
    llm = FakeLLM(reply="Good morning, you have reached the clinic. How can I help?")
    h = Harness(database, settings, fake_engines(llm=llm), first_message_mode="assistant_generates_first")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    h.send(conn, {"action": "start"})
    frames = frames_of(conn)
    assert types(frames)[0] == "ready" and "transcript" not in types(frames) and "audio" in types(frames)
    assert len(llm.requests) == 1
    messages = llm.requests[0].messages
    assert [m["role"] for m in messages] == ["system"]  # no caller words: the model opens the call
    turn = h.turns(cid)[0]
    assert turn.input_mode == "none" and turn.user_text is None
    assert turn.agent_text == "Good morning, you have reached the clinic. How can I help?"
    h.send(conn, {"action": "start"})  # a second start (reconnect) does not speak again
    assert len(llm.requests) == 1 and frames_of(conn)[-1]["resumed"] is True


def test_rest_interruption_cancels_the_running_turn_of_its_own_account_only(aws, database, settings) -> None:
    h = Harness(database, settings, fake_engines(), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    h.connect(cid, token)
    assert h.store.begin_turn(cid, "turn_rest") is not None
    live = LiveSessions(h.settings, database, h.store, poster_factory=lambda endpoint: h.poster, clock=h.clock)
    with database.session() as s:
        other, _ = AccountService(s).signup(name="Other", email=f"{uuid.uuid4().hex[:8]}@ex.com")
    with pytest.raises(NotFoundError):
        live.interrupt(other.id, cid, 100)
    assert h.store.turn_status(cid, "turn_rest") == (False, None)
    assert live.interrupt(h.account_id, cid, 700) == "turn_rest"
    assert h.store.turn_status(cid, "turn_rest") == (True, 700)


# --- the sweeper ------------------------------------------------------------------------------------------------
def test_sweeper_max_duration_never_connected_and_stale(aws, database, settings) -> None:
    from datetime import timedelta

    from airies.core.models import utcnow

    h = Harness(database, settings, fake_engines(), first_message_mode="assistant_waits_for_user")
    long_call, token = h.start()
    conn, _ = h.connect(long_call, token)
    h.clock.now += 30
    h.send(conn, {"action": "text", "text": "still here"})  # active: the silence timer is not due
    never, _ = h.start()
    fresh, _ = h.start()  # created just now: its token can still connect
    stale, stale_token = h.start()
    h.connect(stale, stale_token)
    set_row(h, never, started_at=utcnow() - timedelta(seconds=h.settings.ws_token_ttl_seconds + 61))
    set_row(h, stale, started_at=utcnow() - timedelta(seconds=h.settings.ws_state_ttl_seconds + 1))
    h.store.end(stale, "lost")  # its live state is gone (expired): only the row is left
    h.clock.now += 9  # 39 s into the call, 9 s after its last turn: no timer is due for it yet
    assert h.service.sweep() == {"never_connected": 1, "stale": 1}
    h.clock.now += 9
    h.send(conn, {"action": "text", "text": "and now?"})  # the silence timer (10 s) never fires
    h.clock.now += 13  # 61 s > max_duration_seconds (60)
    assert h.service.sweep() == {"max_duration": 1}
    assert frames_of(conn)[-1]["reason"] == "max_duration"
    assert h.conversation(long_call).end_reason == "max_duration"
    assert h.conversation(never).end_reason == "never_connected" and h.conversation(never).duration_seconds == 0
    assert h.conversation(stale).end_reason == "stale"
    assert h.conversation(fresh).status == "created"


# --- a text frame right after "start" ------------------------------------------------------------------------------
def test_a_text_frame_before_start_gets_the_first_message_first(aws, database, settings) -> None:
    llm = FakeLLM(reply="We open at nine.")
    h = Harness(database, settings, fake_engines(llm=llm))  # the agent speaks first
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    h.send(conn, {"action": "text", "text": "When do you open?"})  # handled before the "start" sent just before it
    h.send(conn, {"action": "start"})
    frames = frames_of(conn)
    said = [f["delta"].strip() for f in frames if f["type"] == "agent_text"]
    assert said == ["Hello, thanks for calling.", "We open at nine."]
    assert [f["resumed"] for f in frames if f["type"] == "ready"] == [False]  # the caller's first "start"
    turns = h.turns(cid)
    assert [(t.input_mode, t.agent_text, t.status) for t in turns] == [
        ("none", "Hello, thanks for calling.", "completed"),
        ("text", "We open at nine.", "completed"),
    ]
    assert llm.requests[-1].messages[1] == {"role": "assistant", "content": "Hello, thanks for calling."}
    h.send(conn, {"action": "start"})  # a later start resumes and says nothing
    assert frames_of(conn)[-1]["type"] == "ready" and frames_of(conn)[-1]["resumed"] is True
    assert len(h.turns(cid)) == 2


def test_a_text_frame_while_the_first_message_is_spoken_waits_for_it(aws, database, settings) -> None:
    holder: dict[str, Any] = {}

    def on_chunk(n: int) -> None:
        if n == 1:  # the first message is being synthesised: the caller's text frame arrives (another invocation)
            holder["text"] = threading.Thread(
                target=holder["h"].send, args=(holder["conn"], {"action": "text", "text": "When do you open?"})
            )
            holder["text"].start()

    tts = FakeTTS(chunk_ms=250, on_chunk=on_chunk)
    h = Harness(database, settings, fake_engines(llm=FakeLLM(reply="We open at nine."), tts=tts))
    holder["h"] = h
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    holder["conn"] = conn
    h.send(conn, {"action": "start"})
    holder["text"].join()
    kinds = types(frames_of(conn))
    assert "interrupted" not in kinds
    turns = h.turns(cid)
    assert [(t.input_mode, t.agent_text, t.status) for t in turns] == [
        ("none", "Hello, thanks for calling.", "completed"),
        ("text", "We open at nine.", "completed"),
    ]
    first_end = kinds.index("turn_end")
    assert kinds.index("transcript") > first_end  # the typed turn started after the first message ended


# --- barge-in after the turn's last frame -------------------------------------------------------------------------
LONG_REPLY = "First sentence here. Second sentence is long and will be cut. Third one never heard."


def long_reply_call(database: Any, settings: Any, llm: FakeLLM | None = None) -> tuple[Harness, str, Any]:
    """A connected call whose agent answers ``LONG_REPLY`` (60 ms of audio a character, in 250 ms TTS chunks)."""
    h = Harness(
        database,
        settings,
        fake_engines(llm=llm or FakeLLM(reply=LONG_REPLY), tts=FakeTTS(chunk_ms=250)),
        first_message_mode="assistant_waits_for_user",
    )
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    return h, cid, conn


def before_finish(h: Harness, step: Callable[[str, str], None]) -> None:
    """Run ``step(conversation_id, turn_id)`` after the turn posted its last frame, before it is back to listening."""
    finish = h.store.finish_turn

    def stepped(conversation_id: str, turn_id: str, spoken: str | None = None) -> Any:
        step(conversation_id, turn_id)
        return finish(conversation_id, turn_id, spoken)

    h.store.finish_turn = stepped  # type: ignore[method-assign]


def test_an_interrupt_after_turn_end_keeps_only_what_was_played(aws, database, settings) -> None:
    llm = FakeLLM(reply=LONG_REPLY)
    h, cid, conn = long_reply_call(database, settings, llm)
    h.send(conn, {"action": "text", "text": "tell me"})
    end = frames_of(conn)[-1]
    assert end["type"] == "turn_end" and end["status"] == "completed" and end["agent_text"] == LONG_REPLY
    # 60 ms of audio per character: the first sentence is 1,200 ms; 1,500 ms also plays an eighth of the second.
    h.send(conn, {"action": "interrupt", "turn_id": end["turn_id"], "played_ms": 1500})
    cut = frames_of(conn)[-1]
    assert cut == {
        "type": "interrupted",
        "v": 1,
        "turn_id": end["turn_id"],
        "heard_text": "First sentence here. Second",
    }
    turn = h.turns(cid)[-1]
    assert (turn.agent_text, turn.interrupted, turn.status) == ("First sentence here. Second", True, "interrupted")
    assert turn.agent_text_generated == LONG_REPLY and h.conversation(cid).interruption_count == 1
    h.send(conn, {"action": "interrupt", "turn_id": end["turn_id"], "played_ms": 100})  # once cut, it stays so
    assert types(frames_of(conn)).count("interrupted") == 1
    assert h.turns(cid)[-1].agent_text == "First sentence here. Second"
    assert h.conversation(cid).interruption_count == 1

    h.send(conn, {"action": "text", "text": "go on"})  # the next turn: the model sees only what was heard
    assert llm.requests[-1].messages[-2:] == [
        {"role": "assistant", "content": "First sentence here. Second"},
        {"role": "user", "content": "go on"},
    ]
    h.send(conn, {"action": "interrupt", "turn_id": end["turn_id"], "played_ms": 500})  # an older turn: refused
    refused = frames_of(conn)[-1]
    assert refused["type"] == "error" and refused["code"] == "turn_not_current"
    assert refused["details"]["current_turn_id"] == h.turns(cid)[-1].id
    assert h.turns(cid)[0].agent_text == "First sentence here. Second"  # unchanged


@pytest.mark.parametrize("client_first", [False, True], ids=["after_stored", "before_stored"])
def test_a_turn_cut_by_voice_is_cut_again_to_what_the_client_then_says_it_played(
    aws, database, settings, client_first: bool
) -> None:
    """The server's VAD cuts the reply while it is posted (it knows nothing of playback: everything posted counts as
    heard); the client's own interrupt, with ``played_ms``, comes after and cuts the stored text to what was played,
    whether it lands before or after the turn is stored."""
    h, cid, conn = long_reply_call(database, settings)
    check = h.store.turn_status

    def voice_in_the_second_sentence(conversation_id: str, turn_id: str) -> tuple[bool, int | None]:
        # The caller's voice, once the first frame of the second sentence is out (the server's VAD: no played_ms)
        kinds = types(frames_of(conn))
        texts = [i for i, kind in enumerate(kinds) if kind == "agent_text"]
        if len(texts) >= 2 and "audio" in kinds[texts[1] :]:
            h.store.cancel_turn(conversation_id, None)
        return check(conversation_id, turn_id)

    h.store.turn_status = voice_in_the_second_sentence  # type: ignore[method-assign]
    if client_first:  # the client's interrupt lands before the turn is stored and back to listening

        def client_interrupts(conversation_id: str, turn_id: str) -> None:
            assert h.store.cancel_finished_turn(conversation_id, turn_id, 1500) is not None

        before_finish(h, client_interrupts)
    h.send(conn, {"action": "text", "text": "tell me"})
    end = frames_of(conn)[-1] if not client_first else next(f for f in frames_of(conn) if f["type"] == "turn_end")
    posted = end["agent_text"]  # the VAD's cut: everything posted counts as heard
    assert end["status"] == "interrupted" and posted.startswith("First sentence here. Second sentence")
    if not client_first:
        h.send(conn, {"action": "interrupt", "turn_id": end["turn_id"], "played_ms": 1500})
    cut = frames_of(conn)[-1]
    # 1,500 ms played: the first sentence (1,200 ms) and the share of the second's posted audio played
    heard = cut["heard_text"]
    assert cut["type"] == "interrupted" and heard.startswith("First sentence here. Second")
    assert len(heard) < len(posted)
    turn = h.turns(cid)[-1]
    assert (turn.agent_text, turn.status) == (heard, "interrupted")
    assert h.conversation(cid).interruption_count == 1
    h.send(conn, {"action": "interrupt", "turn_id": end["turn_id"], "played_ms": 100})  # the first played_ms
    assert h.turns(cid)[-1].agent_text == heard


def test_an_interrupt_after_the_last_check_but_before_the_turn_ends_cuts_it(aws, database, settings) -> None:
    h, cid, conn = long_reply_call(database, settings)

    def interrupts(conversation_id: str, turn_id: str) -> None:
        assert h.store.cancel_turn(conversation_id, 1300, turn_id=turn_id) == turn_id

    before_finish(h, interrupts)
    h.send(conn, {"action": "text", "text": "tell me"})
    frames = frames_of(conn)
    assert types(frames)[-2:] == ["turn_end", "interrupted"] and frames[-1]["heard_text"] == "First sentence here."
    turn = h.turns(cid)[-1]
    assert turn.agent_text == "First sentence here." and turn.interrupted and h.store.get(cid).state == "listening"


def test_a_hang_up_while_a_turn_runs_ends_the_call_once_that_turn_is_stored(aws, database, settings) -> None:
    """The caller hangs up while the agent speaks: the turn in flight stops at its next check and is stored and
    billed before the call ends, so whoever reads the conversation after ``ended`` finds it, and the ``ended``
    totals count it."""
    holder: dict[str, Any] = {}
    under_way = threading.Event()

    def on_chunk(n: int) -> None:
        if n == 3:  # the hang-up, a concurrent $default invocation
            holder["hang_up"] = threading.Thread(target=h.send, args=(conn, {"action": "end"}))
            holder["hang_up"].start()
            assert under_way.wait(timeout=60)

    h = Harness(
        database,
        settings,
        fake_engines(llm=FakeLLM(reply=LONG_REPLY), tts=FakeTTS(chunk_ms=250, on_chunk=on_chunk)),
        first_message_mode="assistant_waits_for_user",
    )
    post, get = h.poster.post, h.store.get

    def watched_post(connection_id: str, data: bytes) -> bool:
        if b'"type":"ended"' in data:
            under_way.set()  # the call ended without waiting for the turn
        return post(connection_id, data)

    def watched_get(conversation_id: str, **kwargs: Any) -> Any:
        session = get(conversation_id, **kwargs)
        if threading.current_thread() is holder.get("hang_up") and session is not None and session.state == "ended":
            under_way.set()  # the hang-up waits for the turn in flight
        return session

    h.poster.post = watched_post  # type: ignore[method-assign]
    h.store.get = watched_get  # type: ignore[method-assign]
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    h.send(conn, {"action": "text", "text": "when are you open"})
    holder["hang_up"].join()
    frames = frames_of(conn)
    assert types(frames)[-2:] == ["turn_end", "ended"] and frames[-2]["status"] == "interrupted"
    ended = frames[-1]
    assert ended["reason"] == "caller_ended" and ended["turns"] == 1 and float(ended["cost_usd"]) > 0
    turns = h.turns(cid)
    assert [(t.user_text, t.interrupted) for t in turns] == [("when are you open", True)]
    conversation = h.conversation(cid)
    assert (conversation.status, conversation.turn_count) == ("ended", 1)
    assert h.store.get(cid).running == set()


# --- engines kept per container ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("ttl_seconds", "builds"), [(60, 1), (0, 5)])  # 5 turns: 2 first messages, 3 replies
def test_a_containers_turns_share_their_engines_until_they_expire(aws, database, settings, ttl_seconds, builds) -> None:
    h = Harness(database, settings.model_copy(update={"ws_engines_ttl_seconds": ttl_seconds}), fake_engines())
    built: list[str] = []

    def factory(session: Any, account_id: str, config: Any) -> Any:
        built.append(account_id)
        return fake_engines()

    h.service.engines = factory
    for _ in range(2):  # two conversations of the same agent version
        cid, token = h.start()
        conn, _ = h.connect(cid, token)
        h.send(conn, {"action": "start"})
        h.send(conn, {"action": "text", "text": "When do you open?"})
        assert frames_of(conn)[-1]["type"] == "turn_end"
    h.send(conn, {"action": "text", "text": "And on Sundays?"})
    assert frames_of(conn)[-1]["type"] == "turn_end"
    assert built == [h.account_id] * builds


def test_control_frames_are_counted_per_second_across_containers(aws, database, settings) -> None:
    h = Harness(database, settings, fake_engines(), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)

    def pings(n: int) -> list[str | None]:
        before = len(frames_of(conn))
        for _ in range(n):
            h.send(conn, {"action": "ping"})
        return [f.get("code") for f in frames_of(conn)[before:]]

    assert pings(6) == [None] * 6
    other = SessionStore(h.store.client, h.store.table, clock=h.clock)  # another container: no count seen yet
    assert other.count_control_frame(cid, 10) is not None  # the 7th of this second
    assert pings(4) == [None] * 3 + ["rate_limited"]
    with pytest.raises(ControlFlood):
        other.count_control_frame(cid, 10)
    h.clock.now += 1  # a new second: the count starts again, in either container
    assert pings(10) == [None] * 10 and pings(1) == ["rate_limited"]
    h.clock.now += 1
    assert other.count_control_frame(cid, 10).conversation_id == cid
    assert other.count_control_frame("conv_unknown", 10) is None


def test_a_typed_turn_asks_the_model_while_it_is_claimed_and_drops_it_if_the_claim_is_lost(
    aws, database, settings
) -> None:
    llm = FakeLLM(first_token_s=0.5)
    tts = FakeTTS()
    h = Harness(database, settings, fake_engines(llm=llm, tts=tts), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    h.send(conn, {"action": "text", "text": "first"})  # claimed: stored, numbered 1
    assert frames_of(conn)[-1]["type"] == "turn_end" and frames_of(conn)[-1]["seq"] == 1
    spoken = len(tts.sentences)
    begin_turn = h.store.begin_turn
    asked: list[int] = []

    def ended_meanwhile(conversation_id: str, turn_id: str, **kwargs: Any) -> Any:
        time.sleep(0.2)  # the claim is still in flight when the model is asked
        asked.append(len(llm.requests))
        h.store.end(conversation_id, "caller_ended")  # another invocation ended the call first
        return begin_turn(conversation_id, turn_id, **kwargs)

    h.store.begin_turn = ended_meanwhile  # type: ignore[method-assign]
    before = len(frames_of(conn))
    h.send(conn, {"action": "text", "text": "second"})
    assert asked == [2]  # the request had left before the claim answered
    # A lost claim posts no transcript, audio or turn_end: the frame's answer is why it was refused.
    assert [(f["type"], f.get("code")) for f in frames_of(conn)[before:]] == [("error", "conversation_ended")]
    assert [t.user_text for t in h.turns(cid)] == ["first"] and len(tts.sentences) == spoken  # nothing stored, said


def test_a_typed_turn_counts_its_frame_in_its_claim(aws, database, settings) -> None:
    h = Harness(database, settings, fake_engines(), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    h.send(conn, {"action": "ping"})  # 1 control frame this second; the container now knows the live state
    for k in range(9):  # 2..10: each counted by its turn's claim
        h.send(conn, {"action": "text", "text": f"question {k}"})
        assert frames_of(conn)[-1]["type"] == "turn_end"
    h.send(conn, {"action": "text", "text": "one too many"})
    assert frames_of(conn)[-1]["code"] == "rate_limited"
    assert len(h.turns(cid)) == 9 and h.store.get(cid).state == "listening"

    def count() -> int:
        item = h.store.client.get_item(TableName=h.store.table, Key=h.store._key(cid))["Item"]
        return int(item["ctl_n"]["N"])

    h.clock.now += 1
    other = SessionStore(h.store.client, h.store.table, clock=h.clock)  # another container counts first
    assert other.count_control_frame(cid, 10) is not None and count() == 1
    h.send(conn, {"action": "text", "text": "a new second"})  # this container guessed a fresh count: it retries
    assert frames_of(conn)[-1]["type"] == "turn_end" and count() == 2 and len(h.turns(cid)) == 10


def test_a_flood_of_typed_turns_asks_the_model_no_more_often_than_the_flood_limit(aws, database, settings) -> None:
    """A typed turn asks the model before its claim counts the frame; past the flood limit of frames this container
    handled for the call in the second, the frame is counted (and refused) before anything is asked."""
    llm = FakeLLM()
    h = Harness(database, settings, fake_engines(llm=llm), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    h.send(conn, {"action": "ping"})  # the container now knows the live state: typed turns start from it
    for k in range(14):
        h.send(conn, {"action": "text", "text": f"question {k}"})
    codes = [f.get("code") for f in frames_of(conn) if f["type"] == "error"]
    assert codes == ["rate_limited"] * 5 and len(h.turns(cid)) == 9  # 10 frames a second: the ping and 9 turns
    assert len(llm.requests) == 9  # a refused frame asked nothing
    h.clock.now += 1
    h.send(conn, {"action": "text", "text": "a new second"})
    assert frames_of(conn)[-1]["type"] == "turn_end" and len(llm.requests) == 10


def test_the_sweeper_ends_a_live_call_whose_config_item_is_gone(aws, database, settings) -> None:
    """The session and its config item share a TTL; should the config be gone alone, the call cannot be timed:
    the sweeper ends it (``stale``) instead of failing on it at every run."""
    h = Harness(database, settings, fake_engines(), first_message_mode="assistant_waits_for_user")
    cid, token = h.start()
    assert h.connect(cid, token)[1]["statusCode"] == 200
    h.store.client.delete_item(TableName=h.store.table, Key={"pk": {"S": f"conv#{cid}"}, "sk": {"S": "config"}})
    h.clock.now += 11  # due: silence_timeout_seconds (10)
    assert h.service.sweep() == {"stale": 1}
    assert h.store.get(cid).state == "ended" and h.conversation(cid).end_reason == "stale"
    assert h.service.sweep() == {}  # ended: no longer due
