"""BillingInvoiceFunction: the task steps of the monthly invoicing state machine.

One function, one step per ``action``: ``plan_pages`` (the cursors of the pages of billable accounts) and
``aggregate_page`` (every account's invoice of one page, SQL only) feed the Distributed Map; then per invoice
``create_stripe_invoice``, ``finalize``, ``notify`` and ``record_failure``. ``list_accounts`` and ``aggregate``
(one page, one account) remain for operators. Each step is idempotent, so Step Functions retries and a re-run of a
period are safe. Errors are raised (Step Functions sees the exception class name as the error).
"""

from __future__ import annotations

from airies.core import bootstrap

bootstrap.pause_collector_for_init()  # before the imports (airies.core.bootstrap says why)

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter
from sqlalchemy.exc import InterfaceError, OperationalError

from airies.billing.invoicing import build_invoicing_service
from airies.core.config import get_settings
from airies.core.database import get_database
from airies.core.events import parse_event
from airies.core.observability import lambda_handler, logger
from airies.core.stepfunctions import step_errors

settings = get_settings()
database = get_database(settings)
DEFAULT_PAGE_SIZE = 250  # a page's child execution: ~28 history events per billed account, far under 25,000
# Invoices the per-invoice steps still act on (draft: create at Stripe; open/paid: notify). Others end at aggregation.
ACTIONABLE = ("draft", "open", "paid")


# -- task inputs (one model per action) -------------------------------------------------------------------------------
class RunInput(BaseModel):
    """The execution's input (the schedule sends ``{"period": "previous"}``) or an operator's."""

    period: str | None = None
    page_size: int | None = None
    cursor: str | None = None


class PlanPages(BaseModel):
    action: Literal["plan_pages"]
    input: RunInput = Field(default_factory=RunInput)


class AggregatePage(BaseModel):
    action: Literal["aggregate_page"]
    period: str
    cursor: str | None = None
    page_size: int | None = None


class ListAccounts(BaseModel):
    action: Literal["list_accounts"]
    input: RunInput = Field(default_factory=RunInput)


class Aggregate(BaseModel):
    action: Literal["aggregate"]
    account_id: str
    period: str


class InvoiceStep(BaseModel):
    action: Literal["create_stripe_invoice", "finalize", "notify"]
    invoice_id: str


class RecordFailure(BaseModel):
    action: Literal["record_failure"]
    account_id: str
    period: str
    error: dict[str, Any] | None = None  # the Catch's {"Error", "Cause"}


BillingTask = Annotated[
    PlanPages | AggregatePage | ListAccounts | Aggregate | InvoiceStep | RecordFailure, Field(discriminator="action")
]
TASKS: TypeAdapter[BillingTask] = TypeAdapter(BillingTask)


def _invoice_view(invoice: Any) -> dict[str, Any]:
    return {
        "invoice_id": invoice.id,
        "account_id": invoice.account_id,
        "period": invoice.period,
        "status": invoice.status,
        "amount_cents": invoice.amount_cents,
        "stripe_invoice_id": invoice.stripe_invoice_id,
    }


def run_action(task: BillingTask) -> dict[str, Any]:
    # Step Functions matches on the error *name*: retryable and permanent provider failures get distinct names.
    with step_errors():
        return _run_action(task)


def _page_size(value: int | None) -> int:
    return max(1, min(int(value or DEFAULT_PAGE_SIZE), 1000))


def plan_pages(source: RunInput) -> dict[str, Any]:
    """The cursor of every page of billable accounts: the Distributed Map's items (one child execution each)."""
    page_size = _page_size(source.page_size)
    with database.session() as session:
        service = build_invoicing_service(settings, session)
        period = service.resolve_period(source.period)
        pages: list[dict[str, Any]] = []
        cursor: str | None = None
        accounts = 0
        while True:
            page = service.list_billable_accounts(period, cursor=cursor, limit=page_size)
            if not page["accounts"]:
                break
            pages.append({"cursor": cursor})
            accounts += len(page["accounts"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
    return {"period": period, "page_size": page_size, "pages": pages, "accounts": accounts}


def aggregate_page(period: str, cursor: str | None, page_size: int | None) -> dict[str, Any]:
    """Prepare the invoice of every account of one page (each in its own transaction, SQL only).

    Returns the invoices the per-invoice steps act on. A database connection fault fails the page (the state
    machine retries it; prepared invoices are found again); any other error is recorded for its account alone.
    """
    with database.session() as session:
        accounts = build_invoicing_service(settings, session).list_billable_accounts(
            period, cursor=cursor, limit=_page_size(page_size)
        )["accounts"]
    actionable: list[dict[str, Any]] = []
    failed: list[str] = []
    for account_id in accounts:
        try:
            with database.session() as session:
                invoice = build_invoicing_service(settings, session).prepare_invoice(account_id, period)
                view = _invoice_view(invoice)
        except (OperationalError, InterfaceError):
            raise
        except Exception as exc:
            logger.exception("invoice aggregation failed", extra={"account_id": account_id})
            with database.session() as session:
                build_invoicing_service(settings, session).record_failure(
                    account_id, period, {"Error": type(exc).__name__, "Cause": str(exc)[:1000]}
                )
            failed.append(account_id)
            continue
        if view["status"] in ACTIONABLE:
            actionable.append(view)
    return {"period": period, "accounts": len(accounts), "invoices": actionable, "failed": failed}


def _run_action(task: BillingTask) -> dict[str, Any]:
    if isinstance(task, PlanPages):
        return plan_pages(task.input)
    if isinstance(task, AggregatePage):
        return aggregate_page(task.period, task.cursor, task.page_size)
    with database.session() as session:
        service = build_invoicing_service(settings, session)
        if isinstance(task, ListAccounts):
            period = service.resolve_period(task.input.period)
            page_size = int(task.input.page_size or 500)
            page = service.list_billable_accounts(period, cursor=task.input.cursor, limit=page_size)
            return {**page, "page_size": page_size}
        if isinstance(task, Aggregate):
            return _invoice_view(service.prepare_invoice(task.account_id, task.period))
        if isinstance(task, RecordFailure):
            return service.record_failure(task.account_id, task.period, task.error or {})
        if task.action == "create_stripe_invoice":
            return _invoice_view(service.create_stripe_invoice(task.invoice_id))
        if task.action == "finalize":
            return _invoice_view(service.finalize_and_record(task.invoice_id))
        return service.notify(task.invoice_id)


@lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    task = parse_event(TASKS, event, source="billing task")
    logger.append_keys(
        action=task.action, account_id=getattr(task, "account_id", None), period=getattr(task, "period", None)
    )
    result = run_action(task)
    logger.info("billing step done", extra={"result": result if len(str(result)) < 2000 else "..."})
    return result


bootstrap.init_done()  # the module's last statement: its init is over
