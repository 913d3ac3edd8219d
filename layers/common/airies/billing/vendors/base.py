"""The payments interface: everything the billing services need from a payment processor.

Every method that creates something takes an ``idempotency_key``: a retried call (Lambda retry,
Step Functions retry, a client resubmitting) returns the first result instead of creating twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class PaymentIntentInfo:
    id: str
    status: str  # requires_payment_method | requires_confirmation | requires_action | processing | succeeded | canceled
    amount_cents: int
    currency: str
    client_secret: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SubscriptionInfo:
    id: str
    status: str  # incomplete | trialing | active | past_due | canceled | unpaid ...
    customer_id: str
    plan_id: str | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InvoiceLineSpec:
    amount_cents: int
    description: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class InvoiceInfo:
    id: str
    status: str  # draft | open | paid | uncollectible | void
    amount_due_cents: int
    hosted_invoice_url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WebhookEvent:
    id: str
    type: str
    created: int
    data_object: dict[str, Any]
    livemode: bool = False


class PaymentProvider(Protocol):
    name: str

    def create_customer(self, *, account_id: str, email: str, name: str, idempotency_key: str) -> str: ...

    def create_payment_intent(
        self,
        *,
        customer_id: str,
        amount_cents: int,
        currency: str,
        metadata: dict[str, str],
        idempotency_key: str,
        payment_method: str | None = None,
        confirm: bool = False,
    ) -> PaymentIntentInfo: ...

    def retrieve_payment_intent(self, payment_intent_id: str) -> PaymentIntentInfo: ...

    def create_subscription(
        self,
        *,
        customer_id: str,
        plan_id: str,
        metadata: dict[str, str],
        idempotency_key: str,
        payment_method: str | None = None,
    ) -> SubscriptionInfo: ...

    def cancel_subscription_at_period_end(self, subscription_id: str, *, idempotency_key: str) -> SubscriptionInfo: ...

    def cancel_subscription_now(self, subscription_id: str) -> SubscriptionInfo: ...

    def retrieve_subscription(self, subscription_id: str) -> SubscriptionInfo: ...

    def create_invoice(
        self,
        *,
        customer_id: str,
        currency: str,
        lines: list[InvoiceLineSpec],
        description: str,
        metadata: dict[str, str],
        idempotency_key: str,
        charge_automatically: bool = False,
    ) -> InvoiceInfo: ...

    def finalize_invoice(self, invoice_id: str, *, idempotency_key: str) -> InvoiceInfo: ...

    def retrieve_invoice(self, invoice_id: str) -> InvoiceInfo: ...

    def parse_webhook(self, payload: bytes, signature_header: str | None) -> WebhookEvent:
        """Verify the signature (and its age) and parse; raises ``WebhookSignatureError``."""
        ...


class WebhookSignatureError(Exception):
    """A webhook whose signature is missing, wrong, or too old."""
