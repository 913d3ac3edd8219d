"""BillingInvoiceFunction: the task steps of the monthly invoicing state machine.

One function, one step per ``action`` (list_accounts, aggregate, create_stripe_invoice, finalize, notify,
record_failure); each step is idempotent, so Step Functions retries and a re-run of a period are safe.
Errors are raised (Step Functions sees the exception class name as the error, e.g. ``ProviderError``).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from airies.config import get_settings
from airies.db.engine import get_database
from airies.errors import ProviderError
from airies.services.invoicing import build_invoicing_service

logger = Logger()
settings = get_settings()
database = get_database(settings)


def _invoice_view(invoice: Any) -> dict[str, Any]:
    return {
        "invoice_id": invoice.id,
        "account_id": invoice.account_id,
        "period": invoice.period,
        "status": invoice.status,
        "amount_cents": invoice.amount_cents,
        "stripe_invoice_id": invoice.stripe_invoice_id,
    }


class ProviderRetryableError(Exception):
    """A transient Stripe failure (network, 5xx, rate limit): the state machine retries it with backoff."""


class ProviderRejectedError(Exception):
    """Stripe refused the request (4xx): retrying cannot help; the state machine records it for this account."""


def run_action(event: dict[str, Any]) -> dict[str, Any]:
    try:
        return _run_action(event)
    except ProviderError as exc:
        # Step Functions matches on the error *name*: give retryable and permanent failures distinct names.
        kind = ProviderRetryableError if exc.retryable else ProviderRejectedError
        raise kind(f"{exc.message} ({exc.details})") from exc


def _run_action(event: dict[str, Any]) -> dict[str, Any]:
    action = event.get("action")
    with database.session() as session:
        service = build_invoicing_service(settings, session)
        if action == "list_accounts":
            source = event.get("input") or {}
            period = service.resolve_period(source.get("period"))
            page_size = int(source.get("page_size") or 500)
            page = service.list_billable_accounts(period, cursor=source.get("cursor"), limit=page_size)
            return {**page, "page_size": page_size}
        if action == "aggregate":
            return _invoice_view(service.prepare_invoice(event["account_id"], event["period"]))
        if action == "create_stripe_invoice":
            return _invoice_view(service.create_stripe_invoice(event["invoice_id"]))
        if action == "finalize":
            return _invoice_view(service.finalize_and_record(event["invoice_id"]))
        if action == "notify":
            return service.notify(event["invoice_id"])
        if action == "record_failure":
            return service.record_failure(event["account_id"], event["period"], event.get("error") or {})
    raise ValueError(f"unknown action {action!r}")


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    logger.append_keys(action=event.get("action"), account_id=event.get("account_id"), period=event.get("period"))
    result = run_action(event)
    logger.info("billing step done", extra={"result": result if len(str(result)) < 2000 else "..."})
    return result
