"""Monthly usage invoices: the steps the billing state machine runs per account.

list billable accounts (paged) -> per account: aggregate the period's usage in SQL into an invoice row
with line items -> create the Stripe invoice (draft + items) -> finalise it and record the result -> notify.

Never twice: ``invoices`` is unique on (account, period), so a re-run finds the row and resumes where it
stopped (a recorded ``stripe_invoice_id`` is never created again; a finalised invoice is never re-finalised);
every Stripe call carries an idempotency key derived from our invoice id.

What is billed: the credits of usage the balance did not cover (``credits - covered``) on tiers with
``invoice_overage``; covered usage is listed on the invoice at zero so every number traces to its events.

Late usage is billed once, on the next invoice. An event recorded after its period's invoice was created (e.g.
redriven from the DLQ) is flagged ``late`` when it is recorded (``metering`` checks for the invoice under a
lock that keeps it from being created meanwhile). An invoice bills its period's own events (not late) by period,
without touching them, plus every late uncovered event of an earlier period not billed yet, which it marks
(``usage_events.invoice_id``): a marked event is never billed again, by a re-run or by an out-of-order run.
The invoice row is inserted first: its unique (account, period) entry is what makes the marking exclusive.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, and_, func, literal_column, or_, select, text, update
from sqlalchemy.orm import Session

from airies.billing.ledger import Ledger, keyset_page, micro_to_quantity, month_period, period_bounds
from airies.billing.models import BillingAccount, Invoice, UsageEventRecord
from airies.billing.payments import PaymentService
from airies.billing.pricing import Pricing, get_pricing
from airies.billing.schemas import micros_to_credits
from airies.billing.vendors import build_payment_provider
from airies.billing.vendors.base import InvoiceLineSpec, PaymentProvider
from airies.core.config import Settings
from airies.core.errors import NotAvailableError, NotFoundError
from airies.core.ids import new_id
from airies.core.models import utcnow

COMPONENT_LABELS = {
    "stt_seconds": ("Speech-to-text", "seconds"),
    "llm_input_tokens": ("LLM input", "tokens"),
    "llm_cached_tokens": ("LLM cached input", "tokens"),
    "llm_output_tokens": ("LLM output", "tokens"),
    "tts_characters": ("Text-to-speech", "characters"),
    "platform_minutes": ("Conversation minutes", "minutes"),
    "storage_gb_hours": ("Storage", "GB-hours"),
    "kb_pages": ("Knowledge base pages", "pages"),
    "embedding_tokens": ("Embeddings", "tokens"),
    "telephony_minutes": ("Phone carrier minutes", "minutes"),
}


_BULK_INVOICE_SQL = """
WITH marked AS (
    -- late events of earlier periods (recorded after their own invoice) not billed yet: marked for this invoice
    UPDATE usage_events u SET invoice_id = 'inv_' || substr(md5(u.account_id || ':' || :period), 1, 26)
    WHERE u.occurred_at < :start AND u.late AND u.invoice_id IS NULL AND u.credits_micros > u.covered_micros
      AND u.tier = ANY(CAST(:tiers AS varchar[]))
      AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.account_id = u.account_id AND i.period = :period)
    RETURNING u.account_id, u.component, u.provider, u.model, u.quantity_micro, u.credits_micros, u.covered_micros
), listed AS (
    SELECT * FROM marked
    UNION ALL
    -- the period's own events (the fully covered ones listed at zero): billed by period, never marked
    SELECT e.account_id, e.component, e.provider, e.model, e.quantity_micro, e.credits_micros, e.covered_micros
    FROM usage_events e
    WHERE e.occurred_at >= :start AND e.occurred_at < :end AND NOT e.late
      AND e.tier = ANY(CAST(:tiers AS varchar[]))
      AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.account_id = e.account_id AND i.period = :period)
), g AS (
    SELECT account_id, component, provider, model,
           sum(quantity_micro)::bigint AS q, sum(credits_micros)::bigint AS c, sum(covered_micros)::bigint AS cv
    FROM listed
    GROUP BY account_id, component, provider, model
), l AS (
    SELECT g.*, c - cv AS b,
           -- half-up cents of (c - cv) micro-credits, in integers: floor((2 n num + den) / (2 den))
           ((2 * (c - cv) * CAST(:num AS numeric) + :den) / (2 * CAST(:den AS numeric)))::numeric AS raw_cents,
           CASE WHEN mod(q, 1000000) = 0 THEN (q / 1000000)::text
                ELSE rtrim((q / 1000000)::text || '.' || lpad(mod(q, 1000000)::text, 6, '0'), '0') END AS qty,
           concat_ws('/', NULLIF(provider, ''), NULLIF(model, '')) AS who
    FROM g
), lc AS (
    SELECT l.*, floor(raw_cents)::bigint AS cents FROM l
)
INSERT INTO invoices (id, account_id, period, period_start, period_end, status, currency, amount_cents,
                      total_credits_micros, billable_micros, lines, created_at, updated_at)
