"""Payments: Stripe customers, credit top-ups (PaymentIntents), plan subscriptions and the webhook.

Exactly-once rules:
* a top-up is credited once, keyed by its PaymentIntent id in the ledger (``top_up:<pi>``), whether the
  credit comes from the synchronous confirm or from ``payment_intent.succeeded`` (or both, in any order);
* each Stripe event id is recorded in ``stripe_events`` in the same transaction as its effect: a replay
  finds the row and does nothing; a failed effect rolls the row back so Stripe's retry processes it;
* subscription events carry Stripe's ``created``; an older event than the last one applied is skipped,
  so reordered deliveries never roll a subscription back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from airies.db.ids import new_id
from airies.db.models import Account, utcnow
from airies.db.models.billing import BillingAccount, Invoice, Payment, StripeEvent
from airies.errors import BadRequestError, ConflictError, NotAvailableError, NotFoundError
from airies.providers.payments.base import (
    PaymentIntentInfo,
    PaymentProvider,
    SubscriptionInfo,
    WebhookEvent,
    WebhookSignatureError,
)
from airies.schemas.usage import TopUpOut, micros_to_credits
from airies.services.pricing import Pricing, get_pricing
from airies.services.usage import UsageService

ACTIVE_SUBSCRIPTION = ("active", "trialing")
LIVE_SUBSCRIPTION = ("active", "trialing", "past_due", "incomplete", "unpaid")
HANDLED_EVENTS = (
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "invoice.paid",
    "invoice.payment_failed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
)


class WebhookRejected(Exception):
    """Bad or stale signature: answer 400 so nothing is processed."""


class PaymentService:
    def __init__(
        self,
        session: Session,
        provider: PaymentProvider | None,
        *,
        usage: UsageService | None = None,
        pricing: Pricing | None = None,
        plans: dict[str, str | None] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.session = session
        self.provider = provider
        self.pricing = pricing or get_pricing()
        self.usage = usage or UsageService(pricing=self.pricing, clock=clock)
        self.plans = plans or {}
        self.clock = clock or utcnow

    def _require_provider(self) -> PaymentProvider:
        if self.provider is None:
            raise NotAvailableError(
                "payments are not configured on this deployment: set AIRIES_STRIPE_SECRET_KEY",
                code="stripe_not_configured",
            )
        return self.provider

    def _billing(self, account_id: str) -> BillingAccount:
        return self.usage.ensure_account(account_id, session=self.session)

    # -- customers --------------------------------------------------------------------------------
    def ensure_customer(self, account_id: str) -> str:
        provider = self._require_provider()
        row = self._billing(account_id)
        if row.stripe_customer_id:
            return row.stripe_customer_id
        account = self.session.get(Account, account_id)
        if account is None:
            raise NotFoundError("account", account_id)
        customer_id = provider.create_customer(
            account_id=account_id,
            email=account.email,
            name=account.name,
            idempotency_key=f"airies-customer:{account_id}",
        )
        self.session.execute(
            update(BillingAccount)
            .where(BillingAccount.account_id == account_id)
            .values(stripe_customer_id=customer_id, updated_at=self.clock())
        )
        return customer_id

    # -- top-ups ----------------------------------------------------------------------------------
    def create_payment_intent(
        self,
        account_id: str,
        amount_usd: Decimal,
        *,
        idempotency_key: str | None = None,
        payment_method: str | None = None,
        confirm: bool = False,
    ) -> TopUpOut:
        """A credit top-up. The client's ``idempotency_key`` makes a resubmitted request return the same
        PaymentIntent; credits are granted only once the PaymentIntent has succeeded."""
        provider = self._require_provider()
        amount_cents = int((amount_usd * 100).to_integral_value())
        if Decimal(amount_cents) != amount_usd * 100:
            raise BadRequestError("amount_usd has at most 2 decimal places")
        scoped_key = f"{account_id}:{idempotency_key or new_id('tpk')}"
        existing = self.session.scalar(select(Payment).where(Payment.idempotency_key == scoped_key))
        if existing is not None:
            if existing.amount_cents != amount_cents:
                raise ConflictError("idempotency key reused with a different amount", code="idempotency_mismatch")
            if existing.stripe_payment_intent_id:
                intent = provider.retrieve_payment_intent(existing.stripe_payment_intent_id)
                return self._topup_out(existing, intent)
            payment = existing
        else:
            payment = Payment(
                # Derived from the client's key: a retry after a lost response (our transaction rolled back, the
                # PaymentIntent possibly created) sends Stripe the same idempotency key *and* the same parameters.
                id="pay_" + hashlib.sha256(scoped_key.encode()).hexdigest()[:26],
                account_id=account_id,
                idempotency_key=scoped_key,
                amount_cents=amount_cents,
                currency=self.pricing.currency,
                credits_micros=self.pricing.usd_to_micros(Decimal(amount_cents) / 100),
                status="creating",
            )
            self.session.add(payment)
            try:
                self.session.flush()
            except IntegrityError as exc:  # the same key submitted twice at once
                raise ConflictError("a top-up with this idempotency key is in progress", code="in_progress") from exc
        intent = provider.create_payment_intent(
            customer_id=self.ensure_customer(account_id),
            amount_cents=amount_cents,
            currency=self.pricing.currency,
            metadata={"airies_account_id": account_id, "airies_payment_id": payment.id, "kind": "top_up"},
            idempotency_key=f"airies-topup:{payment.id}",  # payment.id is a function of the client's key
            payment_method=payment_method,
            confirm=confirm,
        )
        payment.stripe_payment_intent_id = intent.id
        payment.status = intent.status
        self.session.flush()
        if intent.status == "succeeded":
            self.process_payment(intent)
        return self._topup_out(payment, intent)

    def _topup_out(self, payment: Payment, intent: PaymentIntentInfo) -> TopUpOut:
        return TopUpOut(
            id=payment.id,
            status=intent.status,
            amount_usd=f"{Decimal(payment.amount_cents) / 100:.2f}",
            credits=micros_to_credits(payment.credits_micros),
            stripe_payment_intent_id=intent.id,
            client_secret=intent.client_secret,
        )

    def process_payment(self, intent: PaymentIntentInfo) -> bool:
        """Apply a PaymentIntent's state; credits are granted exactly once. True when credits were granted now."""
        payment = self.session.scalar(select(Payment).where(Payment.stripe_payment_intent_id == intent.id))
        if payment is None:
            payment_id = intent.metadata.get("airies_payment_id")
            payment = self.session.get(Payment, payment_id) if payment_id else None
        if payment is None:
            return False  # not one of our top-ups (e.g. a subscription invoice's PaymentIntent)
        if payment.amount_cents != intent.amount_cents:
            raise ConflictError("PaymentIntent amount differs from the recorded top-up", code="amount_mismatch")
        if payment.stripe_payment_intent_id is None:
            payment.stripe_payment_intent_id = intent.id
        payment.status = intent.status
        if intent.status != "succeeded":
            self.session.flush()
            return False
        granted = self.usage.grant_credits(
            payment.account_id,
            payment.credits_micros,
            entry_type="top_up",
            idempotency_key=f"top_up:{intent.id}",
            reference_type="payment",
            reference_id=payment.id,
            description=f"top-up ${Decimal(payment.amount_cents) / 100:.2f}",
            meta={"stripe_payment_intent_id": intent.id},
            session=self.session,
        )
        if payment.credited_at is None:
            payment.credited_at = self.clock()
        self.session.flush()
        return granted

    # -- subscriptions ------------------------------------------------------------------------------
    def create_subscription(self, account_id: str, tier: str, *, payment_method: str | None = None) -> dict[str, Any]:
        provider = self._require_provider()
        plan_id = self.plans.get(tier)
        if not plan_id:
            raise NotAvailableError(f"no Stripe plan is configured for the {tier!r} tier", code="plan_not_configured")
        row = self._billing(account_id)
        # Also while a cancelled one runs to its period end: two live subscriptions would charge twice.
        if row.subscription_id and row.subscription_status in LIVE_SUBSCRIPTION:
            raise ConflictError(
                "the account already has a live subscription (a cancelled one stays live until its period end)",
                code="subscription_exists",
                details={"subscription_id": row.subscription_id, "tier": row.subscription_tier},
            )
        customer_id = self.ensure_customer(account_id)
        # Deterministic per state: a retried request reuses the key, a later re-subscription gets a new one.
        key = f"airies-subscription:{account_id}:{tier}:{row.subscription_id or 'first'}"
        info = provider.create_subscription(
            customer_id=customer_id,
            plan_id=plan_id,
            metadata={"airies_account_id": account_id, "airies_tier": tier},
            idempotency_key=key,
            payment_method=payment_method,
        )
        self._apply_subscription(account_id, info, tier=tier, event_created=None)
        return self.subscription_view(account_id)

    def cancel_subscription(self, account_id: str) -> dict[str, Any]:
        provider = self._require_provider()
        row = self._billing(account_id)
        if not row.subscription_id or row.subscription_status == "canceled":
            raise NotFoundError("subscription")
        info = provider.cancel_subscription_at_period_end(
            row.subscription_id, idempotency_key=f"airies-cancel:{row.subscription_id}"
        )
        self._apply_subscription(account_id, info, tier=row.subscription_tier, event_created=None)
        return self.subscription_view(account_id)

    def subscription_view(self, account_id: str) -> dict[str, Any]:
        row = self.usage._load(self.session, account_id)
        return {
            "tier": row.tier,
            "subscription_id": row.subscription_id,
            "status": row.subscription_status,
            "subscription_tier": row.subscription_tier,
            "current_period_end": row.subscription_period_end,
            "cancel_at_period_end": row.cancel_at_period_end,
        }

    def _apply_subscription(
        self, account_id: str, info: SubscriptionInfo, *, tier: str | None, event_created: int | None
    ) -> bool:
        row = self._billing(account_id)
        if row.subscription_id and row.subscription_id != info.id and info.status == "canceled":
            return False  # a stale subscription ending does not touch the current one
        if (
            event_created is not None
            and row.subscription_event_created
            and event_created < row.subscription_event_created
        ):
            return False  # reordered: an older state than the one applied
        tier = tier or info.metadata.get("airies_tier") or row.subscription_tier
        values: dict[str, Any] = {
            "subscription_id": info.id,
            "subscription_status": info.status,
            "subscription_tier": tier,
            "subscription_period_end": info.current_period_end,
            "cancel_at_period_end": info.cancel_at_period_end,
            "updated_at": self.clock(),
        }
        if event_created is not None:
            values["subscription_event_created"] = event_created
        self.session.execute(update(BillingAccount).where(BillingAccount.account_id == account_id).values(**values))
        if info.status in ACTIVE_SUBSCRIPTION and tier:
            self.usage.set_tier(account_id, tier, session=self.session)
        elif info.status == "canceled" and row.tier in ("pro", "enterprise"):
            self.usage.set_tier(account_id, "pay_as_you_go", session=self.session)
        return True

    # -- webhook ------------------------------------------------------------------------------------
    def handle_webhook(self, payload: bytes, signature_header: str | None) -> dict[str, Any]:
        provider = self._require_provider()
        try:
            event = provider.parse_webhook(payload, signature_header)
        except WebhookSignatureError as exc:
            raise WebhookRejected(str(exc)) from exc
        return self.process_event(event)

    def process_event(self, event: WebhookEvent) -> dict[str, Any]:
        handled = event.type in HANDLED_EVENTS
        insert = self.usage._insert(self.session, StripeEvent)
        gate = self.session.execute(
            insert.values(
                id=event.id,
                type=event.type,
                outcome="processed" if handled else "ignored",
                stripe_created=event.created,
                received_at=self.clock(),
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(StripeEvent.id)
        ).scalar_one_or_none()
        if gate is None:
            return {"id": event.id, "type": event.type, "outcome": "duplicate"}
        if not handled:
            return {"id": event.id, "type": event.type, "outcome": "ignored"}
        obj = event.data_object
        account_id: str | None = None
        result: Any = None
        if event.type.startswith("payment_intent."):
            intent = PaymentIntentInfo(
                id=obj["id"],
                status=obj.get("status") or "",
                amount_cents=int(obj.get("amount") or 0),
                currency=obj.get("currency") or "",
                metadata=dict(obj.get("metadata") or {}),
            )
            if event.type == "payment_intent.payment_failed":
                intent = PaymentIntentInfo(**{**intent.__dict__, "status": "requires_payment_method"})
            result = self.process_payment(intent)
            account_id = intent.metadata.get("airies_account_id")
        elif event.type.startswith("invoice."):
            account_id, result = self._on_invoice(event.type, obj)
        else:
            account_id, result = self._on_subscription(event, obj)
        if account_id:
            self.session.execute(update(StripeEvent).where(StripeEvent.id == event.id).values(account_id=account_id))
        return {"id": event.id, "type": event.type, "outcome": "processed", "applied": bool(result)}

    def _account_for_customer(self, customer_id: str | None, metadata: dict[str, Any]) -> str | None:
        if customer_id:
            found = self.session.scalar(
                select(BillingAccount.account_id).where(BillingAccount.stripe_customer_id == customer_id)
            )
            if found:
                return found
        candidate = metadata.get("airies_account_id")
        if candidate and self.session.get(Account, candidate) is not None:
            return candidate
        return None

    def _on_invoice(self, event_type: str, obj: dict[str, Any]) -> tuple[str | None, bool]:
        invoice = self.session.scalar(select(Invoice).where(Invoice.stripe_invoice_id == obj.get("id")))
        if invoice is None and (obj.get("metadata") or {}).get("airies_invoice_id"):
            invoice = self.session.get(Invoice, obj["metadata"]["airies_invoice_id"])
        if invoice is None:
            # A subscription invoice: its state reaches us through customer.subscription.updated.
            return self._account_for_customer(obj.get("customer"), obj.get("metadata") or {}), False
        now = self.clock()
        if event_type == "invoice.paid":
            invoice.status = "paid"
            invoice.paid_at = invoice.paid_at or now
        elif invoice.status != "paid":  # a late payment_failed never undoes a payment
            invoice.status = "payment_failed"
        invoice.updated_at = now
        self.session.flush()
        return invoice.account_id, True

    def _on_subscription(self, event: WebhookEvent, obj: dict[str, Any]) -> tuple[str | None, bool]:
        metadata = dict(obj.get("metadata") or {})
        account_id = self._account_for_customer(obj.get("customer"), metadata)
        if account_id is None:
            return None, False
        end = obj.get("current_period_end")
        if end is None:
            items = (obj.get("items") or {}).get("data") or []
            end = items[0].get("current_period_end") if items else None
        plan = obj.get("plan") or {}
        status = "canceled" if event.type == "customer.subscription.deleted" else obj.get("status", "")
        info = SubscriptionInfo(
            id=obj["id"],
            status=status,
            customer_id=obj.get("customer") or "",
            plan_id=plan.get("id") if isinstance(plan, dict) else None,
            current_period_end=datetime.fromtimestamp(int(end), UTC) if end else None,
            cancel_at_period_end=bool(obj.get("cancel_at_period_end")),
            metadata=metadata,
        )
        return account_id, self._apply_subscription(account_id, info, tier=None, event_created=event.created)


def plans_from_settings(settings: Any) -> dict[str, str | None]:
    return {
        "pro": settings.stripe_plan_pro,
        "enterprise": settings.stripe_plan_enterprise,
        "pay_as_you_go": settings.stripe_plan_pay_as_you_go,
    }


def build_payment_service(
    settings: Any, session: Session, *, provider: PaymentProvider | None = None
) -> PaymentService:
    """The PaymentService of a request/invocation; ``provider`` defaults to Stripe when configured."""
    from airies.providers.payments import build_payment_provider

    return PaymentService(
        session,
        provider if provider is not None else build_payment_provider(settings),
        plans=plans_from_settings(settings),
    )
