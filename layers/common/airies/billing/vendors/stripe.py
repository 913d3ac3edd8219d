"""Stripe through the official SDK (``stripe`` 16, ``StripeClient.v1``).

``api_base`` points the SDK at a local emulator (localstripe, the wire-level test double); on AWS it is
unset and the SDK talks to api.stripe.com. Every creating call sends an ``Idempotency-Key``.

Account keys (``PUT /api/v1/provider-keys/stripe``): ``register()`` plugs ``validate_key`` (one balance retrieval)
and the ``GET /api/v1/providers`` row into ``airies.accounts.provider_keys``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airies.billing.vendors.base import (
    InvoiceInfo,
    InvoiceLineSpec,
    PaymentIntentInfo,
    SubscriptionInfo,
    WebhookEvent,
    WebhookSignatureError,
)
from airies.billing.vendors.stripe_events import parse_stripe_event
from airies.core.errors import NotAvailableError, ProviderError
from airies.core.secrets import get_platform_secret

if TYPE_CHECKING:
    from airies.core.config import Settings

_RETRYABLE = ("APIConnectionError", "RateLimitError", "APIError", "IdempotencyError")


def _get(obj: Any, key: str, default: Any = None) -> Any:
    try:
        value = obj[key]
    except (KeyError, TypeError):
        return default
    return default if value is None else value


def _provider_error(what: str, exc: Any) -> ProviderError:
    """A ``stripe.StripeError`` as the platform's ``ProviderError`` (retryable on network/rate-limit/5xx)."""
    kind = type(exc).__name__
    return ProviderError(
        f"stripe {what} failed: {getattr(exc, 'user_message', None) or exc}",
        provider="stripe",
        retryable=kind in _RETRYABLE or (exc.http_status or 0) >= 500,
        upstream_status=exc.http_status,
        details={"type": kind, "code": getattr(exc, "code", None)},
    )


