"""Webhook endpoints, the delivery log, redelivery and test events through the REST API, with a real receiver and
the delivery worker draining an in-memory queue (the SQS path is tests/integration/test_webhooks_delivery.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from airies.core.config import Settings
from airies.webhooks.delivery import Outcome, WebhookDeliverer
from airies.webhooks.routes import delivery_queue
from airies.webhooks.schemas import DeliveryMessage
from airies.webhooks.service import WebhookPublisher, WebhookService
from tests.conftest import signup
from tests.doubles.webhook_receiver import WebhookReceiver

API = "/api/v1"
AGENT = {"name": "Front desk", "system_prompt": "You are the receptionist.", "first_message": "Hello!"}


@dataclass
class RecordingQueue:
    """The delivery queue's interface, in memory: what was sent (with its delay) and what was dead-lettered."""

    messages: list[tuple[DeliveryMessage, int]] = field(default_factory=list)
    dead: list[tuple[DeliveryMessage, str]] = field(default_factory=list)
    sent_delays: list[int] = field(default_factory=list)

    def send(self, message: DeliveryMessage, delay_s: int = 0) -> None:
        self.messages.append((message, delay_s))
        self.sent_delays.append(delay_s)

    def dead_letter(self, message: DeliveryMessage, reason: str) -> None:
        self.dead.append((message, reason))


@dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now


def drain(deliverer: WebhookDeliverer, queue: RecordingQueue, clock: Clock | None = None) -> list[Outcome]:
    """Hand every queued message to the worker, as the event source would: a message's delay passes on ``clock``
    (when given) instead of being waited for."""
    outcomes = []
    while queue.messages and len(outcomes) < 50:
        message, delay = queue.messages.pop(0)
        if clock is not None:
            clock.now += delay
        outcomes.append(deliverer.handle(message))
    return outcomes


@pytest.fixture
def receiver():
    with WebhookReceiver() as running:
        yield running


@pytest.fixture
def settings(tmp_path, receiver) -> Settings:
    return Settings(
        stage="local",
        data_dir=tmp_path,
        allow_public_signup=True,
        url_guard_allowed_hosts=receiver.host,
        webhook_retry_base_s=1,
        webhook_timeout_s=5,
    )


@pytest.fixture
def queue(app) -> RecordingQueue:
    recording = RecordingQueue()
    app.dependency_overrides[delivery_queue] = lambda: recording
    return recording


@pytest.fixture
def deliverer(database, settings, queue):
    worker = WebhookDeliverer(database, settings, queue)
    yield worker
    worker.close()


def put_default(client, auth, receiver, **body) -> dict:
    response = client.put(f"{API}/webhooks/endpoint", json={"url": receiver.url, **body}, headers=auth)
    assert response.status_code in (200, 201), response.text
    if response.json().get("secret"):
        receiver.secret = response.json()["secret"]
    return response.json()


def account_id(client, auth) -> str:
    return client.get(f"{API}/accounts/me", headers=auth).json()["id"]


def publish(database, settings, queue, account: str, event_type: str, data: dict, agent_id=None, key=None):
    with database.session() as session:
        return WebhookService(session, settings, queue=queue).publish(
            account, agent_id, event_type, data, idempotency_key=key
        )


# --------------------------------------------------------------------------------------------------------------------
# Endpoints
# --------------------------------------------------------------------------------------------------------------------


def test_endpoint_secret_is_shown_on_create_and_rotate_only(client, auth, receiver, queue):
    created = client.put(f"{API}/webhooks/endpoint", json={"url": receiver.url}, headers=auth)
    assert created.status_code == 201
    body = created.json()
    assert body["secret"].startswith("whsec_") and body["masked_secret"].endswith(body["secret"][-4:])
    assert body["events"] == [
        "conversation.started",
        "conversation.ended",
        "turn.completed",
        "transcript.updated",
        "tool.called",
    ]
    got = client.get(f"{API}/webhooks/endpoint", headers=auth).json()
    assert got["secret"] is None and got["id"] == body["id"]
    replaced = client.put(
        f"{API}/webhooks/endpoint", json={"url": receiver.url, "events": ["tool.called"]}, headers=auth
    )
    assert replaced.status_code == 200 and replaced.json()["secret"] is None
    assert replaced.json()["events"] == ["tool.called"] and replaced.json()["masked_secret"] == body["masked_secret"]
    rotated = client.post(f"{API}/webhooks/endpoint/rotate-secret", headers=auth).json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != body["secret"]
    assert client.delete(f"{API}/webhooks/endpoint", headers=auth).status_code == 204
    assert client.get(f"{API}/webhooks/endpoint", headers=auth).status_code == 404


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.5/hook", "blocked_address"),
        ("http://127.0.0.1:1/hook", "blocked_address"),
        ("http://169.254.169.254/latest/meta-data", "blocked_address"),
        ("ftp://example.com/hook", "invalid_url"),
        ("https://user:pw@example.com/hook", "credentials_not_allowed"),
    ],
)
def test_endpoint_urls_pass_the_guard(client, auth, url, reason):
    response = client.put(f"{API}/webhooks/endpoint", json={"url": url}, headers=auth)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "url_not_allowed"
    assert response.json()["error"]["details"][0]["code"] == reason


