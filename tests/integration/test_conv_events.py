"""Conversation events end to end: whole calls (REST through the API, WebSocket through the live handlers) publish
``conversation.started``, ``turn.completed`` / ``transcript.updated`` per stored turn and ``conversation.ended``
(the end-of-call report); the webhook worker delivers them, signed, to a real receiver, in order."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from moto import mock_aws
from sqlalchemy import func, select

from airies.conversations.events import ConversationEvents
from airies.conversations.models import Conversation
from airies.conversations.schemas import ConversationCreate
from airies.conversations.service import ConversationService
from airies.core.config import Settings
from airies.webhooks.delivery import WebhookDeliverer
from airies.webhooks.models import WebhookDelivery
from airies.webhooks.schemas import EndpointPut
from airies.webhooks.service import WebhookPublisher, WebhookService
from tests.doubles.conv_engines import FakeLLM, fake_engines
from tests.doubles.webhook_receiver import ListQueue, WebhookReceiver
from tests.integration.test_conv_api import deployed_agent, engines, live_sessions, start  # noqa: F401
from tests.integration.test_conv_handlers import Harness, frames_of

EVENTS = ["conversation.started", "conversation.ended", "turn.completed", "transcript.updated"]


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as running:
        yield running


@pytest.fixture
def settings(tmp_path, receiver) -> Settings:
    return Settings(stage="local", data_dir=tmp_path, allow_public_signup=True, url_guard_allowed_hosts=receiver.host)


def deliver_all(database: Any, settings: Settings, queue: ListQueue) -> None:
    deliverer = WebhookDeliverer(database, settings, queue)
    try:
        while queue.messages:
            assert deliverer.handle(queue.messages.pop(0)).result == "delivered"
    finally:
        deliverer.close()


def received(receiver: WebhookReceiver) -> list[dict[str, Any]]:
    assert receiver.received and all(r.verified for r in receiver.received)
    return [r.event for r in receiver.received]


def test_a_rest_call_delivers_started_turns_and_the_end_of_call_report(
    client,
    auth,
    app,
    database,
    settings,
    receiver,
    engines,  # noqa: F811
) -> None:
    queue = ListQueue()
    app.state.webhook_publisher = WebhookPublisher(database, settings, queue)
    put = client.put("/api/v1/webhooks/endpoint", json={"url": receiver.url, "events": EVENTS}, headers=auth)
    assert put.status_code == 201, put.text
    receiver.secret = put.json()["secret"]

    cid = start(client, auth, deployed_agent(client, auth))["id"]
    for text in ("Do you ship abroad?", "Really?"):
        reply = client.post(f"/api/v1/conversations/{cid}/message", json={"text": text}, headers=auth)
        assert reply.status_code == 200, reply.text
    turn_ids = [t["id"] for t in client.get(f"/api/v1/conversations/{cid}", headers=auth).json()["turns"]]
    ended = client.put(f"/api/v1/conversations/{cid}", json={"status": "ended"}, headers=auth)
    assert ended.status_code == 200
    client.put(f"/api/v1/conversations/{cid}", json={"status": "ended"}, headers=auth)  # a second end: no event
    deliver_all(database, settings, queue)

    events = received(receiver)
    assert [e["type"] for e in events] == [
        "conversation.started",
        "turn.completed",
        "transcript.updated",
        "turn.completed",
        "transcript.updated",
        "conversation.ended",
    ]
    assert all(e["data"]["conversation_id"] == cid for e in events)
    first_turn = events[1]["data"]
    assert first_turn["turn_id"] == turn_ids[0] and first_turn["seq"] == 1
    assert first_turn["user_text"] == "Do you ship abroad?"
    assert first_turn["agent_text"] == "We ship worldwide. Anything else?"
    assert first_turn["latency_ms"]["total_ms"] >= 0 and Decimal(first_turn["cost"]["total"]) > 0
    update = events[4]["data"]
    assert update["turn_id"] == turn_ids[1]
    assert [(e["role"], e["text"]) for e in update["transcript"]] == [
        ("user", "Really?"),
        ("agent", "We ship worldwide. Anything else?"),
    ]
    report = events[-1]["data"]
    assert report["end_reason"] == "api_request" and report["duration_seconds"] >= 0
    assert [e["role"] for e in report["transcript"]] == ["user", "agent", "user", "agent"]
    assert report["latency"]["turns"] == 2 and report["latency"]["total_ms"]["p95_ms"] is not None
    cost = client.get(f"/api/v1/conversations/{cid}/cost", headers=auth).json()
    assert report["cost"]["total"] == cost["total"] and report["recording_urls"] == []
    assert len({e["id"] for e in events}) == len(events)


def test_a_websocket_call_delivers_its_events_in_order(database, settings, receiver) -> None:
    queue = ListQueue()
    publisher = WebhookPublisher(database, settings, queue)
    with mock_aws():
        h = Harness(database, settings, fake_engines(llm=FakeLLM(reply="We open at nine.")))
        h.service.runtime.publisher = publisher
        with database.session() as session:
            endpoint, _ = WebhookService(session, settings, queue=None).put_endpoint(
                h.account_id, h.agent_id, EndpointPut(url=receiver.url, events=EVENTS)
            )
        receiver.secret = endpoint.secret or ""
        with database.session() as session:
            service = ConversationService(session, h.settings, tokens=h.tokens, publisher=publisher)
            conversation, token, _ = service.start_conversation(h.account_id, ConversationCreate(agent_id=h.agent_id))
            cid = conversation.id
        conn, _ = h.connect(cid, token)
        h.send(conn, {"action": "start"})  # the first message: a turn of its own
        h.send(conn, {"action": "text", "text": "When do you open?"})
        h.send(conn, {"action": "end"})
        assert frames_of(conn)[-1]["type"] == "ended"
    deliver_all(database, settings, queue)

    events = received(receiver)
    assert [e["type"] for e in events] == [
        "conversation.started",
        "turn.completed",
        "transcript.updated",
        "turn.completed",
        "transcript.updated",
        "conversation.ended",
    ]
    assert events[1]["data"]["agent_text"] == "Hello, thanks for calling." and events[1]["data"]["user_text"] is None
    assert events[3]["data"]["user_text"] == "When do you open?"
    assert events[3]["data"]["latency_ms"]["first_audio_ms"] is not None
    report = events[-1]["data"]
    assert [e["role"] for e in report["transcript"]] == ["agent", "user", "agent"]
    assert report["end_reason"] == events[-1]["data"]["end_reason"] != ""


def test_a_retried_publish_stores_one_event_per_key(database, settings, receiver) -> None:
    """A retried invocation (same conversation, same event) publishes nothing twice."""
    queue = ListQueue()
    publisher = WebhookPublisher(database, settings, queue)
    with mock_aws():
        h = Harness(database, settings, fake_engines())
        with database.session() as session:
            endpoint, _ = WebhookService(session, settings, queue=None).put_endpoint(
                h.account_id, None, EndpointPut(url=receiver.url, events=EVENTS)
            )
        receiver.secret = endpoint.secret or ""
        cid, _ = h.start()
    for _ in range(2):
        with database.session() as session:
            ConversationEvents(publisher).started(session, session.get(Conversation, cid))
    with database.session() as session:
        stored = session.scalar(
            select(func.count()).select_from(WebhookDelivery).where(WebhookDelivery.account_id == h.account_id)
        )
    assert stored == 1
    # An event no attempt was made at is enqueued again (its first send may have failed): the worker sends it once.
    deliverer = WebhookDeliverer(database, settings, queue)
    try:
        results = [deliverer.handle(message).result for message in queue.messages]
    finally:
        deliverer.close()
    assert results[0] == "delivered" and set(results[1:]) <= {"stale"} and len(receiver.received) == 1


def test_the_report_links_each_recorded_side_with_a_presigned_url() -> None:
    import boto3

    from airies.conversations.models import ConversationTurn
    from airies.conversations.service import S3Recorder

    with mock_aws():
        recorder = S3Recorder(boto3.client("s3", region_name="us-east-1"), "recordings-bucket")
        events = ConversationEvents(None, presign=recorder.presign)
        side = {"bucket": "recordings-bucket", "seconds": 1.0}
        turns = [
            ConversationTurn(
                recording={"caller": {**side, "key": "r/1-caller.wav"}, "agent": {**side, "key": "r/1-agent.wav"}}
            ),
            ConversationTurn(recording={"error": "recording_failed"}),
        ]
        recorded = events.recording_urls(Conversation(recording_enabled=True), turns)
        assert events.recording_urls(Conversation(recording_enabled=False), turns) == []
    assert len(recorded) == 2 and "r/1-caller.wav" in recorded[0] and "r/1-agent.wav" in recorded[1]
    assert all("X-Amz-Expires=86400" in url or "Expires=" in url for url in recorded)