SELECT 'inv_' || substr(md5(account_id || ':' || :period), 1, 26), account_id, :period, :start, :end,
       CASE WHEN sum(cents) > 0 THEN 'draft' ELSE 'no_charge' END, :currency, sum(cents), sum(c), sum(b),
       jsonb_agg(jsonb_build_object(
           'component', component, 'provider', provider, 'model', model, 'quantity', qty,
           'credits', (c / 1000000)::text || '.' || lpad(mod(c, 1000000)::text, 6, '0'),
           'covered_credits', (cv / 1000000)::text || '.' || lpad(mod(cv, 1000000)::text, 6, '0'),
           'billable_credits', (b / 1000000)::text || '.' || lpad(mod(b, 1000000)::text, 6, '0'),
           'amount_cents', cents,
           'description', coalesce(CAST(:labels AS jsonb) -> component ->> 0, component)
               || CASE WHEN who <> '' THEN ' · ' || who ELSE '' END
               || ': ' || qty || ' ' || coalesce(CAST(:labels AS jsonb) -> component ->> 1, 'units'))
           ORDER BY component, provider, model),
       :now, :now
FROM lc
GROUP BY account_id
ON CONFLICT (account_id, period) DO NOTHING
"""


# One invoice line: its dimensions and sums (quantity, credits, covered credits, events).
_LINE_GROUP = (
    UsageEventRecord.component,
    UsageEventRecord.provider,
    UsageEventRecord.model,
    func.sum(UsageEventRecord.quantity_micro),
    func.sum(UsageEventRecord.credits_micros),
    func.sum(UsageEventRecord.covered_micros),
    func.count(),
)


def previous_period(now: datetime) -> str:
    first = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return month_period(first - timedelta(days=1))


class InvoicingService:
    def __init__(
        self,
        session: Session,
        *,
        provider: PaymentProvider | None = None,
        pricing: Pricing | None = None,
        clock: Callable[[], datetime] | None = None,
        notifier: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        self.session = session
        self.provider = provider
        self.pricing = pricing or get_pricing()
        self.clock = clock or utcnow
        self.notifier = notifier
        self.usage = Ledger(pricing=self.pricing, clock=self.clock)
        self.invoiceable_tiers = sorted(name for name, tier in self.pricing.tiers.items() if tier.invoice_overage)

    def resolve_period(self, period: str | None) -> str:
        if not period or period == "previous":
            return previous_period(self.clock())
        period_bounds(period)  # validates
        return period

    # -- step 1: who is billed ------------------------------------------------------------------------
    def _billable(self, start: datetime, end: datetime) -> Any:
        """Events an invoice of [start, end) lists: the period's own events, and the late uncovered ones of earlier
        periods not billed yet (a late event of this period waits for the next invoice: this one exists)."""
        e = UsageEventRecord
        return and_(
            e.tier.in_(self.invoiceable_tiers),
            or_(
                and_(e.occurred_at >= start, e.occurred_at < end, e.late.is_(False)),
                and_(e.occurred_at < start, self._unbilled_late()),
            ),
        )

    @staticmethod
    def _unbilled_late() -> Any:
        e = UsageEventRecord
        return and_(e.late.is_(True), e.invoice_id.is_(None), e.credits_micros > e.covered_micros)

    def list_billable_accounts(self, period: str, *, cursor: str | None = None, limit: int = 500) -> dict[str, Any]:
        """A page of accounts with invoiceable usage in the period or late unbilled usage from before it
        (pages keep Step Functions payloads small)."""
        start, end = period_bounds(period)
        q = (
            select(UsageEventRecord.account_id)
            .where(self._billable(start, end))
            .group_by(UsageEventRecord.account_id)
            .order_by(UsageEventRecord.account_id)
            .limit(limit + 1)
        )
        if cursor:
            q = q.where(UsageEventRecord.account_id > cursor)
        ids = list(self.session.scalars(q))
        more = len(ids) > limit
        ids = ids[:limit]
        return {"period": period, "accounts": ids, "next_cursor": ids[-1] if more else None}

    # -- step 2: aggregate ------------------------------------------------------------------------------
    def _mark(self, account_id: str, invoice_id: str, start: datetime) -> int:
        """Claim for ``invoice_id`` the account's late uncovered events of earlier periods not billed yet."""
        e = UsageEventRecord
        result = self.session.execute(
            update(e)
            .where(
                e.account_id == account_id,
                e.tier.in_(self.invoiceable_tiers),
                e.occurred_at < start,
                self._unbilled_late(),
            )
            .values(invoice_id=invoice_id)
            .execution_options(synchronize_session=False)
        )
        return cast(CursorResult[Any], result).rowcount or 0

    def _aggregate(self, period: str, account_ids: Iterable[str] | None = None) -> dict[str, list[tuple]]:
        """Read-only preview (the benchmark's Python path): per account, the line groups an invoice run of the
        period would list now — the period's events and the late uncovered ones not billed yet."""
        start, end = period_bounds(period)
        e = UsageEventRecord
        q = select(e.account_id, *_LINE_GROUP).where(self._billable(start, end))
        if account_ids is not None:
            q = q.where(e.account_id.in_(list(account_ids)))
        q = q.group_by(e.account_id, e.component, e.provider, e.model).order_by(
            literal_column("1"), literal_column("2"), literal_column("3"), literal_column("4")
        )
        out: dict[str, list[tuple]] = {}
        for row in self.session.execute(q):
            out.setdefault(row[0], []).append(tuple(row[1:]))
        return out

    def _aggregate_invoice(self, account_id: str, invoice_id: str, period: str) -> list[tuple]:
        """The invoice's line groups: the period's own events and the late ones it marked."""
        start, end = period_bounds(period)
        e = UsageEventRecord
        q = (
            select(*_LINE_GROUP)
            .where(
                e.account_id == account_id,
                e.tier.in_(self.invoiceable_tiers),
                or_(
                    e.invoice_id == invoice_id,
                    and_(e.occurred_at >= start, e.occurred_at < end, e.late.is_(False)),
                ),
            )
            .group_by(e.component, e.provider, e.model)
            .order_by(literal_column("1"), literal_column("2"), literal_column("3"))
        )
        return [tuple(row) for row in self.session.execute(q)]

    def _lines(self, groups: list[tuple]) -> tuple[list[dict[str, Any]], int, int, int]:
        lines: list[dict[str, Any]] = []
        total_credits = billable_total = amount_total = 0
        for component, provider, model, qty, credits, covered, _count in groups:
            credits, covered = int(credits or 0), int(covered or 0)
            billable = credits - covered
            cents = self.pricing.micros_to_cents(billable)
            label, unit = COMPONENT_LABELS.get(component, (component, "units"))
            who = "/".join(p for p in (provider, model) if p)
            quantity = micro_to_quantity(int(qty or 0))
            lines.append(
                {
                    "component": component,
                    "provider": provider,
                    "model": model,
                    "quantity": quantity,
                    "credits": micros_to_credits(credits),
                    "covered_credits": micros_to_credits(covered),
                    "billable_credits": micros_to_credits(billable),
                    "amount_cents": cents,
                    "description": f"{label}{' · ' + who if who else ''}: {quantity} {unit}",
                }
            )
            total_credits += credits
            billable_total += billable
            amount_total += cents
        return lines, total_credits, billable_total, amount_total

    def prepare_invoice(self, account_id: str, period: str) -> Invoice:
        """The invoice of (account, period): created once, then returned as is.

        The row is inserted first (``ON CONFLICT DO NOTHING``): only the transaction that inserted it marks events
        (a concurrent one waits on the unique entry, then finds the row), so an event is billed by one invoice."""
        existing = self._find(account_id, period)
        if existing is not None:
            return existing
        start, end = period_bounds(period)
        now = self.clock()
        invoice_id = new_id("inv")
        inserted = self.session.execute(
            self.usage.insert(self.session, Invoice)
            .values(
                id=invoice_id,
                account_id=account_id,
                period=period,
                period_start=start,
                period_end=end,
                status="draft",
                currency=self.pricing.currency,
                amount_cents=0,
                total_credits_micros=0,
                billable_micros=0,
                lines=[],
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["account_id", "period"])
            .returning(Invoice.id)
        ).scalar_one_or_none()
        if inserted is not None:
            self._mark(account_id, invoice_id, start)
            lines, total_credits, billable, amount = self._lines(
                self._aggregate_invoice(account_id, invoice_id, period)
            )
            self.session.execute(
                update(Invoice)
                .where(Invoice.id == invoice_id)
                .values(
                    status="draft" if amount > 0 else "no_charge",
                    amount_cents=amount,
                    total_credits_micros=total_credits,
                    billable_micros=billable,
                    lines=lines,
                )
                .execution_options(synchronize_session=False)
            )
        invoice = self._find(account_id, period)
        assert invoice is not None
        return invoice

    def prepare_invoices_bulk(self, period: str) -> int:
        """Every billable account's invoice of the period at once (backfills, large runs, the benchmark).

        On PostgreSQL the marking, the aggregation, the line items and the inserts are one statement (no row leaves
        the server), under a lock that keeps per-account runs out meanwhile; it computes exactly what
        ``prepare_invoice`` computes (a test compares the two). Elsewhere it runs ``prepare_invoice`` per account.
        """
        if self.usage.is_pg(self.session):
            return self._prepare_bulk_sql(period)
        done = set(self.session.scalars(select(Invoice.account_id).where(Invoice.period == period)))
        created = 0
        cursor: str | None = None
        while True:
            page = self.list_billable_accounts(period, cursor=cursor)
            for account_id in page["accounts"]:
                if account_id not in done:
                    self.prepare_invoice(account_id, period)
                    created += 1
            cursor = page["next_cursor"]
            if cursor is None:
                return created

    def _prepare_bulk_sql(self, period: str) -> int:
        start, end = period_bounds(period)
        num, den = self.pricing._cents_ratio
        now = self.clock()
        # Blocks concurrent invoice inserts (not reads) until commit: the NOT EXISTS of the statement stays true.
        self.session.execute(text("LOCK TABLE invoices IN SHARE ROW EXCLUSIVE MODE"))
        result = self.session.execute(
            text(_BULK_INVOICE_SQL),
            {
                "start": start,
                "end": end,
                "period": period,
                "tiers": self.invoiceable_tiers,
                "num": num,
                "den": den * 1_000_000,
                "currency": self.pricing.currency,
                "labels": json.dumps(COMPONENT_LABELS),
                "now": now,
            },
        )
        return cast(CursorResult[Any], result).rowcount or 0

    def _find(self, account_id: str, period: str) -> Invoice | None:
        return self.session.execute(
            select(Invoice)
            .where(Invoice.account_id == account_id, Invoice.period == period)
            .execution_options(populate_existing=True)
        ).scalar_one_or_none()

    def get(self, invoice_id: str, account_id: str | None = None) -> Invoice:
        q = select(Invoice).where(Invoice.id == invoice_id)
        if account_id is not None:
            q = q.where(Invoice.account_id == account_id)
        invoice = self.session.execute(q.execution_options(populate_existing=True)).scalar_one_or_none()
        if invoice is None:
            raise NotFoundError("invoice", invoice_id)
        return invoice

    def list_invoices(
        self, account_id: str, *, limit: int = 24, cursor: str | None = None
    ) -> tuple[list[Invoice], str | None]:
        return keyset_page(
            self.session, select(Invoice).where(Invoice.account_id == account_id), Invoice, limit, cursor
        )

    # -- step 3: Stripe ---------------------------------------------------------------------------------
    def _provider(self) -> PaymentProvider:
        if self.provider is None:
            raise NotAvailableError(
                "payments are not configured: set AIRIES_STRIPE_SECRET_KEY", code="stripe_not_configured"
            )
        return self.provider

    def create_stripe_invoice(self, invoice_id: str) -> Invoice:
        invoice = self.get(invoice_id)
        if invoice.status == "no_charge" or invoice.stripe_invoice_id:
            return invoice  # nothing to bill, or already created: never create twice
        provider = self._provider()
        payments = PaymentService(self.session, provider, usage=self.usage, pricing=self.pricing, clock=self.clock)
        customer_id = payments.ensure_customer(invoice.account_id)
        billing = self.session.get(BillingAccount, invoice.account_id)
        lines = [
            InvoiceLineSpec(
                amount_cents=line["amount_cents"],
                description=line["description"],
                metadata={"component": line["component"], "billable_credits": line["billable_credits"]},
            )
            for line in invoice.lines
            if line["amount_cents"] > 0
        ]
        info = provider.create_invoice(
            customer_id=customer_id,
            currency=invoice.currency,
            lines=lines,
            description=f"Airies usage {invoice.period}",
            metadata={
                "airies_invoice_id": invoice.id,
                "airies_account_id": invoice.account_id,
                "period": invoice.period,
            },
            idempotency_key=f"airies-invoice:{invoice.id}",
            charge_automatically=bool(billing and billing.subscription_status in ("active", "trialing")),
        )
        invoice.stripe_invoice_id = info.id
        invoice.updated_at = self.clock()
        self.session.flush()
        return invoice

    def finalize_and_record(self, invoice_id: str) -> Invoice:
        invoice = self.get(invoice_id)
        if invoice.status != "draft" or not invoice.stripe_invoice_id:
            return invoice
        provider = self._provider()
        current = provider.retrieve_invoice(invoice.stripe_invoice_id)
        if current.status == "draft":
            current = provider.finalize_invoice(
                invoice.stripe_invoice_id, idempotency_key=f"airies-invoice:{invoice.id}:finalize"
            )
        if current.amount_due_cents != invoice.amount_cents:
            invoice.error = f"Stripe amount_due {current.amount_due_cents} != recorded {invoice.amount_cents}"
        invoice.status = "paid" if current.status == "paid" else "open"
        invoice.hosted_invoice_url = current.hosted_invoice_url
        invoice.finalized_at = invoice.finalized_at or self.clock()
        invoice.updated_at = self.clock()
        self.session.flush()
        return invoice

    # -- step 4: notify ---------------------------------------------------------------------------------
    def notify(self, invoice_id: str) -> dict[str, Any]:
        invoice = self.get(invoice_id)
        if invoice.notified_at is not None:
            return {"notified": True, "already": True}
        if invoice.status == "no_charge":
            return {"notified": False, "reason": "nothing billed"}
        if self.notifier is None:
            return {"notified": False, "reason": "no notification channel configured (AIRIES_BILLING_EVENT_BUS)"}
        sent = self.notifier(
            {
                "invoice_id": invoice.id,
                "account_id": invoice.account_id,
                "period": invoice.period,
                "status": invoice.status,
                "amount_cents": invoice.amount_cents,
                "currency": invoice.currency,
                "hosted_invoice_url": invoice.hosted_invoice_url,
            }
        )
        if sent:
            invoice.notified_at = self.clock()
            self.session.flush()
        return {"notified": bool(sent)}

    def record_failure(self, account_id: str, period: str, error: dict[str, Any] | str) -> dict[str, Any]:
        invoice = self._find(account_id, period)
        message = error if isinstance(error, str) else json.dumps(error, default=str)[:2000]
        if invoice is not None:
            self.session.execute(
                update(Invoice).where(Invoice.id == invoice.id).values(error=message, updated_at=self.clock())
            )
        return {
            "account_id": account_id,
            "period": period,
            "failed": True,
            "invoice_id": invoice.id if invoice else None,
        }


def eventbridge_notifier(bus_name: str, *, region: str | None = None, endpoint_url: str | None = None) -> Callable:
    """Publish ``InvoiceIssued`` to an EventBridge bus (email/Slack fan-out is a rule away)."""
    client: Any = None

    def send(detail: dict[str, Any]) -> bool:
        nonlocal client
        if client is None:
            import boto3

            client = boto3.client("events", region_name=region, endpoint_url=endpoint_url)
        response = client.put_events(
            Entries=[
                {
                    "Source": "airies.billing",
                    "DetailType": "InvoiceIssued",
                    "Detail": json.dumps(detail, default=str),
                    "EventBusName": bus_name,
                }
            ]
        )
        return response.get("FailedEntryCount", 0) == 0

    return send


def build_invoicing_service(
    settings: Settings, session: Session, *, provider: PaymentProvider | None = None
) -> InvoicingService:
    notifier = None
    if settings.billing_event_bus:
        notifier = eventbridge_notifier(
            settings.billing_event_bus, region=settings.aws_region, endpoint_url=settings.aws_endpoint_url
        )
    return InvoicingService(
        session,
        provider=provider if provider is not None else build_payment_provider(settings),
        notifier=notifier,
    )
