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
from airies.billing.models import BillingAccount, Payment, StripeEvent
from airies.core.config import Settings
from tests.conftest import signup
from tests.doubles.stripe_server import LocalStripe, StripeInvoiceDouble

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


def subscription_invoice(
    invoice_id: str, customer: str, subscription_id: str, *, reason: str = "subscription_create", amount: int = 9900
) -> dict[str, Any]:
    return {
        "id": invoice_id,
        "object": "invoice",
        "customer": customer,
        "subscription": subscription_id,
        "billing_reason": reason,
        "status": "paid",
        "amount_paid": amount,
        "metadata": {},
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
    evt = event("customer.created", {"id": "cus_1"})
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
    # Pro's 10,000 included credits come with the paid subscription invoice, not with the create call.
    assert balance(stripe_client, auth) == "500.000000"
    duplicate = stripe_client.post("/api/v1/billing/subscription", json={"tier": "pro"}, headers=auth)
    assert duplicate.status_code == 409

    with database.session() as s:
        account_id = s.query(BillingAccount).filter_by(subscription_id=sub["subscription_id"]).one().account_id
        customer = s.get(BillingAccount, account_id).stripe_customer_id
    # invoice.paid of the first invoice (the webhook reads the subscription back from localstripe: active).
    paid = event("invoice.paid", subscription_invoice("in_first", customer, sub["subscription_id"]))
    assert post_event(stripe_client, paid).json()["applied"] is True
    assert post_event(stripe_client, paid).json()["outcome"] == "duplicate"
    assert balance(stripe_client, auth) == "10500.000000"
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
    assert view["status"] == "past_due" and view["tier"] == "pay_as_you_go"  # not paying: no paid tier

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
    from airies.billing.models import Invoice

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

    from airies.accounts.models import Account
    from airies.billing.payments import PaymentService
    from airies.billing.vendors.stripe import StripePaymentProvider
    from airies.core.ids import new_id
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


# --- included credits, retries of declined subscriptions, refunds and disputes --------------------------------


@pytest.fixture
def stripe_double() -> Iterator[StripeInvoiceDouble]:
    double = StripeInvoiceDouble(API_KEY).start()
    yield double
    double.stop()


@pytest.fixture
def double_client(stripe_double: StripeInvoiceDouble, database, tmp_path) -> Iterator[TestClient]:
    """The API against the wire-level double: it honours idempotency keys (localstripe ignores them) and lets a
    test move a subscription's status at "Stripe" (what Stripe's billing does on a failed or recovered renewal)."""
    settings = Settings(
        stage="local",
        data_dir=tmp_path,
        stripe_secret_key=API_KEY,
        stripe_api_base=stripe_double.url,
        stripe_webhook_secret=WEBHOOK_SECRET,
        stripe_max_network_retries=0,
    )
    with TestClient(create_app(settings, database)) as client:
        yield client


def billing_row(database, subscription_id: str) -> BillingAccount:
    with database.session() as s:
        row = s.query(BillingAccount).filter_by(subscription_id=subscription_id).one()
        s.expunge(row)
        return row


def grants(client: TestClient, auth: dict) -> list[str]:
    ledger = client.get("/api/v1/billing/ledger", headers=auth).json()["data"]
    return sorted(e["reference_id"] for e in ledger if e["reference_type"] == "stripe_invoice")


def test_paid_tier_credits_come_with_each_paid_invoice_once_and_only_while_active(double_client, stripe_double):
    client, auth = double_client, signup(double_client)
    sub = client.post(
        "/api/v1/billing/subscription", json={"tier": "pro", "payment_method": "pm_card_visa"}, headers=auth
    )
    assert sub.status_code == 201 and sub.json()["status"] == "active", sub.text
    sub_id = sub.json()["subscription_id"]
    customer = billing_row(double_client.app.state.database, sub_id).stripe_customer_id
    assert balance(client, auth) == "500.000000"  # subscribing alone grants nothing

    first = event("invoice.paid", subscription_invoice("in_first", customer, sub_id))
    assert post_event(client, first).json()["applied"] is True
    assert post_event(client, first).json()["outcome"] == "duplicate"
    # The same invoice in a distinct event (Stripe resends) and a proration invoice grant nothing.
    assert (
        post_event(client, event("invoice.paid", subscription_invoice("in_first", customer, sub_id))).json()["applied"]
        is False
    )
    proration = subscription_invoice("in_proration", customer, sub_id, reason="subscription_update")
    assert post_event(client, event("invoice.paid", proration)).json()["applied"] is False
    assert balance(client, auth) == "10500.000000"

    # The renewal fails: past_due falls back to pay-as-you-go (no included credits, no overdraft) ...
    stripe_double.set_subscription_status(sub_id, "past_due")
    base = {"id": sub_id, "object": "subscription", "customer": customer, "metadata": {"airies_tier": "pro"}}
    updated = event("customer.subscription.updated", {**base, "status": "past_due"}, created=int(time.time()) + 5)
    assert post_event(client, updated).status_code == 200
    shown = client.get("/api/v1/billing/balance", headers=auth).json()
    assert shown["tier"] == "pay_as_you_go" and shown["overdraft"] == "0.000000"
    # ... and a paid invoice while the subscription is still past_due at Stripe grants nothing.
    cycle = subscription_invoice("in_cycle", customer, sub_id, reason="subscription_cycle")
    assert post_event(client, event("invoice.paid", cycle)).json()["applied"] is False
    assert balance(client, auth) == "10500.000000"

    # Paid: active again. invoice.paid arrives before customer.subscription.updated; the subscription is read back.
    stripe_double.set_subscription_status(sub_id, "active")
    assert post_event(client, event("invoice.paid", cycle)).json()["applied"] is True
    assert post_event(client, event("invoice.paid", cycle)).json()["applied"] is False
    shown = client.get("/api/v1/billing/balance", headers=auth).json()
    assert shown["tier"] == "pro" and shown["balance"] == "20500.000000"
    assert grants(client, auth) == ["in_cycle", "in_first"]  # one grant per paid invoice


def test_a_declined_first_payment_can_be_retried_with_another_card(stripe_client):
    """localstripe: the card attaches but its charge fails, so the subscription is ``incomplete``; a retry with
    another card replaces it (it used to answer 409)."""
    auth = signup(stripe_client)
    declined = stripe_client.post(
        "/api/v1/billing/subscription",
        json={"tier": "pro", "payment_method": "pm_card_chargeCustomerFail"},
        headers=auth,
    )
    assert declined.status_code == 201, declined.text
    assert declined.json()["status"] == "incomplete" and declined.json()["tier"] == "free"
    retried = stripe_client.post(
        "/api/v1/billing/subscription", json={"tier": "pro", "payment_method": "pm_card_visa"}, headers=auth
    )
    assert retried.status_code == 201, retried.text
    assert retried.json()["status"] == "active" and retried.json()["tier"] == "pro"
    assert retried.json()["subscription_id"] != declined.json()["subscription_id"]
    again = stripe_client.post("/api/v1/billing/subscription", json={"tier": "pro"}, headers=auth)
    assert again.status_code == 409  # an active one is live


def test_a_card_declined_at_attach_can_be_retried_with_another_card(double_client, stripe_double, database):
    """The double keeps a declined attach under its idempotency key, as Stripe does: the retry with another card
    must not reuse that key (it would be a 400 idempotency_error)."""
    auth = signup(double_client)
    declined = double_client.post(
        "/api/v1/billing/subscription", json={"tier": "pro", "payment_method": "pm_card_chargeDeclined"}, headers=auth
    )
    assert declined.status_code >= 400 and "declined" in declined.text
    incomplete = double_client.post(
        "/api/v1/billing/subscription",
        json={"tier": "pro", "payment_method": "pm_card_chargeCustomerFail"},
        headers=auth,
    )
    assert incomplete.status_code == 201 and incomplete.json()["status"] == "incomplete", incomplete.text
    retried = double_client.post(
        "/api/v1/billing/subscription", json={"tier": "pro", "payment_method": "pm_card_visa"}, headers=auth
    )
    assert retried.status_code == 201 and retried.json()["status"] == "active", retried.text
    attaches = [r for r in stripe_double.requests if r[0] == "POST" and r[1].endswith("/attach")]
    assert len(attaches) == 3 and len({r[3] for r in attaches}) == 3
    # The replaced incomplete subscription was cancelled at Stripe: its first payment can no longer be completed.
    assert stripe_double.subscriptions[incomplete.json()["subscription_id"]]["status"] == "incomplete_expired"
    # The replaced incomplete subscription's later events do not touch the account.
    customer = billing_row(database, retried.json()["subscription_id"]).stripe_customer_id
    stale = {"id": incomplete.json()["subscription_id"], "customer": customer, "metadata": {"airies_tier": "pro"}}
    expired = event("customer.subscription.updated", {**stale, "status": "incomplete_expired"})
    assert post_event(double_client, expired).json()["applied"] is False
    assert double_client.get("/api/v1/billing/subscription", headers=auth).json()["status"] == "active"


def top_up(client: TestClient, auth: dict, usd: str, key: str) -> dict:
    body = {"amount_usd": usd, "payment_method": "pm_card_visa", "confirm": True, "idempotency_key": key}
    created = client.post("/api/v1/billing/top-ups", json=body, headers=auth)
    assert created.status_code == 201 and created.json()["status"] == "succeeded", created.text
    return created.json()


def post_twice(client: TestClient, evt: dict) -> dict:
    """Deliver a signed event, then replay it: the replay must be a no-op."""
    first, replay = post_event(client, evt), post_event(client, evt)
    assert first.status_code == replay.status_code == 200, first.text
    assert replay.json()["outcome"] == "duplicate"
    return first.json()


def charge(pi: str, amount: int, refunded: int, refunds: list[tuple[str, int]] | None) -> dict:
    obj = {"id": f"ch_{pi}", "object": "charge", "payment_intent": pi, "amount": amount, "amount_refunded": refunded}
    if refunds is not None:
        obj["refunds"] = {
            "object": "list",
            "data": [
                {"id": rid, "object": "refund", "amount": cents, "status": "succeeded", "created": 1_700_000_000 + i}
                for i, (rid, cents) in enumerate(refunds)
            ],
        }
    return obj


def ledger_matches_balance(client: TestClient, auth: dict, database) -> None:
    from airies.billing.usage import UsageService

    shown = client.get("/api/v1/billing/balance", headers=auth).json()
    assert UsageService(database).ledger_sum(shown["account_id"]) == shown["balance_micros"]


def test_partial_then_full_refund_takes_back_exactly_the_refunded_credits_once(stripe_client, database):
    auth = signup(stripe_client)
    pi = top_up(stripe_client, auth, "20.00", "refund-me")["stripe_payment_intent_id"]
    assert balance(stripe_client, auth) == "2500.000000"

    first = post_twice(stripe_client, event("charge.refunded", charge(pi, 2000, 500, [("re_a", 500)])))
    assert first["applied"] is True
    assert balance(stripe_client, auth) == "2000.000000"  # $5 of $20 -> 500 of 2000 credits
    # The second refund's event lists both refunds: only the new one is applied.
    second = post_twice(
        stripe_client, event("charge.refunded", charge(pi, 2000, 2000, [("re_a", 500), ("re_b", 1500)]))
    )
    assert second["applied"] is True
    # A distinct event repeating the same refunds changes nothing.
    repeat = post_event(
        stripe_client, event("charge.refunded", charge(pi, 2000, 2000, [("re_a", 500), ("re_b", 1500)]))
    )
    assert repeat.json()["applied"] is False
    assert balance(stripe_client, auth) == "500.000000"
    ledger = stripe_client.get("/api/v1/billing/ledger", headers=auth).json()["data"]
    refunds = sorted((e["reference_id"], e["amount"]) for e in ledger if e["entry_type"] == "refund")
    assert refunds == [("re_a", "-500.000000"), ("re_b", "-1500.000000")]
    ledger_matches_balance(stripe_client, auth, database)
    # A refund of a charge that is not one of our top-ups is acknowledged without effect.
    other = post_event(stripe_client, event("charge.refunded", charge("pi_unknown", 100, 100, None)))
    assert other.status_code == 200 and other.json()["applied"] is False


def test_refund_of_spent_credits_never_passes_the_floor_and_is_owed_until_the_next_top_up(stripe_client, database):
    from airies.billing.schemas import MICROS_PER_CREDIT
    from airies.billing.usage import UsageService

    auth = signup(stripe_client)
    account_id = stripe_client.get("/api/v1/billing/balance", headers=auth).json()["account_id"]
    pi = top_up(stripe_client, auth, "10.00", "spent")["stripe_payment_intent_id"]
    UsageService(database).deduct_credits(account_id, 1400 * MICROS_PER_CREDIT, idempotency_key="spend")
    assert balance(stripe_client, auth) == "100.000000"

    # No refunds list in the payload (newer API versions): the cumulative amount_refunded keys it.
    full = post_twice(stripe_client, event("charge.refunded", charge(pi, 1000, 1000, None)))
    assert full["applied"] is True
    shown = stripe_client.get("/api/v1/billing/balance", headers=auth).json()
    # Free has no overdraft: 100 taken from the balance, 900 owed (outside the balance), nothing below zero.
    assert (shown["balance"], shown["owed"], shown["available"]) == ("0.000000", "900.000000", "-900.000000")
    ledger_matches_balance(stripe_client, auth, database)
    limits = UsageService(database).check_usage_limits(account_id, starting_conversation=False)
    assert not limits.allowed and limits.reason == "insufficient_credits"

    top_up(stripe_client, auth, "20.00", "repay")  # 2000 credits, 900 of them settle the debt
    shown = stripe_client.get("/api/v1/billing/balance", headers=auth).json()
    assert (shown["balance"], shown["owed"]) == ("1100.000000", "0.000000")
    ledger_matches_balance(stripe_client, auth, database)


def test_dispute_takes_the_credits_back_at_once_and_a_won_dispute_gives_them_back(stripe_client, database):
    auth = signup(stripe_client)
    pi = top_up(stripe_client, auth, "10.00", "dispute-me")["stripe_payment_intent_id"]
    assert balance(stripe_client, auth) == "1500.000000"
    dispute = {"id": "dp_1", "object": "dispute", "charge": f"ch_{pi}", "payment_intent": pi, "amount": 1000}
    opened = post_twice(stripe_client, event("charge.dispute.created", {**dispute, "status": "needs_response"}))
    assert opened["applied"] is True
    assert balance(stripe_client, auth) == "500.000000"
    # An inquiry moves no money: nothing changes.
    inquiry = {**dispute, "id": "dp_inquiry", "status": "warning_needs_response"}
    assert post_twice(stripe_client, event("charge.dispute.created", inquiry))["applied"] is False
    won = post_twice(stripe_client, event("charge.dispute.closed", {**dispute, "status": "won"}))
    assert won["applied"] is True
    assert (
        post_event(stripe_client, event("charge.dispute.closed", {**dispute, "status": "won"})).json()["applied"]
        is False
    )
    assert balance(stripe_client, auth) == "1500.000000"
    ledger_matches_balance(stripe_client, auth, database)
