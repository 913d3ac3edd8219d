"""Usage, credits and billing routes (``/api/v1/usage``, ``/api/v1/billing/...``).

The Stripe webhook is served here for the local server; on AWS the HTTP API routes
``POST /api/v1/billing/webhooks/stripe`` to the small StripeWebhookFunction instead (same service code).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy.orm import Session

from airies.accounts.auth import Caller, current_caller
from airies.billing.invoicing import InvoicingService
from airies.billing.payments import PaymentService, WebhookRejected, build_payment_service
from airies.billing.pricing import get_pricing
from airies.billing.reports import summary_period
from airies.billing.schemas import (
    BalanceOut,
    InvoiceOut,
    LedgerEntryOut,
    SubscriptionIn,
    TopUpIn,
    TopUpOut,
    UsageEventOut,
    UsageSummaryOut,
    credits_to_micros,
)
from airies.billing.usage import UsageService
from airies.core.errors import BadRequestError
from airies.core.money import format_usd, micros_to_credits
from airies.core.schemas import Limit, Page, request_body

router = APIRouter(tags=["billing"])


def _usage() -> UsageService:
    return UsageService()


def _payments(request: Request, caller_session: Session) -> PaymentService:
    provider = getattr(request.app.state, "payment_provider", None)
    return build_payment_service(request.app.state.settings, caller_session, provider=provider)


@router.get("/usage")
def usage_summary(
    start: str | None = Query(None, description="ISO date/time (inclusive); default: start of this month"),
    end: str | None = Query(None, description="ISO date/time (exclusive); default: start of next month"),
    group_by: str = Query(
        "component", description="comma-separated: component, agent_id, provider, model, conversation_id, day"
    ),
    caller: Caller = Depends(current_caller),
) -> UsageSummaryOut:
    """The account's usage over a period, by component (decimal strings for money)."""
    service = _usage()
    lo, hi = summary_period(start, end, service.clock())
    dims = [g.strip() for g in group_by.split(",") if g.strip()]
    return service.get_usage_summary(caller.account_id, start=lo, end=hi, group_by=dims, session=caller.session)


@router.get("/usage/events")
def usage_events(
    start: str | None = None,
    end: str | None = None,
    component: str | None = None,
    agent_id: str | None = None,
    conversation_id: str | None = None,
    status: Literal["recorded", "conflict"] | None = Query(
        None, description="conflict: refused because the key was already recorded with another body"
    ),
    limit: Limit = 100,
    cursor: str | None = None,
    caller: Caller = Depends(current_caller),
) -> Page[UsageEventOut]:
    """The account's individual usage events, a page at a time."""
    service = _usage()
    lo, hi = summary_period(start, end, service.clock()) if (start or end) else (None, None)
    items, next_cursor = service.list_usage_events(
        caller.account_id,
        start=lo,
        end=hi,
        component=component,
        agent_id=agent_id,
        conversation_id=conversation_id,
        status=status,
        limit=limit,
        cursor=cursor,
        session=caller.session,
    )
    return Page(data=items, next_cursor=next_cursor, has_more=next_cursor is not None)


@router.get("/billing/plans")
def plans(_caller: Caller = Depends(current_caller)) -> dict[str, Any]:
    """The subscription tiers with their prices and limits."""
    pricing = get_pricing()
    return {
        "usd_per_credit": format_usd(pricing.usd_per_credit),
        "tiers": [
            {
                "name": t.name,
                "display_name": t.display_name,
                "markup": str(t.markup),
                "credits_per_unit": {k: micros_to_credits(credits_to_micros(v)) for k, v in t.credits_per_unit.items()},
                "included_monthly_credits": micros_to_credits(t.included_monthly_micros),
                "overdraft_credits": micros_to_credits(t.overdraft_micros),
                "monthly_price_usd": format_usd(t.monthly_price_usd),
                "limits": t.limits.__dict__,
            }
            for t in pricing.tiers.values()
        ],
    }