def test_bad_input_is_4xx_never_5xx(client, auth, receiver):
    cases = [
        {"url": receiver.url, "events": ["call.exploded"]},
        {"url": receiver.url, "events": []},
        {"url": receiver.url, "secret": "mine"},
        {"url": ""},
        {"url": "x" * 3000},
        {"events": ["tool.called"]},
    ]
    for body in cases:
        response = client.put(f"{API}/webhooks/endpoint", json=body, headers=auth)
        assert 400 <= response.status_code < 500, (body, response.status_code)
    raw = client.put(f"{API}/webhooks/endpoint", content=b"{", headers={**auth, "content-type": "application/json"})
    assert raw.status_code == 400
    assert client.get(f"{API}/webhooks/deliveries?status=lost", headers=auth).status_code == 422
    assert client.get(f"{API}/webhooks/deliveries?limit=0", headers=auth).status_code == 422
    assert client.get(f"{API}/webhooks/deliveries/{'e' * 41}", headers=auth).status_code == 422
    assert client.post(f"{API}/webhooks/test", json={"agent_id": 5}, headers=auth).status_code == 422
    assert client.post(f"{API}/webhooks/test", headers=auth).status_code == 404  # no endpoint yet


def test_agent_endpoint_overrides_the_default_and_foreign_ids_are_404(
    client, auth, receiver, queue, database, settings
):
    put_default(client, auth, receiver)
    agent = client.post(f"{API}/agents", json=AGENT, headers=auth).json()["id"]
    own = client.put(f"{API}/agents/{agent}/webhook", json={"url": receiver.url + "/agent"}, headers=auth)
    assert own.status_code == 201 and own.json()["agent_id"] == agent
    account = account_id(client, auth)
    event = publish(database, settings, queue, account, "tool.called", {"tool": "book"}, agent_id=agent)
    other = publish(database, settings, queue, account, "tool.called", {"tool": "book"}, agent_id=None)
    assert event.endpoint_id == own.json()["id"] and other.endpoint_id != own.json()["id"]

    stranger = signup(client)
    for method, path in [
        ("get", f"/agents/{agent}/webhook"),
        ("put", f"/agents/{agent}/webhook"),
        ("delete", f"/agents/{agent}/webhook"),
        ("post", f"/agents/{agent}/webhook/rotate-secret"),
        ("get", f"/webhooks/deliveries/{event.id}"),
        ("post", f"/webhooks/deliveries/{event.id}/redeliver"),
        ("get", "/agents/agt_missing/webhook"),
    ]:
        kwargs = {"json": {"url": receiver.url}} if method == "put" else {}
        response = getattr(client, method)(f"{API}{path}", headers=stranger, **kwargs)
        assert response.status_code == 404, (method, path, response.text)
    test = client.post(f"{API}/webhooks/test", json={"agent_id": agent}, headers=stranger)
    assert test.status_code == 404
    assert client.get(f"{API}/webhooks/deliveries", headers=stranger).json()["data"] == []
    assert client.delete(f"{API}/agents/{agent}/webhook", headers=auth).status_code == 204


# --------------------------------------------------------------------------------------------------------------------
# Publishing and delivery
# --------------------------------------------------------------------------------------------------------------------


def test_delivery_is_signed_and_recorded(client, auth, receiver, queue, deliverer, database, settings):
    put_default(client, auth, receiver, events=["conversation.ended"])
    account = account_id(client, auth)
    event = publish(database, settings, queue, account, "conversation.ended", {"conversation_id": "conv_1"})
    assert event is not None and event.id.startswith("evt_")
    assert publish(database, settings, queue, account, "turn.completed", {}) is None  # not subscribed
    assert [outcome.result for outcome in drain(deliverer, queue)] == ["delivered"]
    (received,) = receiver.received
    assert received.verified
    assert received.headers["Airies-Event-Id"] == event.id
    assert received.headers["Airies-Event-Type"] == "conversation.ended"
    assert received.event["data"] == {"conversation_id": "conv_1"} and received.event["id"] == event.id
    got = client.get(f"{API}/webhooks/deliveries/{event.id}", headers=auth).json()
    assert got["status"] == "delivered" and got["attempts"] == 1 and got["last_status_code"] == 200
    assert got["last_latency_ms"] >= 0 and got["payload"]["data"] == {"conversation_id": "conv_1"}


