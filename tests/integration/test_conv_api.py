"""Conversations REST API on both databases, with interface-level engines (the billing service is the real one)."""

from __future__ import annotations

import base64
import io
import wave

import pytest

from tests.conftest import signup
from tests.doubles.conv_engines import FakeLLM, FakeSTT, FakeTTS, fake_engines, tone

AGENT = {
    "name": "Support",
    "system_prompt": "You help customers.",
    "first_message": "Hi there!",
    "voice": {"provider": "elevenlabs", "voice_id": "21m00Tcm4TlvDq8ikWAM"},
    "transcriber": {"provider": "deepgram", "model": "nova-3"},
}


@pytest.fixture(autouse=True)
def live_sessions(app, settings):  # type: ignore[no-untyped-def]
    """The WebSocket side the REST end/delete routes reach (moto DynamoDB), instead of real AWS."""
    import uuid

    import boto3
    from moto import mock_aws

    from airies.conversations.live import WebSocketService
    from airies.conversations.sessions import SessionStore

    with mock_aws():
        store = SessionStore(boto3.client("dynamodb", region_name="us-east-1"), f"ws-{uuid.uuid4().hex[:6]}")
        store.ensure_table()
        app.state.live_sessions = WebSocketService(settings, app.state.database, store)
        yield store


@pytest.fixture
def engines(app):  # type: ignore[no-untyped-def]
    llm = FakeLLM(reply="We ship worldwide. Anything else?")
    stt = FakeSTT(text="do you ship abroad")
    tts = FakeTTS()
    app.state.conversation_engines = lambda config: fake_engines(stt=stt, llm=llm, tts=tts)
    return llm, stt, tts


def deployed_agent(client, auth, **overrides) -> str:  # type: ignore[no-untyped-def]
    response = client.post("/api/v1/agents", json={**AGENT, **overrides}, headers=auth)
    assert response.status_code == 201, response.text
    agent_id = response.json()["id"]
    assert client.post(f"/api/v1/agents/{agent_id}/deploy", headers=auth).status_code == 201
    return agent_id


def start(client, auth, agent_id: str) -> dict:  # type: ignore[no-untyped-def]
    response = client.post(
        "/api/v1/conversations",
        json={"agent_id": agent_id, "caller": {"name": "Ada", "phone": "+44 20 7946 0000"}, "metadata": {"k": "v"}},
        headers=auth,
    )
    assert response.status_code == 201, response.text
    return response.json()


def test_start_returns_ws_url_and_token(client, auth, engines) -> None:  # type: ignore[no-untyped-def]
    body = start(client, auth, deployed_agent(client, auth))
    assert body["status"] == "created" and body["protocol_version"] == 1
    assert body["ws_url"].startswith("ws://") and f"conversation_id={body['id']}" in body["ws_url"]
    assert body["token"] in body["ws_url"] and body["caller"]["name"] == "Ada"


def test_start_needs_a_published_version_and_an_own_agent(client, auth, engines) -> None:  # type: ignore[no-untyped-def]
    draft = client.post("/api/v1/agents", json=AGENT, headers=auth).json()["id"]
    response = client.post("/api/v1/conversations", json={"agent_id": draft}, headers=auth)
    assert response.status_code == 400 and response.json()["error"]["code"] == "agent_not_deployed"
    other = signup(client)
    foreign = deployed_agent(client, other)
    assert client.post("/api/v1/conversations", json={"agent_id": foreign}, headers=auth).status_code == 404
    bad = client.post("/api/v1/conversations", json={"agent_id": draft, "surprise": 1}, headers=auth)
    assert bad.status_code == 422


