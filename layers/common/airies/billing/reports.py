"""Reports: usage events (recorded and refused), usage summaries, the daily roll-up."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, cast

from sqlalchemy import Table, func, literal_column, select
from sqlalchemy.orm import Session

from airies.billing.ledger import Ledger, micro_to_quantity, month_period, period_bounds
from airies.billing.models import UsageDaily, UsageEventConflict, UsageEventRecord
from airies.billing.schemas import UsageEventOut, UsageSummaryOut, UsageSummaryRow, micros_to_credits
from airies.core.errors import BadRequestError
from airies.core.ids import new_id

SUMMARY_DIMENSIONS = ("component", "agent_id", "provider", "model", "conversation_id", "day")


def list_usage_events(
    ledger: Ledger,
    account_id: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    component: str | None = None,
    agent_id: str | None = None,
    conversation_id: str | None = None,
    status: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
    session: Session | None = None,
) -> tuple[list[UsageEventOut], str | None]:
    """Recorded events and refused conflicting ones (``status``), newest first, in one keyset order: both
    tables use ``use_`` ids."""

    def page(model: Any) -> list[Any]:
        q = select(model).where(model.account_id == account_id)
        if start:
            q = q.where(model.occurred_at >= start)
        if end:
            q = q.where(model.occurred_at < end)
        if component:
            q = q.where(model.component == component)
        if agent_id:
            q = q.where(model.agent_id == agent_id)
        if conversation_id:
            q = q.where(model.conversation_id == conversation_id)
        if cursor:
            q = q.where(model.id < cursor)
        return list(s.scalars(q.order_by(model.id.desc()).limit(limit + 1)))

    with ledger.unit_of_work(session) as s:
        rows: list[UsageEventOut] = []
        if status in (None, "recorded"):
            rows += [_event_out(e) for e in page(UsageEventRecord)]
        if status in (None, "conflict"):
            rows += [_conflict_out(c) for c in page(UsageEventConflict)]
        rows.sort(key=lambda row: row.id, reverse=True)
        return rows[:limit], (rows[limit - 1].id if len(rows) > limit else None)


def _event_out(e: UsageEventRecord) -> UsageEventOut:
    return _usage_out(e, Decimal(e.cost_picousd) / 10**12, e.credits_micros, e.covered_micros, priced=e.priced)


def _conflict_out(c: UsageEventConflict) -> UsageEventOut:
    # A refused event: nothing charged.
    return _usage_out(c, Decimal(0), 0, 0, priced=False, status="conflict", conflicts_with=c.usage_event_id)


def _usage_out(
    row: UsageEventRecord | UsageEventConflict,
    cost_usd: Decimal,
    credits_micros: int,
    covered_micros: int,
    *,
    priced: bool,
    status: Literal["recorded", "conflict"] = "recorded",
    conflicts_with: str | None = None,
) -> UsageEventOut:
    """The fields a recorded and a refused event share, with what each was charged."""
    return UsageEventOut(
        id=row.id,
        idempotency_key=row.idempotency_key,
        occurred_at=row.occurred_at,
        component=row.component,
        quantity=micro_to_quantity(row.quantity_micro),
        provider=row.provider,
        model=row.model,
        agent_id=row.agent_id,
        conversation_id=row.conversation_id,
        turn_id=row.turn_id,
        cost_usd=cost_usd,
        credits=micros_to_credits(credits_micros),
        covered=micros_to_credits(covered_micros),
        priced=priced,
        status=status,
        conflicts_with=conflicts_with,
    )


def get_usage_summary(
    ledger: Ledger,
    account_id: str,
    *,
    start: datetime,
    end: datetime,
    group_by: Sequence[str] = ("component",),
    session: Session | None = None,
) -> UsageSummaryOut:
    bad = [g for g in group_by if g not in SUMMARY_DIMENSIONS]
    if bad:
        raise BadRequestError(f"cannot group by {bad}", details={"allowed": list(SUMMARY_DIMENSIONS)})
    with ledger.unit_of_work(session) as s:
        columns = []
        for g in group_by:
            if g == "day":
                expr = (
                    func.to_char(func.timezone("UTC", UsageEventRecord.occurred_at), "YYYY-MM-DD")
                    if ledger.is_pg(s)
                    else func.substr(UsageEventRecord.occurred_at, 1, 10)
                )
                columns.append(expr.label("day"))
            else:
                columns.append(getattr(UsageEventRecord, g).label(g))
        q = (
            select(
                *columns,
                func.sum(UsageEventRecord.quantity_micro),
                func.sum(UsageEventRecord.credits_micros),
                func.count(),
            )
            .where(
                UsageEventRecord.account_id == account_id,
                UsageEventRecord.occurred_at >= start,
                UsageEventRecord.occurred_at < end,
            )
            # Ordinals: PostgreSQL would not match re-bound parameters of an expression in GROUP BY.
            .group_by(*[literal_column(str(i + 1)) for i in range(len(columns))])
            .order_by(*[literal_column(str(i + 1)) for i in range(len(columns))])
        )
        rows = []
        total = 0
        for r in s.execute(q):
            key = {g: (None if r[i] is None else str(r[i])) for i, g in enumerate(group_by)}
            qty, credits, count = r[len(group_by)], r[len(group_by) + 1], r[len(group_by) + 2]
            total += int(credits or 0)
            rows.append(
                UsageSummaryRow(
                    key=key,
                    quantity=micro_to_quantity(int(qty or 0)),
                    credits=micros_to_credits(int(credits or 0)),
                    events=int(count),
                )
            )
        return UsageSummaryOut(
            period_start=start,
            period_end=end,
            group_by=list(group_by),
            total_credits=micros_to_credits(total),
            rows=rows,
        )


def rollup_day(ledger: Ledger, day: str, *, session: Session | None = None) -> int:
    """Recompute ``usage_daily`` for one UTC day (YYYY-MM-DD) from the events: idempotent."""
    start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    end = start + timedelta(days=1)
    with ledger.unit_of_work(session) as s:
        e = UsageEventRecord
        dims = (
            e.account_id,
            e.component,
            func.coalesce(e.provider, ""),
            func.coalesce(e.model, ""),
            func.coalesce(e.agent_id, ""),
        )
        q = (
            select(
                *dims,
                func.count(),
                func.sum(e.quantity_micro),
                func.sum(e.credits_micros),
                func.sum(e.covered_micros),
                func.sum(e.cost_picousd),
            )
            .where(e.occurred_at >= start, e.occurred_at < end)
            .group_by(*[literal_column(str(i + 1)) for i in range(len(dims))])
        )
        results = s.execute(q).all()
        daily = cast(Table, UsageDaily.__table__)  # a declarative model's table
        s.execute(daily.delete().where(UsageDaily.day == day))
        now = ledger.clock()
        if results:
            s.execute(
                daily.insert(),
                [
                    {
                        "id": new_id("usd"),
                        "account_id": r[0],
                        "day": day,
                        "component": r[1],
                        "provider": r[2],
                        "model": r[3],
                        "agent_id": r[4],
                        "events": int(r[5]),
                        "quantity_micro": int(r[6]),
                        "credits_micros": int(r[7]),
                        "covered_micros": int(r[8]),
                        "cost_picousd": int(r[9]),
                        "updated_at": now,
                    }
                    for r in results
                ],
            )
        return len(results)


def summary_period(start: str | None, end: str | None, now: datetime) -> tuple[datetime, datetime]:
    """Parse ?start=&end= (ISO dates or datetimes); defaults to the current month."""

    def parse(value: str) -> datetime:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise BadRequestError(f"not an ISO date: {value!r}") from exc
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed

    default_start, default_end = period_bounds(month_period(now))
    lo = parse(start) if start else default_start
    hi = parse(end) if end else default_end
    if hi <= lo:
        raise BadRequestError("end must be after start")
    return lo, hi