def test_publish_is_idempotent_on_the_callers_key(client, auth, receiver, queue, deliverer, database, settings):
    put_default(client, auth, receiver)
    account = account_id(client, auth)
    first = publish(database, settings, queue, account, "conversation.started", {}, key="conv_9:started")
    drain(deliverer, queue)
    again = publish(database, settings, queue, account, "conversation.started", {}, key="conv_9:started")
    assert again.id == first.id and queue.messages == []  # delivered once: a retry of the publisher sends nothing
    assert len(receiver.received) == 1
    listed = client.get(f"{API}/webhooks/deliveries", headers=auth).json()["data"]
    assert [d["id"] for d in listed] == [first.id]


def test_retries_back_off_then_succeed(client, auth, receiver, queue, deliverer, database, settings):
    put_default(client, auth, receiver)
    receiver.fail_first = 3  # 500, 500, 500, then 200
    event = publish(database, settings, queue, account_id(client, auth), "turn.completed", {"turn_id": "t1"})
    outcomes = drain(deliverer, queue)
    assert [o.result for o in outcomes] == ["retry", "retry", "retry", "delivered"]
    retry_delays = queue.sent_delays[1:]  # the first send is the publish itself
    assert len(retry_delays) == 3
    for attempt, delay in enumerate(retry_delays, start=1):  # base 1 s, doubling, jittered to 50-100 %
        assert 2 ** (attempt - 1) * 0.5 <= delay <= 2 ** (attempt - 1) + 1
    assert {r.headers["Airies-Event-Id"] for r in receiver.received} == {event.id}
    got = client.get(f"{API}/webhooks/deliveries/{event.id}", headers=auth).json()
    assert got["attempts"] == 4 and got["status"] == "delivered" and got["last_status_code"] == 200


def test_410_disables_the_endpoint(client, auth, receiver, queue, deliverer, database, settings):
    put_default(client, auth, receiver)
    receiver.status = 410
    account = account_id(client, auth)
    event = publish(database, settings, queue, account, "tool.called", {})
    assert [o.result for o in drain(deliverer, queue)] == ["failed"]
    endpoint = client.get(f"{API}/webhooks/endpoint", headers=auth).json()
    assert endpoint["enabled"] is False and "410" in endpoint["disabled_reason"]
    assert publish(database, settings, queue, account, "tool.called", {}) is None  # nothing more is sent
    assert client.post(f"{API}/webhooks/deliveries/{event.id}/redeliver", headers=auth).status_code == 409
    assert client.post(f"{API}/webhooks/test", headers=auth).status_code == 409
    receiver.status = 200
    put_default(client, auth, receiver, enabled=True)
    assert client.post(f"{API}/webhooks/deliveries/{event.id}/redeliver", headers=auth).status_code == 202
    assert [o.result for o in drain(deliverer, queue)] == ["delivered"]


def test_other_4xx_is_retried_a_few_times_only(client, auth, receiver, queue, deliverer, database, settings):
    put_default(client, auth, receiver)
    receiver.status = 422
    event = publish(database, settings, queue, account_id(client, auth), "tool.called", {})
    assert [o.result for o in drain(deliverer, queue)] == ["retry", "retry", "failed"]
    assert len(receiver.received) == settings.webhook_max_client_error_attempts == 3
    (dead,) = queue.dead
    assert dead[0].delivery_id == event.id and "422" in dead[1]
    got = client.get(f"{API}/webhooks/deliveries/{event.id}", headers=auth).json()
    assert got["status"] == "failed" and got["last_status_code"] == 422 and got["attempts"] == 3