@router.get("/billing/balance")
def balance(caller: Caller = Depends(current_caller)) -> BalanceOut:
    """The account's credit balance and tier."""
    return _usage().get_balance(caller.account_id, session=caller.session)


@router.get("/billing/ledger")
def ledger(
    limit: Limit = 50, cursor: str | None = None, caller: Caller = Depends(current_caller)
) -> Page[LedgerEntryOut]:
    """The account's credit ledger entries (top-ups, usage, refunds), a page at a time."""
    items, next_cursor = _usage().list_ledger(caller.account_id, limit=limit, cursor=cursor, session=caller.session)
    return Page(data=items, next_cursor=next_cursor, has_more=next_cursor is not None)


@router.post("/billing/top-ups", status_code=201)
def top_up(body: TopUpIn, request: Request, caller: Caller = Depends(current_caller)) -> TopUpOut:
    """Buy credits: creates a Stripe payment intent (idempotent with an Idempotency-Key)."""
    key = body.idempotency_key or request.headers.get("idempotency-key")
    return _payments(request, caller.session).create_payment_intent(
        caller.account_id,
        body.amount_usd,
        idempotency_key=key,
        payment_method=body.payment_method,
        confirm=body.confirm,
    )


@router.get("/billing/subscription")
def get_subscription(request: Request, caller: Caller = Depends(current_caller)) -> dict[str, Any]:
    """The account's subscription."""
    service = _payments(request, caller.session)
    service.usage.ensure_account(caller.account_id, session=caller.session)
    return service.subscription_view(caller.account_id)


@router.post("/billing/subscription", status_code=201)
def create_subscription(
    body: SubscriptionIn, request: Request, caller: Caller = Depends(current_caller)
) -> dict[str, Any]:
    """Subscribe the account to a paid tier through Stripe."""
    return _payments(request, caller.session).create_subscription(
        caller.account_id, body.tier, payment_method=body.payment_method
    )


@router.delete("/billing/subscription")
def cancel_subscription(request: Request, caller: Caller = Depends(current_caller)) -> dict[str, Any]:
    """Cancel the account's subscription."""
    return _payments(request, caller.session).cancel_subscription(caller.account_id)


@router.get("/billing/invoices")
def invoices(
    limit: Annotated[Limit, Query(le=100)] = 24, cursor: str | None = None, caller: Caller = Depends(current_caller)
) -> Page[InvoiceOut]:
    """The account's monthly invoices, a page at a time."""
    items, next_cursor = InvoicingService(caller.session).list_invoices(caller.account_id, limit=limit, cursor=cursor)
    return Page(
        data=[InvoiceOut.model_validate(i) for i in items], next_cursor=next_cursor, has_more=next_cursor is not None
    )


@router.get("/billing/invoices/{invoice_id}")
def invoice(invoice_id: str, caller: Caller = Depends(current_caller)) -> InvoiceOut:
    """One invoice with its lines."""
    return InvoiceOut.model_validate(InvoicingService(caller.session).get(invoice_id, caller.account_id))


@router.post(
    "/billing/webhooks/stripe",
    openapi_extra=request_body(
        {"application/json": {"type": "object", "description": "a Stripe event"}},
        "the Stripe event exactly as Stripe sent it (signed in the Stripe-Signature header)",
    ),
)
async def stripe_webhook(request: Request) -> Response:
    """Stripe calls this unauthenticated: the signature over the raw body is the authentication."""
    payload = await request.body()
    signature = request.headers.get("stripe-signature")
    with request.app.state.database.session() as session:
        try:
            result = _payments(request, session).handle_webhook(payload, signature)
        except WebhookRejected as exc:
            raise BadRequestError("invalid Stripe signature", code="invalid_signature", details=str(exc)) from exc
    import json

    return Response(json.dumps(result), media_type="application/json")
