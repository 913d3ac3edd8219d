"""Metering: usage events -> the ledger, each charged exactly once.

* usage events are gated by their ``(account_id, idempotency_key)`` (``INSERT ... ON CONFLICT DO NOTHING
  RETURNING``): a redelivered event is neither stored nor charged twice, and another account's event with the
  same key is its own event;
* the first body of a key wins. A later event with the key and another body (``usage_body_hash``: what it bills)
  is a conflict: not charged, kept once per distinct body in ``usage_event_conflicts`` (listed with status
  ``conflict``), logged with both hashes and counted in the ``UsageEventConflicts`` metric;
* an event of a period that already has an invoice is recorded ``late``.

Usage always happens before it is priced, so it is never refused here: the part of its credits the
balance (plus the tier's overdraft) cannot cover is recorded as uncovered on the event and billed on
the monthly invoice (tiers with ``invoice_overage``). ``limits.check_usage_limits`` is what stops new work.

Services send usage through a ``UsagePublisher``: SQS on AWS (the UsageFunction consumer tracks it), straight into
the ledger locally and in tests.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import case, func, or_, select, text, update
from sqlalchemy.orm import Session

from airies.billing.ledger import Ledger, month_period, period_bounds, quantity_to_micro
from airies.billing.models import BillingAccount, Invoice, UsageEventConflict, UsageEventRecord
from airies.billing.pricing import PricedUsage, Tier
from airies.billing.schemas import UsageComponent, UsageEvent
from airies.core.ids import new_id

log = logging.getLogger(__name__)

USAGE_CONFLICTS_METRIC = "UsageEventConflicts"


def usage_body_hash(event: UsageEvent) -> str:
    """SHA-256 of what an event bills: component, quantity, provider, model, agent, conversation and turn. Not its
    time or metadata: a producer that builds the same fact again (a retried turn) gives it a new ``occurred_at``."""
    body = {
        "component": event.component.value,
        "quantity_micro": quantity_to_micro(event.quantity),
        "provider": event.provider,
        "model": event.model,
        "agent_id": event.agent_id,
        "conversation_id": event.conversation_id,
        "turn_id": event.turn_id,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _event_fields(event: UsageEvent) -> dict[str, Any]:
    """The columns an event and a conflicting event share."""
    return {
        "idempotency_key": event.idempotency_key,
        "occurred_at": event.occurred_at,
        "component": event.component.value,
        "quantity_micro": quantity_to_micro(event.quantity),
        "provider": event.provider,
        "model": event.model,
        "agent_id": event.agent_id,
        "conversation_id": event.conversation_id,
        "turn_id": event.turn_id,
        "meta": json.loads(json.dumps(event.metadata, default=str)),
        "body_hash": usage_body_hash(event),
    }


_CONFLICT_FIELDS = (
    "idempotency_key",
    "occurred_at",
    "component",
    "quantity_micro",
    "provider",
    "model",
    "agent_id",
    "conversation_id",
    "turn_id",
    "meta",
    "body_hash",
)


@dataclass(frozen=True)
class TrackResult:
    accepted: int  # newly recorded events
    duplicates: int  # already recorded (redelivery): not charged again
    charged_micros: int
    debited_micros: int  # taken from the balance
    uncovered_micros: int  # charged but not covered by the balance: billed on the invoice / written off
    conflicts: int = 0  # a recorded key with another body: not charged, kept as a conflict


class UsagePublisher(Protocol):
    """Where services send usage: SQS on AWS, straight into the ledger locally and in tests."""

    def publish(self, events: Sequence[UsageEvent]) -> None: ...


class UsageTracker(Protocol):
    def track_usage(self, events: Iterable[UsageEvent], *, session: Session | None = None) -> TrackResult: ...


def calculate_credits(ledger: Ledger, event: UsageEvent, tier: str | Tier | None = None) -> PricedUsage:
    tier_obj = tier if isinstance(tier, Tier) else ledger.pricing.tier(tier)
    return ledger.pricing.price(event.component, event.quantity, event.provider, event.model, tier_obj)


def track_usage(ledger: Ledger, events: Iterable[UsageEvent], *, session: Session | None = None) -> TrackResult:
    """Record and charge events exactly once per idempotency key, atomically with the debit. The first body of
    a key wins; a later one that differs is recorded as a conflict (see the module doc)."""
    by_account: dict[str, dict[str, UsageEvent]] = {}
    repeats: dict[str, list[UsageEvent]] = {}  # a key seen again in this batch: compared after the insert
    for event in events:
        batch = by_account.setdefault(event.account_id, {})
        if event.idempotency_key in batch:
            repeats.setdefault(event.account_id, []).append(event)
        else:
            batch[event.idempotency_key] = event
    totals = [0, 0, 0, 0, 0, 0]
    with ledger.unit_of_work(session) as s:
        # A fixed order (accounts, then keys): concurrent batches lock rows and unique-index entries in the
        # same order on PostgreSQL, so overlapping redeliveries wait for each other instead of deadlocking.
        for account_id in sorted(by_account):
            ordered = [by_account[account_id][key] for key in sorted(by_account[account_id])]
            result = _track_account(ledger, s, account_id, ordered, repeats.get(account_id, []))
            for i, value in enumerate(
                (
                    result.accepted,
                    result.duplicates,
                    result.charged_micros,
                    result.debited_micros,
                    result.uncovered_micros,
                    result.conflicts,
                )
            ):
                totals[i] += value
    return TrackResult(*totals)


def _invoiced_periods(ledger: Ledger, s: Session, account_id: str, events: list[UsageEvent], now: datetime) -> set[str]:
    """The periods of these events that already have an invoice: their events are late.

    Only past periods can be invoiced. On PostgreSQL a SHARE lock on ``invoices`` (held until this transaction
    commits) waits for an invoice being created and keeps new ones out meanwhile, so an event is either
    visible to its period's invoice or flagged late here, never neither. SQLite serialises writers itledger.
    """
    current_start = period_bounds(month_period(now))[0]
    past = {month_period(e.occurred_at) for e in events if e.occurred_at < current_start}
    if not past:
        return set()
    if ledger.is_pg(s):
        s.execute(text("LOCK TABLE invoices IN SHARE MODE"))
    return set(s.scalars(select(Invoice.period).where(Invoice.account_id == account_id, Invoice.period.in_(past))))


def _track_account(
    ledger: Ledger, s: Session, account_id: str, events: list[UsageEvent], repeats: Sequence[UsageEvent] = ()
) -> TrackResult:
    now = ledger.clock()
    invoiced = _invoiced_periods(ledger, s, account_id, events, now)  # before any row lock: one lock order
    row = ledger.ensure_account(account_id, session=s)
    tier = ledger.pricing.tier(row.tier)
    ledger_id = new_id("led")
    rows: list[dict[str, Any]] = []
    for event in events:
        priced = calculate_credits(ledger, event, tier)
        rows.append(
            {
                "id": new_id("use"),
                "account_id": account_id,
                **_event_fields(event),
                "tier": tier.name,
                "priced": priced.priced,
                "cost_picousd": int((priced.cost_usd * 10**12).to_integral_value()),
                "credits_micros": priced.credits_micros,
                "covered_micros": 0,
                "ledger_entry_id": ledger_id,
                "late": month_period(event.occurred_at) in invoiced,
                "created_at": now,
            }
        )
    stmt = (
        ledger.insert(s, UsageEventRecord)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["account_id", "idempotency_key"])
        .returning(UsageEventRecord.id)
    )
    inserted = set(s.execute(stmt).scalars())
    fresh = [r for r in rows if r["id"] in inserted]
    already = [r for r in rows if r["id"] not in inserted]
    conflicts = _record_conflicts(ledger, s, account_id, already + [_event_fields(e) for e in repeats], now)
    duplicates = sum(1 for r in already if (r["idempotency_key"], r["body_hash"]) not in conflicts)
    charged = sum(r["credits_micros"] for r in fresh)
    if not fresh:
        return TrackResult(0, duplicates, 0, 0, 0, len(conflicts))
    taken, _balance = (0, 0)
    if charged:
        taken, _balance = ledger.debit_up_to(s, account_id, charged, tier.overdraft_micros)
    ledger.append_ledger(
        s,
        account_id=account_id,
        amount_micros=-taken,
        entry_type="usage_debit",
        idempotency_key=None,
        reference_type="usage_batch",
        reference_id=ledger_id,
        description=f"usage: {len(fresh)} event(s)",
        meta={"events": len(fresh), "charged_micros": charged, "uncovered_micros": charged - taken},
        entry_id=ledger_id,
    )
    _count_minutes(ledger, s, account_id, fresh)
    # Cover events in order; every event points at the ledger entry that paid for it.
    if taken == charged:
        s.execute(
            update(UsageEventRecord)
            .where(UsageEventRecord.ledger_entry_id == ledger_id)
            .values(covered_micros=UsageEventRecord.credits_micros)
        )
    elif taken:
        remaining = taken
        covered: list[dict[str, Any]] = []
        for r in fresh:
            part = min(r["credits_micros"], remaining)
            if part:
                covered.append({"id": r["id"], "covered_micros": part})
            remaining -= part
            if not remaining:
                break
        s.execute(update(UsageEventRecord), covered)
    return TrackResult(len(fresh), duplicates, charged, taken, charged - taken, len(conflicts))


def _record_conflicts(
    ledger: Ledger, s: Session, account_id: str, seen_again: list[dict[str, Any]], now: datetime
) -> set[tuple[str, str]]:
    """Of events whose key is already recorded, those whose body differs, as (key, body hash): kept (once per
    distinct body), logged with both hashes and counted. Events recorded before hashes were kept cannot be
    compared."""
    if not seen_again:
        return set()
    recorded = {
        key: (event_id, body_hash)
        for key, event_id, body_hash in s.execute(
            select(UsageEventRecord.idempotency_key, UsageEventRecord.id, UsageEventRecord.body_hash).where(
                UsageEventRecord.account_id == account_id,
                UsageEventRecord.idempotency_key.in_({r["idempotency_key"] for r in seen_again}),
            )
        )
    }
    conflicts: set[tuple[str, str]] = set()
    for row in seen_again:
        event_id, recorded_hash = recorded[row["idempotency_key"]]
        if recorded_hash is None or recorded_hash == row["body_hash"]:
            continue
        conflicts.add((row["idempotency_key"], row["body_hash"]))
        new = s.execute(
            ledger.insert(s, UsageEventConflict)
            .values(
                id=new_id("use"),
                account_id=account_id,
                usage_event_id=event_id,
                recorded_body_hash=recorded_hash,
                created_at=now,
                **{k: row[k] for k in _CONFLICT_FIELDS},
            )
            .on_conflict_do_nothing(index_elements=["account_id", "idempotency_key", "body_hash"])
            .returning(UsageEventConflict.id)
        ).scalar_one_or_none()
        if new is None:
            continue  # this body was already recorded as a conflict (a redelivery of the conflicting event)
        log.warning(
            "usage event conflict: key %r of account %s was recorded with body sha256 %s; a body with sha256 %s "
            "was refused (kept as %s, not charged)",
            row["idempotency_key"],
            account_id,
            recorded_hash,
            row["body_hash"],
            new,
            extra={
                "account_id": account_id,
                "idempotency_key": row["idempotency_key"],
                "recorded_body_hash": recorded_hash,
                "refused_body_hash": row["body_hash"],
                "usage_event_id": event_id,
            },
        )
        try:
            ledger.monitoring.increment_counter(USAGE_CONFLICTS_METRIC, dimensions={"component": row["component"]})
        except Exception:  # a metric must never fail the usage it reports on
            log.exception("could not emit the %s metric", USAGE_CONFLICTS_METRIC)
    return conflicts


def _count_minutes(ledger: Ledger, s: Session, account_id: str, fresh: list[dict[str, Any]]) -> None:
    """Add new platform minutes to the month's counter (a newer month restarts it; older months are ignored)."""
    per_period: dict[str, int] = {}
    for r in fresh:
        if r["component"] == UsageComponent.PLATFORM_MINUTES.value and r["quantity_micro"]:
            period = month_period(r["occurred_at"])
            per_period[period] = per_period.get(period, 0) + r["quantity_micro"]
    for period in sorted(per_period):
        b = BillingAccount
        s.execute(
            update(b)
            .where(b.account_id == account_id, or_(b.minutes_period.is_(None), b.minutes_period <= period))
            .values(
                minutes_used_micro=case(
                    (b.minutes_period == period, b.minutes_used_micro + per_period[period]),
                    else_=per_period[period],
                ),
                minutes_period=period,
            )
        )