def test_retries_stop_after_the_max_age_and_land_in_the_dlq(client, auth, receiver, queue, database, settings):
    short = settings.model_copy(update={"webhook_max_age_s": 5})
    clock = Clock(time.time())
    deliverer = WebhookDeliverer(database, short, queue, clock=clock, rng=lambda: 1.0)  # no jitter: 1, 2, 4 s
    put_default(client, auth, receiver)
    receiver.status = 503
    event = publish(database, settings, queue, account_id(client, auth), "tool.called", {})
    try:
        outcomes = drain(deliverer, queue, clock)
    finally:
        deliverer.close()
    # attempts at 0 s and 1 s; the third (at 3 s) would wait 4 s more, past the 5 s window
    assert [o.result for o in outcomes] == ["retry", "retry", "failed"]
    assert len(receiver.received) == 3
    assert [m.delivery_id for m, _ in queue.dead] == [event.id]
    listed = client.get(f"{API}/webhooks/deliveries?status=failed", headers=auth).json()["data"]
    assert [d["id"] for d in listed] == [event.id] and listed[0]["last_status_code"] == 503


def test_redirect_to_a_private_address_is_refused(client, auth, receiver, queue, deliverer, database, settings):
    put_default(client, auth, receiver)
    receiver.redirect_to = "http://169.254.169.254/latest/meta-data/"
    event = publish(database, settings, queue, account_id(client, auth), "tool.called", {})
    outcomes = drain(deliverer, queue)
    assert [o.result for o in outcomes] == ["retry", "retry", "failed"]  # a refused URL counts like a 4xx
    assert outcomes[0].response is not None and "url_not_allowed" in (outcomes[0].response.error or "")
    assert len(receiver.received) == 3  # the receiver was asked; the metadata address never was
    got = client.get(f"{API}/webhooks/deliveries/{event.id}", headers=auth).json()
    assert got["status"] == "failed" and got["last_status_code"] is None


def test_a_302_is_an_answer_not_a_redirect(client, auth, receiver, queue, deliverer, database, settings):
    put_default(client, auth, receiver)
    receiver.redirect_to, receiver.redirect_status = receiver.url + "/elsewhere", 302
    publish(database, settings, queue, account_id(client, auth), "tool.called", {})
    assert [o.result for o in drain(deliverer, queue)] == ["retry", "retry", "failed"]
    assert {r.path for r in receiver.received} == {"/hooks"}


def test_an_oversized_answer_is_read_up_to_the_cap(client, auth, receiver, queue, database, settings):
    put_default(client, auth, receiver)
    receiver.body_bytes = 5_000_000
    capped = settings.model_copy(update={"webhook_max_response_bytes": 1024})
    worker = WebhookDeliverer(database, capped, queue)
    publish(database, settings, queue, account_id(client, auth), "tool.called", {})
    try:
        assert [o.result for o in drain(worker, queue)] == ["delivered"]
    finally:
        worker.close()


def test_redeliver_and_test_event(client, auth, receiver, queue, deliverer, database, settings):
    put_default(client, auth, receiver, events=["conversation.ended"])
    event = publish(database, settings, queue, account_id(client, auth), "conversation.ended", {"n": 1})
    drain(deliverer, queue)
    assert client.post(f"{API}/webhooks/deliveries/{event.id}/redeliver", headers=auth).status_code == 202
    assert client.post(f"{API}/webhooks/deliveries/{event.id}/redeliver", headers=auth).status_code == 409  # pending
    drain(deliverer, queue)
    assert [r.headers["Airies-Event-Id"] for r in receiver.received] == [event.id, event.id]
    assert receiver.received[0].body == receiver.received[1].body
    got = client.get(f"{API}/webhooks/deliveries/{event.id}", headers=auth).json()
    assert got["attempts"] == 2 and got["status"] == "delivered"

    test = client.post(f"{API}/webhooks/test", headers=auth)
    assert test.status_code == 202 and test.json()["event_type"] == "webhook.test"
    drain(deliverer, queue)
    assert receiver.received[-1].event["type"] == "webhook.test" and receiver.received[-1].verified
    listed = client.get(f"{API}/webhooks/deliveries?limit=1", headers=auth).json()
    assert listed["has_more"] and listed["data"][0]["id"] == test.json()["id"]
    rest = client.get(f"{API}/webhooks/deliveries?cursor={listed['next_cursor']}", headers=auth).json()
    assert [d["id"] for d in rest["data"]] == [event.id]
    typed = client.get(f"{API}/webhooks/deliveries?event_type=conversation.ended", headers=auth).json()["data"]
    assert [d["id"] for d in typed] == [event.id]


def test_a_rotated_secret_signs_the_next_attempt(client, auth, receiver, queue, deliverer, database, settings):
    put_default(client, auth, receiver)
    old = receiver.secret
    publish(database, settings, queue, account_id(client, auth), "tool.called", {})
    receiver.secret = client.post(f"{API}/webhooks/endpoint/rotate-secret", headers=auth).json()["secret"]
    drain(deliverer, queue)
    assert receiver.secret != old and receiver.received[0].verified