def _plain(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    to_dict = getattr(obj, "to_dict", None)
    return to_dict() if callable(to_dict) else dict(obj)


class StripePaymentProvider:
    name = "stripe"

    def __init__(
        self,
        api_key: str | None,
        *,
        webhook_secret: str | None = None,
        api_base: str | None = None,
        webhook_tolerance_s: int = 300,
        max_network_retries: int = 2,
        client: Any = None,
    ) -> None:
        self.webhook_secret = webhook_secret
        self.webhook_tolerance_s = webhook_tolerance_s
        self._api_key = api_key
        self._api_base = api_base
        self._max_network_retries = max_network_retries
        self._client = client

    # -- plumbing ---------------------------------------------------------------------------------
    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import stripe

        try:
            return fn(*args, **kwargs)
        except stripe.StripeError as exc:
            raise _provider_error(what, exc) from exc

    @property
    def v1(self) -> Any:
        if self._client is None:
            if not self._api_key:
                raise NotAvailableError(
                    "Stripe is not configured: set AIRIES_STRIPE_SECRET_KEY", code="stripe_not_configured"
                )
            import stripe  # heavy: imported only when a Stripe call is actually made

            self._client = stripe.StripeClient(
                self._api_key,
                base_addresses={"api": self._api_base} if self._api_base else None,
                max_network_retries=self._max_network_retries,
            )
        return self._client.v1

    # -- customers ----------------------------------------------------------------------------------
    def create_customer(self, *, account_id: str, email: str, name: str, idempotency_key: str) -> str:
        customer = self._call(
            "customer create",
            self.v1.customers.create,
            params={"email": email, "name": name, "metadata": {"airies_account_id": account_id}},
            options={"idempotency_key": idempotency_key},
        )
        return customer.id

    # -- payment intents ------------------------------------------------------------------------------
    @staticmethod
    def _pi(obj: Any) -> PaymentIntentInfo:
        return PaymentIntentInfo(
            id=obj["id"],
            status=obj["status"],
            amount_cents=int(obj["amount"]),
            currency=obj["currency"],
            client_secret=_get(obj, "client_secret"),
            metadata=_plain(_get(obj, "metadata", {})),
        )

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
    ) -> PaymentIntentInfo:
        params: dict[str, Any] = {
            "amount": amount_cents,
            "currency": currency,
            "customer": customer_id,
            "metadata": metadata,
        }
        if payment_method:
            params["payment_method"] = payment_method
        if confirm:
            params["confirm"] = True
        intent = self._call(
            "payment intent create",
            self.v1.payment_intents.create,
            params=params,
            options={"idempotency_key": idempotency_key},
        )
        return self._pi(intent)

    def retrieve_payment_intent(self, payment_intent_id: str) -> PaymentIntentInfo:
        return self._pi(self._call("payment intent retrieve", self.v1.payment_intents.retrieve, payment_intent_id))

    # -- subscriptions ------------------------------------------------------------------------------
    @staticmethod
    def _sub(obj: Any) -> SubscriptionInfo:
        end = _get(obj, "current_period_end")
        if end is None:  # newer API versions moved it onto the items
            items = _get(_get(obj, "items", {}), "data", [])
            end = _get(items[0], "current_period_end") if items else None
        plan = _get(obj, "plan")
        plan_id = _get(plan, "id") if plan is not None else None
        return SubscriptionInfo(
            id=obj["id"],
            status=obj["status"],
            customer_id=_get(obj, "customer"),
            plan_id=plan_id,
            current_period_end=datetime.fromtimestamp(int(end), UTC) if end else None,
            cancel_at_period_end=bool(_get(obj, "cancel_at_period_end", False)),
            metadata=_plain(_get(obj, "metadata", {})),
        )

    def create_subscription(
        self,
        *,
        customer_id: str,
        plan_id: str,
        metadata: dict[str, str],
        idempotency_key: str,
        payment_method: str | None = None,
    ) -> SubscriptionInfo:
        if payment_method:
            # Attach, then make it the default so the subscription's invoices charge it.
            self._call(
                "payment method attach",
                self.v1.payment_methods.attach,
                payment_method,
                params={"customer": customer_id},
                # The payment method is part of the key: a retry with another card is another request.
                options={"idempotency_key": f"{idempotency_key}:attach:{payment_method}"},
            )
            self._call(
                "customer update",
                self.v1.customers.update,
                customer_id,
                params={"invoice_settings": {"default_payment_method": payment_method}},
            )
        # ``plan`` (not ``price``): Stripe accepts price ids there too, and localstripe knows no prices.
        sub = self._call(
            "subscription create",
            self.v1.subscriptions.create,
            params={"customer": customer_id, "items": [{"plan": plan_id}], "metadata": metadata},
            options={"idempotency_key": idempotency_key},
        )
        return self._sub(sub)

    def cancel_subscription_at_period_end(self, subscription_id: str, *, idempotency_key: str) -> SubscriptionInfo:
        sub = self._call(
            "subscription update",
            self.v1.subscriptions.update,
            subscription_id,
            params={"cancel_at_period_end": True},
            options={"idempotency_key": idempotency_key},
        )
        return self._sub(sub)

    def cancel_subscription_now(self, subscription_id: str) -> SubscriptionInfo:
        # DELETE is idempotent at Stripe (a cancelled subscription stays cancelled): no idempotency key needed.
        return self._sub(self._call("subscription cancel", self.v1.subscriptions.cancel, subscription_id))

    def retrieve_subscription(self, subscription_id: str) -> SubscriptionInfo:
        return self._sub(self._call("subscription retrieve", self.v1.subscriptions.retrieve, subscription_id))

    # -- invoices -----------------------------------------------------------------------------------
    @staticmethod
    def _inv(obj: Any) -> InvoiceInfo:
        return InvoiceInfo(
            id=obj["id"],
            status=obj["status"],
            amount_due_cents=int(_get(obj, "amount_due", 0)),
            hosted_invoice_url=_get(obj, "hosted_invoice_url"),
            metadata=_plain(_get(obj, "metadata", {})),
        )

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
    ) -> InvoiceInfo:
        params: dict[str, Any] = {
            "customer": customer_id,
            "currency": currency,
            "description": description,
            "metadata": metadata,
            "auto_advance": False,  # we finalise explicitly, after recording the id
            "pending_invoice_items_behavior": "exclude",
        }
        if charge_automatically:
            params["collection_method"] = "charge_automatically"
        else:
            params["collection_method"] = "send_invoice"
            params["days_until_due"] = 14
        invoice = self._call(
            "invoice create", self.v1.invoices.create, params=params, options={"idempotency_key": idempotency_key}
        )
        for index, line in enumerate(lines):
            self._call(
                "invoice item create",
                self.v1.invoice_items.create,
                params={
                    "customer": customer_id,
                    "invoice": invoice.id,
                    "amount": line.amount_cents,
                    "currency": currency,
                    "description": line.description,
                    "metadata": line.metadata,
                },
                options={"idempotency_key": f"{idempotency_key}:item:{index}"},
            )
        return self._inv(self._call("invoice retrieve", self.v1.invoices.retrieve, invoice.id))

    def finalize_invoice(self, invoice_id: str, *, idempotency_key: str) -> InvoiceInfo:
        invoice = self._call(
            "invoice finalize",
            self.v1.invoices.finalize_invoice,
            invoice_id,
            params={"auto_advance": True},
            options={"idempotency_key": idempotency_key},
        )
        return self._inv(invoice)

    def retrieve_invoice(self, invoice_id: str) -> InvoiceInfo:
        return self._inv(self._call("invoice retrieve", self.v1.invoices.retrieve, invoice_id))

    # -- webhooks -----------------------------------------------------------------------------------
    def parse_webhook(self, payload: bytes, signature_header: str | None) -> WebhookEvent:
        """Verify the signature over the raw body, then read the event through its schema (``InvalidStripeEvent``
        when a signed body is not an event the handlers can read)."""
        import stripe

        if not self.webhook_secret:
            raise WebhookSignatureError("no webhook secret configured")
        try:
            stripe.WebhookSignature.verify_header(
                payload, signature_header, self.webhook_secret, tolerance=self.webhook_tolerance_s
            )
        except stripe.SignatureVerificationError as exc:
            raise WebhookSignatureError(str(exc)) from exc
        except UnicodeDecodeError as exc:  # the signature is over the UTF-8 text of the body
            raise WebhookSignatureError(f"invalid payload: {exc}") from exc
        envelope, obj = parse_stripe_event(payload)
        return WebhookEvent(
            id=envelope.id, type=envelope.type, created=envelope.created, data_object=obj, livemode=envelope.livemode
        )


