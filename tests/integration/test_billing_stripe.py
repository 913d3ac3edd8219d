"""Stripe through the official SDK: top-ups, subscriptions and the webhook, over the HTTP API.

The SDK talks to localstripe (a real Stripe emulator, run as a subprocess on 127.0.0.1) for customers,
PaymentIntents, plans and subscriptions; invoices (which localstripe cannot finalise) go to the small
wire-level double in tests/doubles/stripe_server.py. Webhook signatures are made with the SDK's own
``WebhookSignature.generate_signature_header``; replayed, reordered and forged events are sent.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import stripe
from fastapi.testclient import TestClient

from airies.api.app import create_app
from airies.config import Settings
from airies.db.models.billing import BillingAccount, Payment, StripeEvent
from tests.conftest import signup
from tests.doubles.stripe_server import LocalStripe

WEBHOOK_SECRET = "whsec_test_secret"
API_KEY = "sk_test_airies"


@pytest.fixture(scope="module")
def localstripe() -> Iterator[LocalStripe]:
    server = LocalStripe().start()
    client = stripe.StripeClient(API_KEY, base_addresses={"api": server.url}, max_network_retries=0)
    for plan_id, amount in (("airies_pro_monthly", 9900), ("airies_enterprise_monthly", 99900)):
        client.v1.plans.create(
            params={
                "id": plan_id,
                "amount": amount,
                "currency": "usd",
                "interval": "month",
                "product": {"name": plan_id},
            }
        )
    yield server
    server.stop()


@pytest.fixture
def stripe_client(localstripe: LocalStripe, database, tmp_path) -> Iterator[TestClient]:
    settings = Settings(
        stage="local",
        data_dir=tmp_path,
        stripe_secret_key=API_KEY,
        stripe_api_base=localstripe.url,
        stripe_webhook_secret=WEBHOOK_SECRET,
    )
    with TestClient(create_app(settings, database)) as client:
        yield client


def signed(event: dict[str, Any], *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> tuple[str, dict]:
    payload = json.dumps(event)
    header = stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp)
    return payload, {"Stripe-Signature": header, "Content-Type": "application/json"}


def event(event_type: str, obj: dict[str, Any], *, created: int | None = None, event_id: str | None = None) -> dict:
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex[:16]}",
        "object": "event",
        "type": event_type,
        "created": created or int(time.time()),
        "livemode": False,
        "api_version": "2025-01-27.acacia",
        "data": {"object": obj},
    }


def post_event(client: TestClient, evt: dict, **kw: Any):
    payload, headers = signed(evt, **kw)
    return client.post("/api/v1/billing/webhooks/stripe", content=payload, headers=headers)


def balance(client: TestClient, auth: dict) -> str:
    response = client.get("/api/v1/billing/balance", headers=auth)
    assert response.status_code == 200, response.text
    return response.json()["balance"]


def test_top_up_confirmed_now_is_credited_once_even_with_webhook_and_replays(stripe_client, database):
    auth = signup(stripe_client)
    assert balance(stripe_client, auth) == "500.000000"  # free signup grant
    body = {"amount_usd": "20.00", "payment_method": "pm_card_visa", "confirm": True, "idempotency_key": "order-1"}
    created = stripe_client.post("/api/v1/billing/top-ups", json=body, headers=auth)
    assert created.status_code == 201, created.text
    top_up = created.json()
    assert top_up["status"] == "succeeded" and top_up["credits"] == "2000.000000"
    assert balance(stripe_client, auth) == "2500.000000"

    # The client retries the same request: same PaymentIntent, no second credit.
    again = stripe_client.post("/api/v1/billing/top-ups", json=body, headers=auth)
    assert again.json()["stripe_payment_intent_id"] == top_up["stripe_payment_intent_id"]

    # Stripe's webhook for the same PaymentIntent, delivered twice.
    pi = {
        "id": top_up["stripe_payment_intent_id"],
        "object": "payment_intent",
        "status": "succeeded",
        "amount": 2000,
        "currency": "usd",
        "metadata": {"airies_payment_id": top_up["id"]},
    }
    evt = event("payment_intent.succeeded", pi)
    first, replay = post_event(stripe_client, evt), post_event(stripe_client, evt)
    assert first.status_code == 200 and first.json()["outcome"] == "processed"
    assert replay.status_code == 200 and replay.json()["outcome"] == "duplicate"
    assert balance(stripe_client, auth) == "2500.000000"
    ledger = stripe_client.get("/api/v1/billing/ledger", headers=auth).json()["data"]
    assert [e["entry_type"] for e in ledger].count("top_up") == 1


def test_top_up_credited_by_webhook_exactly_once(stripe_client, database):
    auth = signup(stripe_client)
    created = stripe_client.post("/api/v1/billing/top-ups", json={"amount_usd": "5.50"}, headers=auth).json()
    assert created["status"] == "requires_payment_method" and created["client_secret"]
    assert balance(stripe_client, auth) == "500.000000"  # nothing before the payment succeeds

    pi = {
        "id": created["stripe_payment_intent_id"],
        "object": "payment_intent",
        "amount": 550,
        "currency": "usd",
        "metadata": {"airies_payment_id": created["id"]},
    }
    failed = post_event(
        stripe_client, event("payment_intent.payment_failed", {**pi, "status": "requires_payment_method"})
    )
    assert failed.status_code == 200
    assert balance(stripe_client, auth) == "500.000000"
    # Two distinct events for one success (Stripe may resend as a new event): credited once.
    for _ in range(2):
        ok = post_event(stripe_client, event("payment_intent.succeeded", {**pi, "status": "succeeded"}))
        assert ok.status_code == 200
    assert balance(stripe_client, auth) == "1050.000000"
    with database.session() as s:
        payment = s.get(Payment, created["id"])
        assert payment.status == "succeeded" and payment.credited_at is not None


def test_forged_stale_and_unsigned_webhooks_are_rejected(stripe_client, database):
    evt = event(
        "payment_intent.succeeded", {"id": "pi_forged", "status": "succeeded", "amount": 100, "currency": "usd"}
    )
    forged = post_event(stripe_client, evt, secret="whsec_attacker")
    assert forged.status_code == 400 and forged.json()["error"]["code"] == "invalid_signature"
    stale = post_event(stripe_client, evt, timestamp=int(time.time()) - 3600)
    assert stale.status_code == 400
    unsigned = stripe_client.post("/api/v1/billing/webhooks/stripe", content=json.dumps(evt))
    assert unsigned.status_code == 400
    # A valid signature over a different body (tampered payload) fails too.
    payload, headers = signed(evt)
    tampered = stripe_client.post(
        "/api/v1/billing/webhooks/stripe", content=payload.replace('"amount": 100', '"amount": 999999'), headers=headers
    )
    assert tampered.status_code == 400
    with database.session() as s:
        assert s.get(StripeEvent, evt["id"]) is None  # nothing was recorded


def test_unknown_event_types_are_acknowledged_and_ignored(stripe_client, database):
    evt = event("charge.dispute.created", {"id": "dp_1"})
    response = post_event(stripe_client, evt)
    assert response.status_code == 200 and response.json()["outcome"] == "ignored"
    assert post_event(stripe_client, evt).json()["outcome"] == "duplicate"


def test_subscription_lifecycle_and_reordered_events(stripe_client, database):
    auth = signup(stripe_client)
    created = stripe_client.post(
        "/api/v1/billing/subscription", json={"tier": "pro", "payment_method": "pm_card_visa"}, headers=auth
    )
    assert created.status_code == 201, created.text
    sub = created.json()
    assert sub["status"] == "active" and sub["tier"] == "pro"
    # Pro includes 10,000 credits a month on top of the 500 signup grant.
    assert balance(stripe_client, auth) == "10500.000000"
    duplicate = stripe_client.post("/api/v1/billing/subscription", json={"tier": "pro"}, headers=auth)
    assert duplicate.status_code == 409

    with database.session() as s:
        account_id = s.query(BillingAccount).filter_by(subscription_id=sub["subscription_id"]).one().account_id
        customer = s.get(BillingAccount, account_id).stripe_customer_id
    base = {
        "id": sub["subscription_id"],
        "object": "subscription",
        "customer": customer,
        "metadata": {"airies_tier": "pro"},
        "cancel_at_period_end": False,
        "current_period_end": int(time.time()) + 86400 * 30,
    }
    now = int(time.time())
    newer = post_event(
        stripe_client, event("customer.subscription.updated", {**base, "status": "past_due"}, created=now + 10)
    )
    assert newer.status_code == 200
    older = post_event(
        stripe_client, event("customer.subscription.updated", {**base, "status": "active"}, created=now + 5)
    )
    assert older.json()["applied"] is False  # reordered: older than what is applied
    view = stripe_client.get("/api/v1/billing/subscription", headers=auth).json()
    assert view["status"] == "past_due"

    cancelled = stripe_client.delete("/api/v1/billing/subscription", headers=auth)
    assert cancelled.status_code == 200 and cancelled.json()["cancel_at_period_end"] is True
    # Still live until its period end: a second subscription now would charge twice.
    assert (
        stripe_client.post("/api/v1/billing/subscription", json={"tier": "enterprise"}, headers=auth).status_code == 409
    )
    deleted = post_event(
        stripe_client, event("customer.subscription.deleted", {**base, "status": "canceled"}, created=now + 20)
    )
    assert deleted.json()["applied"] is True
    view = stripe_client.get("/api/v1/billing/subscription", headers=auth).json()
    assert view["status"] == "canceled" and view["tier"] == "pay_as_you_go"
    again = stripe_client.post(
        "/api/v1/billing/subscription", json={"tier": "pro", "payment_method": "pm_card_visa"}, headers=auth
    )
    assert again.status_code == 201 and again.json()["subscription_id"] != sub["subscription_id"]
    assert balance(stripe_client, auth) == "10500.000000"  # the month's included credits were granted once


def test_routes_answer_501_without_stripe(client, auth):
    response = client.post("/api/v1/billing/top-ups", json={"amount_usd": "10.00"}, headers=auth)
    assert response.status_code == 501
    assert client.post("/api/v1/billing/webhooks/stripe", content=b"{}").status_code == 501


def test_invoice_webhooks_update_our_invoice_and_a_late_failure_never_undoes_a_payment(stripe_client, database):
    from airies.db.models.billing import Invoice

    auth = signup(stripe_client)
    account_id = stripe_client.get("/api/v1/billing/balance", headers=auth).json()["account_id"]
    with database.session() as s:
        invoice = Invoice(
            id="inv_webhook_test_" + uuid.uuid4().hex[:8],
            account_id=account_id,
            period="2026-10",
            period_start=datetime(2026, 10, 1, tzinfo=UTC),
            period_end=datetime(2026, 11, 1, tzinfo=UTC),
            status="open",
            currency="usd",
            amount_cents=192,
            total_credits_micros=0,
            billable_micros=0,
            lines=[],
            stripe_invoice_id="in_webhook_" + uuid.uuid4().hex[:8],
        )
        s.add(invoice)
    obj = {"id": invoice.stripe_invoice_id, "object": "invoice", "customer": "cus_x", "metadata": {}}
    now = int(time.time())
    assert post_event(stripe_client, event("invoice.paid", obj, created=now)).json()["applied"] is True
    late = post_event(stripe_client, event("invoice.payment_failed", obj, created=now - 60))
    assert late.status_code == 200
    shown = stripe_client.get(f"/api/v1/billing/invoices/{invoice.id}", headers=auth).json()
    assert shown["status"] == "paid"
    # A subscription's own invoice (not one of ours) is acknowledged without effect.
    other = post_event(stripe_client, event("invoice.paid", {"id": "in_subscription", "customer": "cus_unknown"}))
    assert other.status_code == 200 and other.json()["applied"] is False


def test_top_up_retried_after_a_lost_response_reuses_the_same_payment_intent(database):
    """Our transaction rolls back after Stripe created the PaymentIntent (e.g. the response was lost): the client's
    retry with the same key must reach Stripe with the same idempotency key and parameters -> the same intent.
    localstripe ignores idempotency keys, so this runs against the wire-level double, which honours them."""
    from decimal import Decimal

    from airies.db.ids import new_id
    from airies.db.models import Account
    from airies.providers.payments.stripe import StripePaymentProvider
    from airies.services.payments import PaymentService
    from tests.doubles.stripe_server import StripeInvoiceDouble

    double = StripeInvoiceDouble().start()
    try:
        provider = StripePaymentProvider(double.api_key, api_base=double.url, max_network_retries=0)
        account_id = new_id("acc")
        with database.session() as s:
            s.add(Account(id=account_id, name="R", email=f"{account_id}@example.com", plan="free", status="active"))

        class LostResponse(Exception):
            pass

        with pytest.raises(LostResponse), database.session() as s:
            first = PaymentService(s, provider).create_payment_intent(
                account_id, Decimal("12.00"), idempotency_key="k1"
            )
            raise LostResponse
        with database.session() as s:
            again = PaymentService(s, provider).create_payment_intent(
                account_id, Decimal("12.00"), idempotency_key="k1"
            )
        assert again.stripe_payment_intent_id == first.stripe_payment_intent_id
        assert len(double.payment_intents) == 1 and len(double.customers) == 1
    finally:
        double.stop()