def test_a_stale_or_duplicate_message_is_a_no_op(client, auth, receiver, queue, deliverer, database, settings):
    put_default(client, auth, receiver)
    event = publish(database, settings, queue, account_id(client, auth), "tool.called", {})
    ((message, _),) = queue.messages
    assert deliverer.handle(message).result == "delivered"
    assert deliverer.handle(message).result == "stale"  # SQS delivered the same message twice
    assert deliverer.handle(DeliveryMessage(delivery_id="evt_unknown", attempt=1)).result == "stale"
    assert len(receiver.received) == 1 and event is not None


def test_deleting_an_agent_deletes_its_endpoint_and_its_events_go_to_the_default(
    client, auth, receiver, queue, database, settings
):
    default = put_default(client, auth, receiver)
    agent = client.post(f"{API}/agents", json=AGENT, headers=auth).json()["id"]
    client.put(f"{API}/agents/{agent}/webhook", json={"url": receiver.url}, headers=auth)
    assert client.delete(f"{API}/agents/{agent}", headers=auth).status_code == 204
    assert client.get(f"{API}/agents/{agent}/webhook", headers=auth).status_code == 404
    event = publish(database, settings, queue, account_id(client, auth), "tool.called", {}, agent_id=agent)
    assert event.endpoint_id == default["id"]


class FailingQueue:
    def send(self, message: DeliveryMessage, delay_s: int = 0) -> None:
        raise ConnectionError("SQS is unreachable")

    def dead_letter(self, message: DeliveryMessage, reason: str) -> None:
        raise ConnectionError("SQS is unreachable")


def test_the_platforms_publisher_never_raises_and_a_retry_sends_the_unsent_event(
    client, auth, receiver, queue, deliverer, database, settings
):
    put_default(client, auth, receiver)
    account = account_id(client, auth)
    broken = WebhookPublisher(database, settings, FailingQueue())
    assert broken.publish(account, None, "conversation.started", {"n": 1}, idempotency_key="conv_5:started") is None
    stored = client.get(f"{API}/webhooks/deliveries?status=pending", headers=auth).json()["data"]
    assert len(stored) == 1 and stored[0]["attempts"] == 0  # kept: the first send failed after the commit
    working = WebhookPublisher(database, settings, queue)
    assert (
        working.publish(account, None, "conversation.started", {"n": 1}, idempotency_key="conv_5:started")
        == (stored[0]["id"])
    )
    assert [o.result for o in drain(deliverer, queue)] == ["delivered"]
    assert working.publish(account, None, "turn.completed", {}, idempotency_key="x" * 201) is None  # logged, not raised


def test_an_event_whose_endpoint_was_deleted_fails(client, auth, receiver, queue, deliverer, database, settings):
    put_default(client, auth, receiver)
    event = publish(database, settings, queue, account_id(client, auth), "tool.called", {})
    assert client.delete(f"{API}/webhooks/endpoint", headers=auth).status_code == 204
    assert [o.result for o in drain(deliverer, queue)] == ["failed"]
    assert receiver.received == []
    got = client.get(f"{API}/webhooks/deliveries/{event.id}", headers=auth).json()
    assert got["status"] == "failed" and got["last_error"] == "endpoint deleted" and got["endpoint_id"] is None
    assert client.post(f"{API}/webhooks/deliveries/{event.id}/redeliver", headers=auth).status_code == 409


def test_publishing_inside_the_owners_transaction_enqueues_on_its_commit(
    client, auth, receiver, queue, deliverer, database, settings
):
    put_default(client, auth, receiver)
    account = account_id(client, auth)
    with database.session() as session:
        row = WebhookService(session, settings, queue=queue).publish(
            account, None, "turn.completed", {"turn_id": "t1"}, commit=False
        )
        assert row is not None and queue.messages == []  # not before the owner commits
    assert [m.delivery_id for m, _ in queue.messages] == [row.id]
    assert [o.result for o in drain(deliverer, queue)] == ["delivered"]

    with pytest.raises(RuntimeError), database.session() as session:
        WebhookService(session, settings, queue=queue).publish(account, None, "turn.completed", {}, commit=False)
        raise RuntimeError("the turn failed")
    assert queue.messages == []
    listed = client.get(f"{API}/webhooks/deliveries", headers=auth).json()["data"]
    assert [d["id"] for d in listed] == [row.id]  # the rolled-back event is gone with its transaction