def test_text_turn_history_transcript_cost_and_end(client, auth, engines) -> None:  # type: ignore[no-untyped-def]
    llm, _, _ = engines
    conversation = start(client, auth, deployed_agent(client, auth))
    cid = conversation["id"]
    reply = client.post(f"/api/v1/conversations/{cid}/message", json={"text": "Do you ship abroad?"}, headers=auth)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert data["reply"] == "We ship worldwide. Anything else?" and data["audio"] is None
    assert data["turn"]["usage"]["completion_tokens"] > 0
    with_audio = client.post(
        f"/api/v1/conversations/{cid}/message", json={"text": "Really?", "with_audio": True}, headers=auth
    ).json()
    pcm = base64.b64decode(with_audio["audio"]["data"])
    assert len(pcm) > 16000 and with_audio["turn"]["usage"]["tts_characters"] == len("We ship worldwide.") + len(
        "Anything else?"
    )
    assert llm.requests[-1].messages[-2] == {"role": "assistant", "content": "We ship worldwide. Anything else?"}

    detail = client.get(f"/api/v1/conversations/{cid}", headers=auth).json()
    assert detail["status"] == "active" and [t["seq"] for t in detail["turns"]] == [1, 2]
    text = client.get(f"/api/v1/conversations/{cid}/transcript?format=text", headers=auth)
    assert text.headers["content-type"].startswith("text/plain")
    assert "Caller: Do you ship abroad?" in text.text and "Agent: We ship worldwide." in text.text
    as_json = client.get(f"/api/v1/conversations/{cid}/transcript", headers=auth).json()
    assert [m["role"] for m in as_json["messages"]] == ["user", "agent", "user", "agent"]
    cost = client.get(f"/api/v1/conversations/{cid}/cost", headers=auth).json()
    assert float(cost["total"]) > 0 and float(cost["components"]["tts"]) > 0
    assert cost["total"] == f"{sum(float(v) for v in cost['components'].values()):.9f}"

    updated = client.put(f"/api/v1/conversations/{cid}", json={"metadata": {"x": 1}, "status": "ended"}, headers=auth)
    assert updated.status_code == 200 and updated.json()["status"] == "ended"
    assert updated.json()["metadata"] == {"k": "v", "x": 1} and updated.json()["end_reason"] == "api_request"
    late = client.post(f"/api/v1/conversations/{cid}/message", json={"text": "hello?"}, headers=auth)
    assert late.status_code == 409 and late.json()["error"]["code"] == "conversation_ended"


