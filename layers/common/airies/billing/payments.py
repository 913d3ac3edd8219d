"""Payments: Stripe customers, credit top-ups (PaymentIntents), plan subscriptions and the webhook.

Exactly-once rules:
* a top-up is credited once, keyed by its PaymentIntent id in the ledger (``top_up:<pi>``), whether the
  credit comes from the synchronous confirm or from ``payment_intent.succeeded`` (or both, in any order);
* each Stripe event id is recorded in ``stripe_events`` in the same transaction as its effect: a replay
  finds the row and does nothing; a failed effect rolls the row back so Stripe's retry processes it;
* subscription events carry Stripe's ``created``; an older event than the last one applied is skipped,
  so reordered deliveries never roll a subscription back.

Subscriptions and included credits:
* a paid tier's included monthly credits are granted when its subscription invoice is paid (``invoice.paid``
  with ``billing_reason`` subscription_create/subscription_cycle), once per Stripe invoice id (ledger key
  ``subscription_grant:<in_...>``), and only while that subscription is the account's current one and
  ``active`` at Stripe (the webhook reads the subscription back: ``invoice.paid`` and
  ``customer.subscription.updated`` arrive in any order);
* tier fallback: ``active``/``trialing`` -> the subscribed tier; ``past_due``, ``unpaid``, ``canceled`` and
  ``incomplete_expired`` -> ``pay_as_you_go`` (no included credits, no overdraft; usage beyond the balance is
  invoiced); paying the overdue invoice makes it ``active`` again and that invoice brings its grant;
* an ``incomplete`` subscription (first payment declined or awaiting authentication) is not live: the account
  may subscribe again (e.g. with another card); the replaced one expires at Stripe (``incomplete_expired``
  after 23 h) and its events no longer touch the account, unless it becomes active while the current one is not.

Refunds and disputes of top-ups (``charge.refunded``, ``charge.dispute.created|closed``):
* the credits taken back are exact and cumulative per top-up:
  ``clawed_back = round_half_up(credits * min(amount, refunded + disputed) / amount)``, each step a ledger entry
  keyed by the Stripe refund id (``refund:<re_...>``; without the refunds list, by the cumulative
  ``amount_refunded``) or dispute id (``dispute:<dp_...>``; a won dispute gives them back, ``dispute_won:<dp_...>``);
* a dispute is treated as a refund of the disputed amount when it is opened (not held until it closes);
* the balance never goes below the tier's overdraft floor: credits already spent become ``owed_micros`` (a debt
  outside the balance, shown as ``owed`` and subtracted from ``available``), repaid first by the next grant or
  top-up.
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

from airies.accounts.models import Account
from airies.billing.ledger import Ledger
from airies.billing.models import BillingAccount, Invoice, Payment, StripeEvent
from airies.billing.pricing import Pricing, get_pricing
from airies.billing.schemas import TopUpOut, micros_to_credits
from airies.billing.vendors import build_payment_provider
from airies.billing.vendors.base import (
    PaymentIntentInfo,
    PaymentProvider,
    SubscriptionInfo,
    WebhookEvent,
    WebhookSignatureError,
)
from airies.billing.vendors.stripe_events import HANDLED_EVENT_OBJECTS, InvalidStripeEvent
from airies.core.config import Settings
from airies.core.errors import BadRequestError, ConflictError, NotAvailableError, NotFoundError
from airies.core.ids import new_id
from airies.core.models import utcnow

ACTIVE_SUBSCRIPTION = ("active", "trialing")
# Live: may still charge the customer, so a second subscription would charge twice. ``incomplete`` is not: its
# first payment failed (or awaits authentication) and a retry replaces it.
LIVE_SUBSCRIPTION = ("active", "trialing", "past_due", "unpaid")
# Not paying: a paid tier falls back to pay-as-you-go (no included credits, no overdraft).
LAPSED_SUBSCRIPTION = ("past_due", "unpaid", "canceled", "incomplete_expired")
FALLBACK_TIER = "pay_as_you_go"
GRANTING_INVOICE_REASONS = ("subscription_create", "subscription_cycle")
HANDLED_EVENTS = tuple(HANDLED_EVENT_OBJECTS)


class WebhookRejected(Exception):
    """Bad or stale signature: answer 400 so nothing is processed."""


class PaymentService:
    def __init__(
        self,
        session: Session,
        provider: PaymentProvider | None,
        *,
        usage: Ledger | None = None,
        pricing: Pricing | None = None,
        plans: dict[str, str | None] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.session = session
        self.provider = provider
        self.pricing = pricing or get_pricing()
        self.usage = usage or Ledger(pricing=self.pricing, clock=clock)
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
            amount_usd=Decimal(payment.amount_cents) / 100,
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
        # Also while a cancelled one runs to its period end: two live subscriptions would charge twice. An
        # ``incomplete`` one (its first payment was declined) is not live: retrying, e.g. with another card, replaces it.
        if row.subscription_id and row.subscription_status in LIVE_SUBSCRIPTION:
            raise ConflictError(
                "the account already has a live subscription (a cancelled one stays live until its period end)",
                code="subscription_exists",
                details={"subscription_id": row.subscription_id, "tier": row.subscription_tier},
            )
        customer_id = self.ensure_customer(account_id)
        if row.subscription_id and row.subscription_status == "incomplete":
            # Its first payment could still be completed within Stripe's 23 h: cancel it, or both could be paid.
            provider.cancel_subscription_now(row.subscription_id)
        # Deterministic per state: a retried request reuses the key, a later re-subscription gets a new one.
        key = f"airies-subscription:{account_id}:{tier}:{row.subscription_id or 'first'}"
        info = provider.create_subscription(
            customer_id=customer_id,
            plan_id=plan_id,
            metadata={"airies_account_id": account_id, "airies_tier": tier},
            idempotency_key=key,
            payment_method=payment_method,
        )
        self._apply_subscription(account_id, info, tier=tier, event_created=None, replace=True)
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
        row = self.usage.load(self.session, account_id)
        return {
            "tier": row.tier,
            "subscription_id": row.subscription_id,
            "status": row.subscription_status,
            "subscription_tier": row.subscription_tier,
            "current_period_end": row.subscription_period_end,
            "cancel_at_period_end": row.cancel_at_period_end,
        }

    def _apply_subscription(
        self,
        account_id: str,
        info: SubscriptionInfo,
        *,
        tier: str | None,
        event_created: int | None,
        replace: bool = False,
        fresh: bool = False,
    ) -> bool:
        """Record a subscription's state on the account and move the tier with it.

        ``replace``: our own create call (the new subscription becomes the current one). ``fresh``: the state was
        just read from Stripe, so no event can be newer; ``event_created`` then only advances the ordering mark.
        """
        row = self._billing(account_id)
        # Not the current subscription: a stale one ending, or one replaced while incomplete. It takes over only
        # when it is the one being paid (active) and the current one is not.
        if (
            not replace
            and row.subscription_id
            and row.subscription_id != info.id
            and (info.status not in ACTIVE_SUBSCRIPTION or row.subscription_status in ACTIVE_SUBSCRIPTION)
        ):
            return False
        if (
            not fresh
            and event_created is not None
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
            values["subscription_event_created"] = max(event_created, row.subscription_event_created or 0)
        self.session.execute(update(BillingAccount).where(BillingAccount.account_id == account_id).values(**values))
        if info.status in ACTIVE_SUBSCRIPTION and tier:
            self.usage.set_tier(account_id, tier, session=self.session)
        elif info.status in LAPSED_SUBSCRIPTION and self.pricing.tier(row.tier).paid:
            self.usage.set_tier(account_id, FALLBACK_TIER, session=self.session)
        return True

    # -- webhook ------------------------------------------------------------------------------------
    def handle_webhook(self, payload: bytes, signature_header: str | None) -> dict[str, Any]:
        """Signed and well-formed events only: anything else is a 400 before anything is recorded (Stripe retries
        a 5xx for days, a 4xx is a clear answer in its dashboard)."""
        provider = self._require_provider()
        try:
            event = provider.parse_webhook(payload, signature_header)
        except WebhookSignatureError as exc:
            raise WebhookRejected(str(exc)) from exc
        except InvalidStripeEvent as exc:
            raise BadRequestError(str(exc), code="invalid_event", details=exc.problems) from exc
        return self.process_event(event)

    def process_event(self, event: WebhookEvent) -> dict[str, Any]:
        handled = event.type in HANDLED_EVENTS
        insert = self.usage.insert(self.session, StripeEvent)
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
            account_id, result = self._on_invoice(event, obj)
        elif event.type == "charge.refunded":
            account_id, result = self._on_charge_refunded(obj)
        elif event.type.startswith("charge.dispute."):
            account_id, result = self._on_dispute(event.type, obj)
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

    def _on_invoice(self, event: WebhookEvent, obj: dict[str, Any]) -> tuple[str | None, bool]:
        event_type = event.type
        invoice = self.session.scalar(select(Invoice).where(Invoice.stripe_invoice_id == obj.get("id")))
        if invoice is None and (obj.get("metadata") or {}).get("airies_invoice_id"):
            invoice = self.session.get(Invoice, obj["metadata"]["airies_invoice_id"])
        if invoice is None:
            if event_type == "invoice.paid" and _invoice_subscription_id(obj):
                return self._on_subscription_invoice_paid(event, obj)
            # A failed subscription invoice: its state reaches us through customer.subscription.updated.
            return self._account_for_customer(obj.get("customer"), _invoice_metadata(obj)), False
        now = self.clock()
        if event_type == "invoice.paid":
            invoice.status = "paid"
            invoice.paid_at = invoice.paid_at or now
        elif invoice.status != "paid":  # a late payment_failed never undoes a payment
            invoice.status = "payment_failed"
        invoice.updated_at = now
        self.session.flush()
        return invoice.account_id, True

    def _on_subscription_invoice_paid(self, event: WebhookEvent, obj: dict[str, Any]) -> tuple[str | None, bool]:
        """A paid subscription invoice grants the tier's included credits once (keyed by the invoice id), only
        while the subscription is the account's current one and active. The subscription is read back from
        Stripe: this event and ``customer.subscription.updated`` (e.g. past_due -> active) come in any order."""
        subscription_id = _invoice_subscription_id(obj)
        account_id = self._account_for_customer(obj.get("customer"), _invoice_metadata(obj))
        if account_id is None or subscription_id is None:
            return account_id, False
        info = self._require_provider().retrieve_subscription(subscription_id)
        self._apply_subscription(account_id, info, tier=None, event_created=event.created, fresh=True)
        row = self.usage.load(self.session, account_id)
        reason = obj.get("billing_reason")
        if row.subscription_id != subscription_id or info.status != "active" or reason not in GRANTING_INVOICE_REASONS:
            return account_id, False
        tier = self.pricing.tier(row.subscription_tier)
        if not tier.paid or not tier.included_monthly_micros:
            return account_id, False
        granted = self.usage.grant_credits(
            account_id,
            tier.included_monthly_micros,
            entry_type="grant",
            idempotency_key=f"subscription_grant:{obj['id']}",
            reference_type="stripe_invoice",
            reference_id=obj["id"],
            description=f"{tier.display_name} included credits: subscription invoice paid",
            meta={
                "subscription_id": subscription_id,
                "billing_reason": reason,
                "amount_paid_cents": int(obj.get("amount_paid") or 0),
            },
            session=self.session,
        )
        return account_id, granted

    # -- refunds and disputes -----------------------------------------------------------------------
    def _payment_for(self, obj: dict[str, Any]) -> Payment | None:
        """The top-up behind a charge or dispute, locked (PostgreSQL) so its refunds are applied one at a time."""
        intent = obj.get("payment_intent")
        if isinstance(intent, dict):
            intent = intent.get("id")
        if not intent:
            return None
        return self.session.execute(
            select(Payment)
            .where(Payment.stripe_payment_intent_id == intent)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).scalar_one_or_none()

    def _reprice_clawback(
        self, payment: Payment, *, key: str, entry_type: str, reference_type: str, reference_id: str, description: str
    ) -> bool:
        """Bring the credits taken back for ``payment`` to their exact cumulative target (see module doc)."""
        target = clawback_micros(
            payment.credits_micros, payment.amount_cents, payment.refunded_cents + payment.disputed_cents
        )
        delta = target - payment.clawed_back_micros
        meta = {
            "payment_id": payment.id,
            "stripe_payment_intent_id": payment.stripe_payment_intent_id,
            "refunded_cents": payment.refunded_cents,
            "disputed_cents": payment.disputed_cents,
        }
        if delta < 0:  # a won dispute gives credits back (settling anything still owed first)
            applied = self.usage.grant_credits(
                payment.account_id,
                -delta,
                entry_type="adjustment",
                idempotency_key=key,
                reference_type=reference_type,
                reference_id=reference_id,
                description=description,
                meta=meta,
                session=self.session,
            )
        else:
            applied, _taken, _owed = self.usage.claw_back(
                self.session,
                payment.account_id,
                delta,
                entry_type=entry_type,
                idempotency_key=key,
                reference_type=reference_type,
                reference_id=reference_id,
                description=description,
                meta=meta,
            )
        if applied:
            payment.clawed_back_micros = target
        self.session.flush()
        return applied

    def _on_charge_refunded(self, obj: dict[str, Any]) -> tuple[str | None, bool]:
        payment = self._payment_for(obj)
        if payment is None:  # not a top-up (e.g. a subscription or usage invoice charge)
            return self._account_for_customer(obj.get("customer"), obj.get("metadata") or {}), False
        refunds = (obj.get("refunds") or {}).get("data") or []
        applied = False
        if refunds:
            for refund in sorted(refunds, key=lambda r: (int(r.get("created") or 0), r["id"])):
                if refund.get("status") in ("failed", "canceled"):
                    continue
                key = f"refund:{refund['id']}"
                if self.usage.ledger_key_used(payment.account_id, key, session=self.session):
                    continue  # already applied (a replay or a later event listing earlier refunds)
                payment.refunded_cents += int(refund.get("amount") or 0)
                applied |= self._reprice_clawback(
                    payment,
                    key=key,
                    entry_type="refund",
                    reference_type="stripe_refund",
                    reference_id=refund["id"],
                    description=f"refund ${Decimal(int(refund.get('amount') or 0)) / 100:.2f} of top-up {payment.id}",
                )
        else:
            # Newer API versions leave the refunds list out of the event: use the cumulative amount refunded.
            total = int(obj.get("amount_refunded") or 0)
            if total > payment.refunded_cents:
                cents = total - payment.refunded_cents
                payment.refunded_cents = total
                applied = self._reprice_clawback(
                    payment,
                    key=f"refund:{obj['id']}:{total}",
                    entry_type="refund",
                    reference_type="stripe_charge",
                    reference_id=obj["id"],
                    description=f"refund ${Decimal(cents) / 100:.2f} of top-up {payment.id}",
                )
        return payment.account_id, applied

    def _on_dispute(self, event_type: str, obj: dict[str, Any]) -> tuple[str | None, bool]:
        """Opened: the disputed amount is treated as refunded at once (credits taken back, not held). Won: given
        back. Lost: nothing more (already taken). Inquiries (``warning_*``) move no money and change nothing."""
        payment = self._payment_for(obj)
        if payment is None:
            return None, False
        dispute_id, cents = obj["id"], int(obj.get("amount") or 0)
        status = obj.get("status") or ""
        opened_key = f"dispute:{dispute_id}"
        if event_type == "charge.dispute.created":
            if status.startswith("warning_"):
                return payment.account_id, False
            if self.usage.ledger_key_used(payment.account_id, opened_key, session=self.session):
                return payment.account_id, False
            payment.disputed_cents += cents
            return payment.account_id, self._reprice_clawback(
                payment,
                key=opened_key,
                entry_type="adjustment",
                reference_type="stripe_dispute",
                reference_id=dispute_id,
                description=f"dispute of ${Decimal(cents) / 100:.2f} on top-up {payment.id}",
            )
        won_key = f"dispute_won:{dispute_id}"
        if (
            event_type != "charge.dispute.closed"
            or status != "won"
            or not self.usage.ledger_key_used(payment.account_id, opened_key, session=self.session)
            or self.usage.ledger_key_used(payment.account_id, won_key, session=self.session)
        ):
            return payment.account_id, False
        payment.disputed_cents = max(0, payment.disputed_cents - cents)
        return payment.account_id, self._reprice_clawback(
            payment,
            key=won_key,
            entry_type="adjustment",
            reference_type="stripe_dispute",
            reference_id=dispute_id,
            description=f"dispute won: ${Decimal(cents) / 100:.2f} of top-up {payment.id} given back",
        )

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


def clawback_micros(credits_micros: int, amount_cents: int, removed_cents: int) -> int:
    """Credits to have taken back once ``removed_cents`` of a ``amount_cents`` payment worth ``credits_micros`` are
    refunded or disputed: exact integers, half-up, proportional and capped at the whole payment. Being a function of
    the cumulative cents, successive partial refunds add up to exactly the credits of the whole."""
    if amount_cents <= 0:
        return 0
    cents = max(0, min(amount_cents, removed_cents))
    return (2 * credits_micros * cents + amount_cents) // (2 * amount_cents)


def _invoice_subscription_id(obj: dict[str, Any]) -> str | None:
    subscription = obj.get("subscription")
    if isinstance(subscription, dict):
        subscription = subscription.get("id")
    if not subscription:  # API versions from 2025-03 moved it under parent.subscription_details
        details = (obj.get("parent") or {}).get("subscription_details") or {}
        subscription = details.get("subscription")
    return subscription or None


def _invoice_metadata(obj: dict[str, Any]) -> dict[str, Any]:
    details = (obj.get("parent") or {}).get("subscription_details") or obj.get("subscription_details") or {}
    return {**(details.get("metadata") or {}), **(obj.get("metadata") or {})}


def plans_from_settings(settings: Settings) -> dict[str, str | None]:
    return {
        "pro": settings.stripe_plan_pro,
        "enterprise": settings.stripe_plan_enterprise,
        "pay_as_you_go": settings.stripe_plan_pay_as_you_go,
    }


def build_payment_service(
    settings: Settings, session: Session, *, provider: PaymentProvider | None = None
) -> PaymentService:
    """The PaymentService of a request/invocation; ``provider`` defaults to Stripe when configured."""
    return PaymentService(
        session,
        provider if provider is not None else build_payment_provider(settings),
        plans=plans_from_settings(settings),
    )