# ---------------------------------------------------------------------------------------------------------------
# account keys: validation and the GET /api/v1/providers row
# ---------------------------------------------------------------------------------------------------------------
KEY_CHECK_TIMEOUT_S = 10.0


async def validate_key(api_key: str, settings: Settings) -> bool:
    """True when Stripe accepts the key; False on 401; ``ProviderError`` when Stripe could not be asked."""
    import stripe

    http_client = stripe.HTTPXClient(timeout=KEY_CHECK_TIMEOUT_S)
    client = stripe.StripeClient(
        api_key,
        base_addresses={"api": settings.stripe_api_base} if settings.stripe_api_base else None,
        max_network_retries=0,
        http_client=http_client,
    )
    try:
        await client.v1.balance.retrieve_async()  # cheap, read-only, authenticated
    except stripe.AuthenticationError:
        return False
    except stripe.PermissionError:
        return True  # a restricted key without balance access: Stripe knows the key, it just may not read this
    except stripe.StripeError as exc:
        raise _provider_error("key check", exc) from exc
    finally:
        await http_client.close_async()
    return True


def provider_status(settings: Settings) -> list[dict[str, Any]]:
    configured = bool(settings.stripe_secret_key)
    if not configured:
        try:
            configured = bool(get_platform_secret("stripe_secret_key", settings))
        except Exception:  # an unreachable secret store means "not configured" here, not a failed request
            configured = False
    return [
        {
            "provider": "stripe",
            "kind": "payments",
            "configured": configured,
            "status": "configured" if configured else "not_configured",
        }
    ]


def register() -> None:
    from airies.accounts import provider_keys

    provider_keys.register_key_validator("stripe", validate_key, kind="payments")
    provider_keys.register_provider_status("payments", provider_status)