def minutes_used(ledger: Ledger, s: Session, account_id: str, now: datetime) -> int:
    """platform_minutes of the current month, in micro-minutes (the counter track_usage keeps)."""
    row = s.execute(
        select(BillingAccount.minutes_period, BillingAccount.minutes_used_micro).where(
            BillingAccount.account_id == account_id
        )
    ).one_or_none()
    return 0 if row is None else minutes_in_period(row[0], row[1], now)


def minutes_in_period(period: str | None, used_micro: int, now: datetime) -> int:
    """A billing row's minutes counter, in micro-minutes: zero when it counts an earlier month."""
    return int(used_micro) if period == month_period(now) else 0


def minutes_used_from_events(ledger: Ledger, account_id: str, now: datetime, *, session: Session | None = None) -> int:
    """The same figure recomputed from the events (audits and tests: must equal ``minutes_used``)."""
    start, end = period_bounds(month_period(now))
    with ledger.unit_of_work(session) as s:
        return int(
            s.scalar(
                select(func.coalesce(func.sum(UsageEventRecord.quantity_micro), 0)).where(
                    UsageEventRecord.account_id == account_id,
                    UsageEventRecord.component == UsageComponent.PLATFORM_MINUTES.value,
                    UsageEventRecord.occurred_at >= start,
                    UsageEventRecord.occurred_at < end,
                )
            )
            or 0
        )


