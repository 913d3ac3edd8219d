"""Signed Stripe webhooks whose body is not a readable event answer 400 ``invalid_event`` (never a 5xx that Stripe
would retry for days) and record nothing, through the HTTP route and the StripeWebhookFunction alike. Bodies are
signed with the SDK's own ``WebhookSignature.generate_signature_header``."""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stripe
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from airies.api.app import create_app
from airies.billing.models import CreditLedgerEntry, Payment, StripeEvent
from airies.core.config import Settings
from tests.conftest import signup
from tests.kb_support import FakeLambdaContext

SECRET = "whsec_shapes"
NOW = int(time.time())


def event(event_type: str, obj: Any, **envelope: Any) -> dict[str, Any]:
    return {
        "id": f"evt_{event_type.replace('.', '_')}",
        "object": "event",
        "type": event_type,
        "created": NOW,
        "livemode": False,
        "data": {"object": obj},
        **envelope,
    }


PI = {"id": "pi_1", "object": "payment_intent", "status": "succeeded", "amount": 2000, "currency": "usd"}
CHARGE = {"id": "ch_1", "object": "charge", "payment_intent": "pi_1", "amount_refunded": 500}
SUBSCRIPTION = {"id": "sub_1", "object": "subscription", "status": "active", "customer": "cus_1"}


def without(obj: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != key}


def _event_without(key: str) -> dict[str, Any]:
    return without(event("payment_intent.succeeded", PI), key)


MALFORMED: dict[str, Any] = {
    "a list": [],
    "an empty object": {},
    "a string": "evt_1",
    "no data": _event_without("data"),
    "data null": {**event("payment_intent.succeeded", PI), "data": None},
    "data.object null": event("payment_intent.succeeded", None),
    "data.object a list": event("payment_intent.succeeded", []),
    "no id": _event_without("id"),
    "a numeric id": {**event("payment_intent.succeeded", PI), "id": 42},
    "no type": _event_without("type"),
    "no created": _event_without("created"),
    "created a string": event("payment_intent.succeeded", PI, created="1700000000"),
    "created a fraction": event("payment_intent.succeeded", PI, created=1.5),
    "created out of range": event("payment_intent.succeeded", PI, created=10**30),
    "object without id": event("payment_intent.succeeded", without(PI, "id")),
    "amount a string": event("payment_intent.succeeded", {**PI, "amount": "2000"}),
    "amount a fraction": event("payment_intent.succeeded", {**PI, "amount": 20.5}),
    "amount negative": event("payment_intent.succeeded", {**PI, "amount": -1}),
    "amount out of range": event("payment_intent.succeeded", {**PI, "amount": 2**63}),
    "no amount": event("payment_intent.payment_failed", without(PI, "amount")),
    "metadata not strings": event("payment_intent.succeeded", {**PI, "metadata": {"airies_payment_id": 7}}),
    "refund without id": event("charge.refunded", {**CHARGE, "refunds": {"data": [{"amount": 500}]}}),
    "refund amount a string": event(
        "charge.refunded", {**CHARGE, "refunds": {"data": [{"id": "re_1", "amount": "500"}]}}
    ),
    "amount_refunded null": event("charge.refunded", {**CHARGE, "amount_refunded": None}),
    "dispute without amount": event("charge.dispute.created", {"id": "dp_1", "payment_intent": "pi_1"}),
    "invoice without id": event("invoice.paid", {"customer": "cus_1", "amount_paid": 100}),
    "invoice customer an object": event("invoice.paid", {"id": "in_1", "customer": {"id": "cus_1"}}),
    "period end out of range": event("customer.subscription.updated", {**SUBSCRIPTION, "current_period_end": 10**15}),
    "cancel flag a string": event("customer.subscription.updated", {**SUBSCRIPTION, "cancel_at_period_end": "yes"}),
    "subscription without id": event("customer.subscription.deleted", without(SUBSCRIPTION, "id")),
}


def signed(body: Any) -> tuple[str, dict[str, str]]:
    payload = json.dumps(body)
    header = stripe.WebhookSignature.generate_signature_header(payload, SECRET)
    return payload, {"Stripe-Signature": header, "Content-Type": "application/json"}


@pytest.fixture
def webhook_client(database, tmp_path) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    # A webhook secret and no API key: reading an event must never need a call to Stripe.
    settings = Settings(stage="local", data_dir=tmp_path, stripe_webhook_secret=SECRET)
    with TestClient(create_app(settings, database)) as client:
        yield client


def recorded(database) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    with database.session() as session:
        return tuple(  # type: ignore[return-value]
            session.scalar(select(func.count()).select_from(model))
            for model in (StripeEvent, CreditLedgerEntry, Payment)
        )


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_signed_malformed_event_is_400_and_records_nothing(webhook_client, database, case) -> None:  # type: ignore[no-untyped-def]
    signup(webhook_client)
    before = recorded(database)
    payload, headers = signed(copy.deepcopy(MALFORMED[case]))
    response = webhook_client.post("/api/v1/billing/webhooks/stripe", content=payload, headers=headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_event" and error["details"], error
    assert recorded(database) == before
    assert before[0] == 0


def test_a_signed_body_that_is_not_json_is_400(webhook_client, database) -> None:  # type: ignore[no-untyped-def]
    for body in ("not json", '{"id": "evt_1",'):
        header = stripe.WebhookSignature.generate_signature_header(body, SECRET)
        response = webhook_client.post(
            "/api/v1/billing/webhooks/stripe", content=body, headers={"Stripe-Signature": header}
        )
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_event"
    assert recorded(database)[0] == 0


def test_well_formed_events_are_still_accepted(webhook_client, database) -> None:  # type: ignore[no-untyped-def]
    """The schema lets Stripe's other fields through and leaves unhandled types alone."""
    unhandled = event("customer.created", {"email": "a@b.co"})  # no id: not an object the service reads
    pi = event("payment_intent.succeeded", {**PI, "id": "pi_unknown", "charges": {"data": []}, "metadata": {}})
    for body, outcome in ((unhandled, "ignored"), (pi, "processed")):
        payload, headers = signed(body)
        response = webhook_client.post("/api/v1/billing/webhooks/stripe", content=payload, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["outcome"] == outcome
    assert recorded(database)[0] == 2


@pytest.fixture
def webhook_function(database, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    path = Path(__file__).resolve().parents[2] / "functions" / "billing" / "stripe_webhook.py"
    spec = importlib.util.spec_from_file_location("_billing_stripe_webhook_shapes", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "settings", Settings(stage="local", data_dir=tmp_path, stripe_webhook_secret=SECRET))
    monkeypatch.setattr(module, "database", database)
    return module


@pytest.mark.parametrize("case", ["a list", "data null", "object without id", "amount a string"])
def test_the_webhook_function_answers_400_too(webhook_function, database, case) -> None:  # type: ignore[no-untyped-def]
    payload, headers = signed(copy.deepcopy(MALFORMED[case]))
    sample = Path(__file__).resolve().parents[2] / "infra" / "events" / "StripeWebhookFunction.signed.json"
    lambda_event = {
        **json.loads(sample.read_text()),  # an HTTP API (payload v2) request, as API Gateway sends it
        "headers": {k.lower(): v for k, v in headers.items()},
        "body": base64.b64encode(payload.encode()).decode(),
        "isBase64Encoded": True,
    }
    response = webhook_function.handler(lambda_event, FakeLambdaContext())
    assert response["statusCode"] == 400, response
    assert json.loads(response["body"])["error"]["code"] == "invalid_event"
    assert recorded(database)[0] == 0