def test_audio_upload_wav_and_raw(client, auth, engines) -> None:  # type: ignore[no-untyped-def]
    _, stt, _ = engines
    cid = start(client, auth, deployed_agent(client, auth))["id"]
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(tone(500, rate=8000))
    response = client.post(
        f"/api/v1/conversations/{cid}/audio", content=buffer.getvalue(), headers={**auth, "content-type": "audio/wav"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["transcript"] == "do you ship abroad" and body["audio"]["sample_rate"] == 16000
    assert abs(stt.calls[-1] - 16000) <= 64  # resampled to 16 kHz: 0.5 s = 16,000 bytes
    raw = client.post(
        f"/api/v1/conversations/{cid}/audio", content=tone(300), headers={**auth, "content-type": "audio/l16"}
    )
    assert raw.status_code == 200
    odd = client.post(
        f"/api/v1/conversations/{cid}/audio", content=b"\x00" * 3, headers={**auth, "content-type": "audio/l16"}
    )
    assert odd.status_code == 400
    assert (
        client.post(
            f"/api/v1/conversations/{cid}/audio", content=b"x", headers={**auth, "content-type": "text/plain"}
        ).status_code
        == 415
    )


def test_list_filters_tenancy_delete_and_analytics(client, auth, engines) -> None:  # type: ignore[no-untyped-def]
    agent_id = deployed_agent(client, auth)
    ids = []
    for i in range(3):  # the Free tier allows one live conversation at a time (billing's limit)
        ids.append(start(client, auth, agent_id)["id"])
        if i == 0:
            client.post(f"/api/v1/conversations/{ids[0]}/message", json={"text": "hi"}, headers=auth)
        if i < 2:
            client.put(f"/api/v1/conversations/{ids[i]}", json={"status": "ended"}, headers=auth)
    refused = client.post("/api/v1/conversations", json={"agent_id": agent_id}, headers=auth)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "concurrent_conversation_limit"
    page = client.get("/api/v1/conversations?limit=2", headers=auth).json()
    assert [c["id"] for c in page["data"]] == ids[::-1][:2] and page["has_more"]
    rest = client.get(f"/api/v1/conversations?limit=2&cursor={page['next_cursor']}", headers=auth).json()
    assert [c["id"] for c in rest["data"]] == [ids[0]]
    ended = client.get("/api/v1/conversations?status=ended", headers=auth).json()["data"]
    assert [c["id"] for c in ended] == ids[1::-1]
    other = signup(client)
    assert client.get(f"/api/v1/conversations/{ids[1]}", headers=other).status_code == 404
    assert client.get("/api/v1/conversations", headers=other).json()["data"] == []
    analytics = client.get("/api/v1/conversations/analytics?period=24h", headers=auth).json()
    assert analytics["conversations"]["total"] == 3 and analytics["conversations"]["ended"] == 2
    assert analytics["turns"]["total"] == 1 and analytics["latency_ms"]["total_ms"]["count"] == 1
    agent_stats = client.get(f"/api/v1/agents/{agent_id}/analytics?period=7d", headers=auth)
    assert agent_stats.status_code == 200 and agent_stats.json()["conversations"]["total"] == 3
    assert client.get(f"/api/v1/agents/{agent_id}/analytics", headers=other).status_code == 404
    assert client.delete(f"/api/v1/conversations/{ids[1]}", headers=auth).status_code == 204
    assert client.get(f"/api/v1/conversations/{ids[1]}", headers=auth).status_code == 404


def wav(pcm: bytes, rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buffer.getvalue()


def minutes_events(database, conversation_id: str) -> list:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from airies.billing.models import UsageEventRecord

    with database.session() as s:
        return list(
            s.scalars(
                select(UsageEventRecord).where(
                    UsageEventRecord.conversation_id == conversation_id,
                    UsageEventRecord.component == "platform_minutes",
                )
            )
        )


def test_minutes_bill_nothing_before_a_turn_and_exactly_to_the_last_turn(client, auth, engines, database) -> None:  # type: ignore[no-untyped-def]
    from datetime import datetime
    from decimal import Decimal

    agent_id = deployed_agent(client, auth)
    put = start(client, auth, agent_id)["id"]  # never connected, ended over PUT
    ended = client.put(f"/api/v1/conversations/{put}", json={"status": "ended"}, headers=auth).json()
    assert ended["status"] == "ended" and ended["duration_seconds"] == 0.0
    deleted = start(client, auth, agent_id)["id"]  # never connected, deleted
    assert client.delete(f"/api/v1/conversations/{deleted}", headers=auth).status_code == 204
    assert minutes_events(database, put) == [] and minutes_events(database, deleted) == []

    cid = client.post("/api/v1/conversations", json={"agent_id": agent_id, "channel": "http"}, headers=auth).json()[
        "id"
    ]
    turn = client.post(f"/api/v1/conversations/{cid}/message", json={"text": "hi"}, headers=auth).json()["turn"]
    body = client.put(f"/api/v1/conversations/{cid}", json={"status": "ended"}, headers=auth).json()
    last_turn = datetime.fromisoformat(turn["ended_at"]) - datetime.fromisoformat(body["started_at"])
    assert body["duration_seconds"] == round(last_turn.total_seconds(), 3) > 0
    [event] = minutes_events(database, cid)
    minutes = (Decimal(str(body["duration_seconds"])) / 60).quantize(Decimal("0.000001"))
    assert event.quantity_micro == int(minutes * 1_000_000) and event.idempotency_key == f"{cid}:platform_minutes:final"
    client.put(f"/api/v1/conversations/{cid}", json={"status": "ended"}, headers=auth)  # again: billed once
    assert len(minutes_events(database, cid)) == 1


def test_rest_turns_are_recorded_to_s3_when_recording_is_enabled(client, auth, engines, settings) -> None:  # type: ignore[no-untyped-def]
    import boto3
    from moto import mock_aws

    from airies.voice.audio.codecs import read_wav

    with mock_aws():
        s3 = boto3.client("s3", region_name=settings.aws_region)
        s3.create_bucket(Bucket=settings.storage_bucket)
        cid = start(client, auth, deployed_agent(client, auth, recording_enabled=True))["id"]
        spoken = client.post(
            f"/api/v1/conversations/{cid}/message", json={"text": "Ship abroad?", "with_audio": True}, headers=auth
        ).json()
        recording = spoken["turn"]["recording"]
        assert set(recording) == {"agent"}  # a text turn: only the agent side has audio
        agent = s3.get_object(Bucket=settings.storage_bucket, Key=recording["agent"]["key"])["Body"].read()
        assert read_wav(agent)[0] == base64.b64decode(spoken["audio"]["data"])

        uploaded = client.post(
            f"/api/v1/conversations/{cid}/audio", content=tone(400), headers={**auth, "content-type": "audio/l16"}
        ).json()
        recording = uploaded["turn"]["recording"]
        assert set(recording) == {"caller", "agent"}
        caller = s3.get_object(Bucket=settings.storage_bucket, Key=recording["caller"]["key"])["Body"].read()
        assert read_wav(caller) == (tone(400), 16000)
        prefix = f"{settings.conversation_recordings_prefix}/"
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=settings.storage_bucket)["Contents"]]
        assert len(keys) == 3 and all(k.startswith(prefix) and f"/{cid}/" in k for k in keys)


def test_ended_or_deleted_conversations_refuse_rest_turns(client, auth, engines) -> None:  # type: ignore[no-untyped-def]
    agent_id = deployed_agent(client, auth)
    cid = start(client, auth, agent_id)["id"]
    assert client.post(f"/api/v1/conversations/{cid}/message", json={"text": "hi"}, headers=auth).status_code == 200
    assert client.put(f"/api/v1/conversations/{cid}", json={"status": "ended"}, headers=auth).status_code == 200
    audio = client.post(
        f"/api/v1/conversations/{cid}/audio", content=tone(300), headers={**auth, "content-type": "audio/l16"}
    )
    assert audio.status_code == 409 and audio.json()["error"]["code"] == "conversation_ended"
    turns = client.get(f"/api/v1/conversations/{cid}", headers=auth).json()["turns"]
    assert len(turns) == 1

    gone = start(client, auth, agent_id)["id"]
    assert client.delete(f"/api/v1/conversations/{gone}", headers=auth).status_code == 204
    late = client.post(f"/api/v1/conversations/{gone}/message", json={"text": "hello?"}, headers=auth)
    assert late.status_code == 404 and late.json()["error"]["code"] == "not_found"


def test_wav_duration_is_checked_before_resampling(client, auth, engines, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from airies.voice.audio import codecs

    resampled: list[int] = []
    original = codecs.resample_pcm16
    monkeypatch.setattr(
        codecs, "resample_pcm16", lambda pcm, src, dst: resampled.append(len(pcm)) or original(pcm, src, dst)
    )
    _, stt, _ = engines
    cid = start(client, auth, deployed_agent(client, auth))["id"]
    headers = {**auth, "content-type": "audio/wav"}
    # 1 Hz: 20 kB of samples declare 10,000 s, which resampled to 16 kHz would be 320 MB.
    tiny = client.post(f"/api/v1/conversations/{cid}/audio", content=wav(b"\x01\x00" * 10_000, 1), headers=headers)
    assert tiny.status_code == 413 and tiny.json()["error"]["code"] == "payload_too_large"
    long = client.post(
        f"/api/v1/conversations/{cid}/audio", content=wav(tone(31_000, rate=8000), 8000), headers=headers
    )
    assert long.status_code == 413
    assert resampled == [] and stt.calls == []  # refused before resampling or transcribing
    odd = client.post(f"/api/v1/conversations/{cid}/audio", content=wav(b"\x01\x00" * 50, 100), headers=headers)
    assert odd.status_code == 400 and odd.json()["error"]["code"] == "bad_audio"  # 0.5 s at 100 Hz: unsupported
    ok = client.post(f"/api/v1/conversations/{cid}/audio", content=wav(tone(500, rate=8000), 8000), headers=headers)
    assert ok.status_code == 200 and resampled == [100, 8000]


def test_put_metadata_is_limited_after_the_merge(client, auth, engines) -> None:  # type: ignore[no-untyped-def]
    cid = start(client, auth, deployed_agent(client, auth))["id"]  # metadata {"k": "v"}
    many = {f"key{i}": i for i in range(49)}
    assert client.put(f"/api/v1/conversations/{cid}", json={"metadata": many}, headers=auth).status_code == 200
    over = client.put(f"/api/v1/conversations/{cid}", json={"metadata": {"one_more": 1}}, headers=auth)
    assert over.status_code == 422 and over.json()["error"]["code"] == "validation_failed"
    assert over.json()["error"]["details"][0]["field"] == "metadata"
    same_key = client.put(f"/api/v1/conversations/{cid}", json={"metadata": {"key0": "updated"}}, headers=auth)
    assert same_key.status_code == 200 and len(same_key.json()["metadata"]) == 50

    client.put(f"/api/v1/conversations/{cid}", json={"status": "ended"}, headers=auth)  # Free tier: one at a time
    other = start(client, auth, deployed_agent(client, auth))
    half = {"a": "x" * 9000}
    assert client.put(f"/api/v1/conversations/{other['id']}", json={"metadata": half}, headers=auth).status_code == 200
    big = client.put(f"/api/v1/conversations/{other['id']}", json={"metadata": {"b": "y" * 9000}}, headers=auth)
    assert big.status_code == 422
    stored = client.get(f"/api/v1/conversations/{other['id']}", headers=auth).json()["metadata"]
    assert set(stored) == {"k", "a"}  # the refused update changed nothing


def test_a_fresh_token_for_a_conversation_that_has_not_ended(client, auth, engines, settings) -> None:  # type: ignore[no-untyped-def]
    from airies.conversations.service import ConversationTokens, token_secret
    from airies.core.errors import UnauthorizedError

    first = start(client, auth, deployed_agent(client, auth))
    cid = first["id"]
    fresh = client.post(f"/api/v1/conversations/{cid}/token", headers=auth)
    assert fresh.status_code == 200, fresh.text
    body = fresh.json()
    assert body["id"] == cid and body["token"] != first["token"] and body["token"] in body["ws_url"]
    assert f"conversation_id={cid}" in body["ws_url"] and body["protocol_version"] == 1
    tokens = ConversationTokens(token_secret(settings))
    assert tokens.verify(body["token"], cid)["c"] == cid
    with pytest.raises(UnauthorizedError):
        tokens.verify(body["token"], "conv_other")
    other = signup(client)
    assert client.post(f"/api/v1/conversations/{cid}/token", headers=other).status_code == 404
    assert client.post(f"/api/v1/conversations/{cid}/token").status_code == 401
    assert client.put(f"/api/v1/conversations/{cid}", json={"status": "ended"}, headers=auth).status_code == 200
    ended = client.post(f"/api/v1/conversations/{cid}/token", headers=auth)
    assert ended.status_code == 409 and ended.json()["error"]["code"] == "conversation_ended"


def test_knowledge_base_passages_reach_the_llm_request(client, auth, settings) -> None:  # type: ignore[no-untyped-def]
    """A real turn (production engines: knowledge service, LLM service through the OpenAI SDK to the wire double)."""
    from tests.doubles.openai_server import OpenAIDouble, Reply
    from tests.kb_support import BUCKET, moto_bucket

    settings.kb_documents_bucket = BUCKET
    with moto_bucket(), OpenAIDouble() as oa:
        settings.openai_api_key = "sk-test"
        settings.openai_base_url = oa.base_url
        oa.default = Reply(text="Parking is in the basement, level minus two.")
        kb = client.post("/api/v1/knowledge-bases", json={"name": "Clinic facts"}, headers=auth).json()
        doc = client.post(
            f"/api/v1/knowledge-bases/{kb['id']}/documents",
            json={
                "filename": "facts.md",
                "content_type": "text/markdown",
                "text": "Parking\n\nVisitor parking is in the basement garage, level minus two, free for 3 hours."
                "\n\nHours\n\nThe clinic opens at 8 and closes at 18 on weekdays.",
            },
            headers=auth,
        )
        assert doc.status_code == 201, doc.text
        agent_id = deployed_agent(
            client, auth, knowledge_base_ids=[kb["id"]], llm={"provider": "openai", "model": "gpt-4o-mini"}
        )
        cid = start(client, auth, agent_id)["id"]
        reply = client.post(
            f"/api/v1/conversations/{cid}/message", json={"text": "Where is the visitor parking?"}, headers=auth
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["reply"] == "Parking is in the basement, level minus two."
        sent = oa.chat_requests[-1].body
        system = sent["messages"][0]["content"]
        assert "retrieval_error" not in reply.json()["turn"]["usage"], reply.json()["turn"]["usage"]
        assert "basement garage, level minus two" in system and "knowledge base passages" in system
        assert sent["messages"][-1] == {"role": "user", "content": "Where is the visitor parking?"}
        latency = reply.json()["turn"]["latency"]
        assert latency["retrieval_ms"] is not None


def test_an_http_turn_says_end_call_as_a_boolean_and_why(client, auth, engines) -> None:  # type: ignore[no-untyped-def]
    cid = start(client, auth, deployed_agent(client, auth))["id"]
    going_on = client.post(f"/api/v1/conversations/{cid}/message", json={"text": "Do you ship?"}, headers=auth)
    assert going_on.status_code == 200, going_on.text
    assert going_on.json()["end_call"] is False and going_on.json()["end_reason"] is None
    goodbye = client.post(f"/api/v1/conversations/{cid}/message", json={"text": "Thanks, goodbye"}, headers=auth)
    assert goodbye.json()["end_call"] is True and goodbye.json()["end_reason"] == "caller_end_call_phrase"
    assert client.get(f"/api/v1/conversations/{cid}", headers=auth).json()["status"] == "ended"
    schema = client.app.openapi()["components"]["schemas"]["TurnResponse"]["properties"]
    assert schema["end_call"] == {"type": "boolean", "title": "End Call"}  # never null


def test_a_dropped_call_holds_its_slot_only_for_the_resume_window(client, auth, engines, app, live_sessions) -> None:  # type: ignore[no-untyped-def]
    """Free tier: one concurrent conversation. A call whose socket closed without ``end`` counts while it may still
    resume (the resume window after the last connection dropped), then no longer, before the sweeper ends it."""
    import time

    from sqlalchemy import update

    from airies.conversations.live import WebSocketService
    from airies.conversations.models import Conversation, ConversationTurn

    clock = {"now": time.time()}
    live_sessions.clock = lambda: clock["now"]
    service = WebSocketService(app.state.settings, app.state.database, live_sessions, clock=live_sessions.clock)
    app.state.live_sessions = service
    window = app.state.settings.ws_resume_window_seconds
    agent_id = deployed_agent(client, auth)
    call = start(client, auth, agent_id)

    def connection_event(route: str, connection_id: str) -> dict:  # type: ignore[type-arg]
        kind = "CONNECT" if route == "$connect" else "DISCONNECT"
        return {
            "queryStringParameters": {"conversation_id": call["id"], "token": call["token"]},
            "requestContext": {"routeKey": route, "eventType": kind, "connectionId": connection_id},
        }

    def try_start() -> int:
        return client.post("/api/v1/conversations", json={"agent_id": agent_id}, headers=auth).status_code

    assert service.handle_connection(connection_event("$connect", "c1="))["statusCode"] == 200
    clock["now"] += 120  # connected for two minutes (a silent caller): still live
    assert try_start() == 429
    service.handle_connection(connection_event("$disconnect", "c1="))  # the socket dropped without "end"
    clock["now"] += window - 1
    assert try_start() == 429  # it may still resume
    assert "caller_disconnected" not in service.sweep()  # and the sweeper does not end it
    clock["now"] += 2  # past the resume window: the slot is free before the sweeper ends the call
    second = client.post("/api/v1/conversations", json={"agent_id": agent_id}, headers=auth)
    assert second.status_code == 201, second.text
    assert client.get(f"/api/v1/conversations/{call['id']}", headers=auth).json()["status"] == "active"
    assert service.sweep()["caller_disconnected"] == 1

    # An HTTP conversation (no socket) holds its slot while its last turn is within the window.
    reply = client.post(f"/api/v1/conversations/{second.json()['id']}/message", json={"text": "hi"}, headers=auth)
    assert reply.status_code == 200, reply.text
    assert try_start() == 429
    from datetime import timedelta

    from airies.core.models import utcnow

    long_ago = utcnow() - timedelta(seconds=window + 1)
    with app.state.database.session() as s:
        s.execute(update(ConversationTurn).values(started_at=long_ago, ended_at=long_ago))
        s.execute(update(Conversation).where(Conversation.id == second.json()["id"]).values(started_at=long_ago))
    assert try_start() == 201