class DirectUsagePublisher:
    """Local runs and tests: track in-process, in a unit of work of its own."""

    def __init__(self, service: UsageTracker) -> None:
        self.service = service

    def publish(self, events: Sequence[UsageEvent]) -> None:
        if events:
            self.service.track_usage(events)


class SqsUsagePublisher:
    """AWS: one SQS message per event (batches of 10); the UsageFunction consumer tracks them."""

    def __init__(
        self, queue_url: str, client: Any = None, *, region: str | None = None, endpoint_url: str | None = None
    ):
        self.queue_url = queue_url
        self._client = client
        self._region = region
        self._endpoint_url = endpoint_url

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("sqs", region_name=self._region, endpoint_url=self._endpoint_url)
        return self._client

    def publish(self, events: Sequence[UsageEvent]) -> None:
        events = list(events)
        for start in range(0, len(events), 10):
            chunk = events[start : start + 10]
            entries = [{"Id": str(i), "MessageBody": e.model_dump_json()} for i, e in enumerate(chunk)]
            response = self.client.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            failed = response.get("Failed") or []
            if failed:
                # Usage must not be lost: surface the failure; a retry is safe (events are idempotent).
                raise RuntimeError(f"SQS rejected {len(failed)} usage event(s): {failed[0].get('Message')}")
