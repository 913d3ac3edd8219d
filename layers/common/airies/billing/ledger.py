"""Usage tracking and the credit ledger.

Exactness rules:
* credits are integers of micro-credits; quantities are stored as integer micro-units;
* the ledger is append-only and ``billing_accounts.balance_micros`` always equals the sum of the
  account's ledger entries: every balance move and its ledger row are written in one transaction;
* a balance moves only through one conditional/atomic ``UPDATE ... RETURNING`` (a row lock on
  PostgreSQL, the single writer lock on SQLite), so concurrent deductions never overdraw nor lose updates;
* usage events are gated by their ``(account_id, idempotency_key)`` (``INSERT ... ON CONFLICT DO NOTHING
  RETURNING``): a redelivered event is neither stored nor charged twice, and another account's event with the
  same key is its own event; ledger idempotency keys are scoped to the account the same way;
* the first body of a key wins. A later event with the key and another body (``usage_body_hash``: what it bills)
  is a conflict: not charged, kept once per distinct body in ``usage_event_conflicts`` (listed with status
  ``conflict``), logged with both hashes and counted in the ``UsageEventConflicts`` metric;
* included monthly credits: tiers without a price (free, pay-as-you-go) get them per calendar month, once per
  account and month (ledger key ``monthly_grant:<account>:<YYYY-MM>``); paid tiers (``monthly_price_usd > 0``)
  get them only when a subscription invoice is paid (``PaymentService``, key ``subscription_grant:<in_...>``);
* refunds and disputes take credits back with ``claw_back``: never below the tier's overdraft; what the balance
  cannot give back is owed (``billing_accounts.owed_micros``, outside the balance) and is settled first by the
  next grant or top-up, each settlement a ledger entry of its own.

Usage always happens before it is priced, so it is never refused here: the part of its credits the
balance (plus the tier's overdraft) cannot cover is recorded as uncovered on the event and billed on
the monthly invoice (tiers with ``invoice_overage``). ``check_usage_limits`` is what stops new work.

Every public method takes an optional ``session``: pass the caller's session to work inside its
transaction (the usage and the caller's writes commit or roll back together); without one the
service opens its own unit of work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import case, func, literal_column, or_, select, text, update
from sqlalchemy.orm import Session

from airies.accounts.models import Account
from airies.billing.models import (
    BillingAccount,
    CreditLedgerEntry,
    Invoice,
    UsageDaily,
    UsageEventConflict,
    UsageEventRecord,
)
from airies.billing.pricing import TIERS, PricedUsage, Pricing, Tier, get_pricing
from airies.billing.schemas import (
    MICROS_PER_CREDIT,
    BalanceOut,
    LedgerEntryOut,
    LimitCheck,
    UsageComponent,
    UsageEvent,
    UsageEventOut,
    UsageSummaryOut,
    UsageSummaryRow,
    micros_to_credits,
)
from airies.core.errors import BadRequestError, NotFoundError, PaymentRequiredError
from airies.core.ids import new_id
from airies.core.metrics import MonitoringService
from airies.core.models import utcnow

if TYPE_CHECKING:
    from airies.core.config import Settings
    from airies.core.database import Database

log = logging.getLogger(__name__)

USAGE_CONFLICTS_METRIC = "UsageEventConflicts"
LEDGER_ENTRY_TYPES = ("grant", "top_up", "usage_debit", "refund", "adjustment")
SUMMARY_DIMENSIONS = ("component", "agent_id", "provider", "model", "conversation_id", "day")
_QTY_SCALE = Decimal(1_000_000)


def month_period(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m")


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """``'2026-10'`` -> [2026-10-01T00:00Z, 2026-11-01T00:00Z)."""
    try:
        start = datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)
    except ValueError as exc:
        raise BadRequestError(f"period must be YYYY-MM, got {period!r}") from exc
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def quantity_to_micro(quantity: Decimal) -> int:
    return int((quantity * _QTY_SCALE).to_integral_value())


def micro_to_quantity(micro: int) -> str:
    """12500000 -> '12.5'; integer arithmetic (hot in invoicing), never exponent notation."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(int(micro)), 1_000_000)
    return f"{sign}{whole}.{frac:06d}".rstrip("0").rstrip(".") if frac else f"{sign}{whole}"


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


def keyset_page(
    session: Session, query: Any, model: Any, limit: int, cursor: str | None
) -> tuple[list[Any], str | None]:
    """One page of ``query`` newest id first, after ``cursor``; the next cursor is None on the last page."""
    if cursor:
        query = query.where(model.id < cursor)
    rows = list(session.scalars(query.order_by(model.id.desc()).limit(limit + 1)))
    return rows[:limit], (rows[limit - 1].id if len(rows) > limit else None)


@dataclass(frozen=True)
class TrackResult:
    accepted: int  # newly recorded events
    duplicates: int  # already recorded (redelivery): not charged again
    charged_micros: int
    debited_micros: int  # taken from the balance
    uncovered_micros: int  # charged but not covered by the balance: billed on the invoice / written off
    conflicts: int = 0  # a recorded key with another body: not charged, kept as a conflict


@dataclass(frozen=True)
class DeductResult:
    applied: bool  # False when the idempotency key was already used
    debited_micros: int
    balance_micros: int


class UsagePublisher(Protocol):
    """Where services send usage: SQS on AWS, straight into the ledger locally and in tests."""

    def publish(self, events: Sequence[UsageEvent]) -> None: ...


ActiveConversationCounter = Callable[[Session, str], int]


class UsageService:
    def __init__(
        self,
        database: Database | None = None,
        *,
        pricing: Pricing | None = None,
        clock: Callable[[], datetime] | None = None,
        active_conversations: ActiveConversationCounter | None = None,
        monitoring: MonitoringService | None = None,
    ) -> None:
        self.database = database
        self.pricing = pricing or get_pricing()
        self.clock = clock or utcnow
        self.active_conversations = active_conversations
        self.monitoring = monitoring or MonitoringService(
            namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "Airies"
        )

    # -- units of work ----------------------------------------------------------------------------
    @contextmanager
    def _uow(self, session: Session | None) -> Iterator[Session]:
        if session is not None:
            yield session
            return
        if self.database is None:
            raise RuntimeError("UsageService needs a session or a database")
        with self.database.session() as own:
            yield own

    def _is_pg(self, session: Session) -> bool:
        return session.get_bind().dialect.name == "postgresql"

    def _insert(self, session: Session, model: Any) -> Any:
        if self._is_pg(session):
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(model)

    def _least(self, session: Session, *args: Any) -> Any:
        return func.least(*args) if self._is_pg(session) else func.min(*args)

    def _greatest(self, session: Session, *args: Any) -> Any:
        return func.greatest(*args) if self._is_pg(session) else func.max(*args)

    # -- billing accounts -------------------------------------------------------------------------
    def ensure_account(self, account_id: str, *, session: Session | None = None) -> BillingAccount:
        """The billing row of an account, created lazily with the tier's signup grant (idempotent),
        and, on tiers without a price, topped with their included monthly credits once per calendar month."""
        with self._uow(session) as s:
            row = s.execute(
                select(BillingAccount)
                .where(BillingAccount.account_id == account_id)
                .execution_options(populate_existing=True)
            ).scalar_one_or_none()
            if row is None:
                account = s.get(Account, account_id)
                if account is None:
                    raise NotFoundError("account", account_id)
                tier_name = account.plan if account.plan in TIERS else "free"
                now = self.clock()
                s.execute(
                    self._insert(s, BillingAccount)
                    .values(
                        account_id=account_id,
                        tier=tier_name,
                        balance_micros=0,
                        last_debit_micros=0,
                        minutes_used_micro=0,
                        owed_micros=0,
                        cancel_at_period_end=False,
                        created_at=now,
                        updated_at=now,
                    )
                    .on_conflict_do_nothing(index_elements=["account_id"])
                )
                tier = self.pricing.tier(tier_name)
                if tier.signup_grant_micros:
                    self._credit(
                        s,
                        account_id,
                        tier.signup_grant_micros,
                        entry_type="grant",
                        idempotency_key=f"signup_grant:{account_id}",
                        description=f"{tier.display_name} tier signup grant",
                    )
                row = self._load(s, account_id)
            self._ensure_monthly_grant(s, row)
            return row

    def _load(self, s: Session, account_id: str) -> BillingAccount:
        return s.execute(
            select(BillingAccount)
            .where(BillingAccount.account_id == account_id)
            .execution_options(populate_existing=True)
        ).scalar_one()

    def _ensure_monthly_grant(self, s: Session, row: BillingAccount) -> None:
        """Calendar-month grant of tiers that cost nothing (nothing to pay for them, so nothing to wait for).

        Paid tiers never get credits here: theirs come with the paid subscription invoice (one grant per paid
        invoice, see ``PaymentService``), so a past_due/unpaid account gets nothing new and subscribing on the
        31st is one grant for one payment. Once per account and month: the ledger key is the gate (a tier switch
        that resets ``monthly_grant_period`` finds the key used), ``monthly_grant_period`` only saves the lookup.
        """
        tier = self.pricing.tier(row.tier)
        period = month_period(self.clock())
        if tier.paid or not tier.included_monthly_micros or row.monthly_grant_period == period:
            return
        self._credit(
            s,
            row.account_id,
            tier.included_monthly_micros,
            entry_type="grant",
            idempotency_key=f"monthly_grant:{row.account_id}:{period}",
            description=f"{tier.display_name} included credits for {period}",
        )
        s.execute(
            update(BillingAccount)
            .where(BillingAccount.account_id == row.account_id)
            .values(monthly_grant_period=period)
        )
        s.refresh(row)

    def set_tier(self, account_id: str, tier: str, *, session: Session | None = None) -> BillingAccount:
        if tier not in TIERS:
            raise BadRequestError(f"unknown tier {tier!r}", details={"tiers": list(TIERS)})
        with self._uow(session) as s:
            row = self.ensure_account(account_id, session=s)
            if row.tier != tier:
                s.execute(
                    update(BillingAccount)
                    .where(BillingAccount.account_id == account_id)
                    .values(tier=tier, monthly_grant_period=None, updated_at=self.clock())
                )
                s.execute(update(Account).where(Account.id == account_id).values(plan=tier))
                row = self._load(s, account_id)
                self._ensure_monthly_grant(s, row)
            return row

    # -- the ledger -------------------------------------------------------------------------------
    def _ledger_key_used(self, s: Session, account_id: str, key: str) -> bool:
        return (
            s.scalar(
                select(CreditLedgerEntry.id).where(
                    CreditLedgerEntry.account_id == account_id, CreditLedgerEntry.idempotency_key == key
                )
            )
            is not None
        )

    def ledger_key_used(self, account_id: str, key: str, *, session: Session | None = None) -> bool:
        with self._uow(session) as s:
            return self._ledger_key_used(s, account_id, key)

    def _append_ledger(
        self,
        s: Session,
        *,
        account_id: str,
        amount_micros: int,
        entry_type: str,
        idempotency_key: str | None,
        reference_type: str | None = None,
        reference_id: str | None = None,
        description: str | None = None,
        meta: dict[str, Any] | None = None,
        entry_id: str | None = None,
    ) -> str | None:
        """Insert one ledger row; None when ``idempotency_key`` was already used (nothing written)."""
        entry_id = entry_id or new_id("led")
        stmt = (
            self._insert(s, CreditLedgerEntry)
            .values(
                id=entry_id,
                account_id=account_id,
                entry_type=entry_type,
                amount_micros=amount_micros,
                idempotency_key=idempotency_key,
                reference_type=reference_type,
                reference_id=reference_id,
                description=description,
                meta=meta or {},
                created_at=self.clock(),
            )
            .on_conflict_do_nothing(index_elements=["account_id", "idempotency_key"])
            .returning(CreditLedgerEntry.id)
        )
        return s.execute(stmt).scalar_one_or_none()

    def _move_balance(self, s: Session, account_id: str, delta: int) -> int:
        new_balance = s.execute(
            update(BillingAccount)
            .where(BillingAccount.account_id == account_id)
            .values(balance_micros=BillingAccount.balance_micros + delta, last_debit_micros=-delta)
            .returning(BillingAccount.balance_micros)
        ).scalar_one_or_none()
        if new_balance is None:
            raise NotFoundError("billing_account", account_id)
        return int(new_balance)

    def _credit(
        self,
        s: Session,
        account_id: str,
        amount_micros: int,
        *,
        entry_type: str,
        idempotency_key: str,
        reference_type: str | None = None,
        reference_id: str | None = None,
        description: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> bool:
        """Add credits once per ``idempotency_key``. Balance first, then ledger; a lost race on the
        key is compensated in the same transaction, so no savepoint is needed (pysqlite has none that works)."""
        if amount_micros <= 0:
            raise ValueError("credit amounts are positive")
        if self._ledger_key_used(s, account_id, idempotency_key):
            return False
        self._move_balance(s, account_id, amount_micros)
        entry = self._append_ledger(
            s,
            account_id=account_id,
            amount_micros=amount_micros,
            entry_type=entry_type,
            idempotency_key=idempotency_key,
            reference_type=reference_type,
            reference_id=reference_id,
            description=description,
            meta=meta,
        )
        if entry is None:  # a concurrent writer used the key between our check and our insert
            self._move_balance(s, account_id, -amount_micros)
            return False
        self._settle_owed(s, account_id, amount_micros, credit_entry=entry, credit_key=idempotency_key)
        return True

    def _settle_owed(self, s: Session, account_id: str, credited: int, *, credit_entry: str, credit_key: str) -> int:
        """Repay what refunds/disputes left owed out of a credit just added: one atomic UPDATE (both SET
        expressions read the pre-update row), then its own ledger entry, so balance == sum(ledger) still holds."""
        b = BillingAccount
        settle = self._least(s, b.owed_micros, credited)
        settled = s.execute(
            update(b)
            .where(b.account_id == account_id, b.owed_micros > 0)
            .values(
                balance_micros=b.balance_micros - settle, owed_micros=b.owed_micros - settle, last_debit_micros=settle
            )
            .returning(b.last_debit_micros)
        ).scalar_one_or_none()
        if not settled:
            return 0
        self._append_ledger(
            s,
            account_id=account_id,
            amount_micros=-int(settled),
            entry_type="adjustment",
            idempotency_key=f"owed_settlement:{credit_key}",
            reference_type="owed_settlement",
            reference_id=credit_entry,
            description="repays credits owed for a refund or dispute",
        )
        return int(settled)

    def claw_back(
        self,
        s: Session,
        account_id: str,
        amount_micros: int,
        *,
        entry_type: str,
        idempotency_key: str,
        reference_type: str,
        reference_id: str,
        description: str,
        meta: dict[str, Any] | None = None,
    ) -> tuple[bool, int, int]:
        """Take back credits that were paid for and then refunded or disputed; once per ``idempotency_key``.

        The balance gives back at most down to the tier's overdraft floor (the same atomic UPDATE as usage
        debits); the rest is recorded as owed (``owed_micros``), a debt kept outside the balance and settled by
        the next grant or top-up. Returns (applied, taken from the balance, added to owed). A zero amount still
        records the key (a replay must find it).
        """
        if amount_micros < 0:
            raise ValueError("claw-back amounts are not negative")
        row = self.ensure_account(account_id, session=s)
        if self._ledger_key_used(s, account_id, idempotency_key):
            return False, 0, 0
        taken = 0
        if amount_micros:
            taken, _ = self._debit_up_to(s, account_id, amount_micros, self.pricing.tier(row.tier).overdraft_micros)
        owed = amount_micros - taken
        entry = self._append_ledger(
            s,
            account_id=account_id,
            amount_micros=-taken,
            entry_type=entry_type,
            idempotency_key=idempotency_key,
            reference_type=reference_type,
            reference_id=reference_id,
            description=description,
            meta={**(meta or {}), "clawed_back_micros": amount_micros, "owed_micros": owed},
        )
        if entry is None:  # lost a race on the key: undo our debit in this transaction
            if taken:
                self._move_balance(s, account_id, taken)
            return False, 0, 0
        if owed:
            s.execute(
                update(BillingAccount)
                .where(BillingAccount.account_id == account_id)
                .values(owed_micros=BillingAccount.owed_micros + owed)
            )
        return True, taken, owed

    def grant_credits(
        self,
        account_id: str,
        amount_micros: int,
        *,
        idempotency_key: str,
        entry_type: str = "grant",
        reference_type: str | None = None,
        reference_id: str | None = None,
        description: str | None = None,
        meta: dict[str, Any] | None = None,
        session: Session | None = None,
    ) -> bool:
        """Grants, top-ups, refunds and positive adjustments; True when applied, False on a repeat key."""
        if entry_type not in ("grant", "top_up", "refund", "adjustment"):
            raise BadRequestError(f"not a crediting entry type: {entry_type}")
        with self._uow(session) as s:
            self.ensure_account(account_id, session=s)
            return self._credit(
                s,
                account_id,
                amount_micros,
                entry_type=entry_type,
                idempotency_key=idempotency_key,
                reference_type=reference_type,
                reference_id=reference_id,
                description=description,
                meta=meta,
            )

    def deduct_credits(
        self,
        account_id: str,
        amount_micros: int,
        *,
        idempotency_key: str,
        entry_type: str = "adjustment",
        description: str | None = None,
        reference_type: str | None = None,
        reference_id: str | None = None,
        session: Session | None = None,
    ) -> DeductResult:
        """Take exactly ``amount_micros`` or nothing: 402 when it would pass the tier's overdraft."""
        if amount_micros <= 0:
            raise BadRequestError("deduction amounts are positive")
        if entry_type not in ("usage_debit", "adjustment"):
            raise BadRequestError(f"not a debiting entry type: {entry_type}")
        with self._uow(session) as s:
            row = self.ensure_account(account_id, session=s)
            if self._ledger_key_used(s, account_id, idempotency_key):
                return DeductResult(False, 0, self._load(s, account_id).balance_micros)
            floor = -self.pricing.tier(row.tier).overdraft_micros
            new_balance = s.execute(
                update(BillingAccount)
                .where(
                    BillingAccount.account_id == account_id,
                    BillingAccount.balance_micros - amount_micros >= floor,
                )
                .values(balance_micros=BillingAccount.balance_micros - amount_micros, last_debit_micros=amount_micros)
                .returning(BillingAccount.balance_micros)
            ).scalar_one_or_none()
            if new_balance is None:
                raise PaymentRequiredError(
                    "insufficient credits",
                    details={"required": micros_to_credits(amount_micros), "account_id": account_id},
                )
            entry = self._append_ledger(
                s,
                account_id=account_id,
                amount_micros=-amount_micros,
                entry_type=entry_type,
                idempotency_key=idempotency_key,
                reference_type=reference_type,
                reference_id=reference_id,
                description=description,
            )
            if entry is None:
                new_balance = self._move_balance(s, account_id, amount_micros)
                return DeductResult(False, 0, new_balance)
            return DeductResult(True, amount_micros, int(new_balance))

    def _debit_up_to(self, s: Session, account_id: str, amount_micros: int, overdraft_micros: int) -> tuple[int, int]:
        """Take min(amount, balance + overdraft) in one statement; returns (taken, new balance).

        Both SET expressions read the pre-update row, so ``last_debit_micros`` is exactly what was taken;
        on PostgreSQL a concurrent UPDATE re-evaluates them against the committed row (no lost update).
        """
        available = self._greatest(s, BillingAccount.balance_micros + overdraft_micros, 0)
        taken = self._least(s, amount_micros, available)
        row = s.execute(
            update(BillingAccount)
            .where(BillingAccount.account_id == account_id)
            .values(balance_micros=BillingAccount.balance_micros - taken, last_debit_micros=taken)
            .returning(BillingAccount.last_debit_micros, BillingAccount.balance_micros)
        ).one()
        return int(row[0]), int(row[1])

    # -- usage ------------------------------------------------------------------------------------
    def calculate_credits(self, event: UsageEvent, tier: str | Tier | None = None) -> PricedUsage:
        tier_obj = tier if isinstance(tier, Tier) else self.pricing.tier(tier)
        return self.pricing.price(event.component, event.quantity, event.provider, event.model, tier_obj)

    def track_usage(self, events: Iterable[UsageEvent], *, session: Session | None = None) -> TrackResult:
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
        with self._uow(session) as s:
            # A fixed order (accounts, then keys): concurrent batches lock rows and unique-index entries in the
            # same order on PostgreSQL, so overlapping redeliveries wait for each other instead of deadlocking.
            for account_id in sorted(by_account):
                batch = [by_account[account_id][key] for key in sorted(by_account[account_id])]
                result = self._track_account(s, account_id, batch, repeats.get(account_id, []))
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

    def _invoiced_periods(self, s: Session, account_id: str, events: list[UsageEvent], now: datetime) -> set[str]:
        """The periods of these events that already have an invoice: their events are late.

        Only past periods can be invoiced. On PostgreSQL a SHARE lock on ``invoices`` (held until this transaction
        commits) waits for an invoice being created and keeps new ones out meanwhile, so an event is either
        visible to its period's invoice or flagged late here, never neither. SQLite serialises writers itself.
        """
        current_start = period_bounds(month_period(now))[0]
        past = {month_period(e.occurred_at) for e in events if e.occurred_at < current_start}
        if not past:
            return set()
        if self._is_pg(s):
            s.execute(text("LOCK TABLE invoices IN SHARE MODE"))
        return set(s.scalars(select(Invoice.period).where(Invoice.account_id == account_id, Invoice.period.in_(past))))

    def _track_account(
        self, s: Session, account_id: str, events: list[UsageEvent], repeats: Sequence[UsageEvent] = ()
    ) -> TrackResult:
        now = self.clock()
        invoiced = self._invoiced_periods(s, account_id, events, now)  # before any row lock: one lock order
        row = self.ensure_account(account_id, session=s)
        tier = self.pricing.tier(row.tier)
        ledger_id = new_id("led")
        rows: list[dict[str, Any]] = []
        for event in events:
            priced = self.calculate_credits(event, tier)
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
            self._insert(s, UsageEventRecord)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["account_id", "idempotency_key"])
            .returning(UsageEventRecord.id)
        )
        inserted = set(s.execute(stmt).scalars())
        fresh = [r for r in rows if r["id"] in inserted]
        already = [r for r in rows if r["id"] not in inserted]
        conflicts = self._record_conflicts(s, account_id, already + [_event_fields(e) for e in repeats], now)
        duplicates = sum(1 for r in already if (r["idempotency_key"], r["body_hash"]) not in conflicts)
        charged = sum(r["credits_micros"] for r in fresh)
        if not fresh:
            return TrackResult(0, duplicates, 0, 0, 0, len(conflicts))
        taken, _balance = (0, 0)
        if charged:
            taken, _balance = self._debit_up_to(s, account_id, charged, tier.overdraft_micros)
        self._append_ledger(
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
        self._count_minutes(s, account_id, fresh)
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
        self, s: Session, account_id: str, seen_again: list[dict[str, Any]], now: datetime
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
                self._insert(s, UsageEventConflict)
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
                self.monitoring.increment_counter(USAGE_CONFLICTS_METRIC, dimensions={"component": row["component"]})
            except Exception:  # a metric must never fail the usage it reports on
                log.exception("could not emit the %s metric", USAGE_CONFLICTS_METRIC)
        return conflicts

    def _count_minutes(self, s: Session, account_id: str, fresh: list[dict[str, Any]]) -> None:
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

    # -- reads ------------------------------------------------------------------------------------
    def get_balance(self, account_id: str, *, session: Session | None = None) -> BalanceOut:
        with self._uow(session) as s:
            row = self.ensure_account(account_id, session=s)
            tier = self.pricing.tier(row.tier)
            subscription = None
            if row.subscription_id:
                subscription = {
                    "id": row.subscription_id,
                    "status": row.subscription_status,
                    "tier": row.subscription_tier,
                    "current_period_end": row.subscription_period_end.isoformat()
                    if row.subscription_period_end
                    else None,
                    "cancel_at_period_end": row.cancel_at_period_end,
                }
            return BalanceOut(
                account_id=account_id,
                tier=row.tier,
                balance=micros_to_credits(row.balance_micros),
                balance_micros=row.balance_micros,
                overdraft=micros_to_credits(tier.overdraft_micros),
                available=micros_to_credits(row.balance_micros + tier.overdraft_micros - row.owed_micros),
                owed=micros_to_credits(row.owed_micros),
                currency_per_credit=self.pricing.usd_per_credit,
                currency=self.pricing.currency,
                subscription=subscription,
            )

    def ledger_sum(self, account_id: str, *, session: Session | None = None) -> int:
        with self._uow(session) as s:
            return int(
                s.scalar(
                    select(func.coalesce(func.sum(CreditLedgerEntry.amount_micros), 0)).where(
                        CreditLedgerEntry.account_id == account_id
                    )
                )
            )

    def list_ledger(
        self, account_id: str, *, limit: int = 50, cursor: str | None = None, session: Session | None = None
    ) -> tuple[list[LedgerEntryOut], str | None]:
        with self._uow(session) as s:
            self.ensure_account(account_id, session=s)
            q = select(CreditLedgerEntry).where(CreditLedgerEntry.account_id == account_id)
            items, next_cursor = keyset_page(s, q, CreditLedgerEntry, limit, cursor)
            out = [
                LedgerEntryOut(
                    id=e.id,
                    entry_type=e.entry_type,
                    amount=micros_to_credits(e.amount_micros),
                    amount_micros=e.amount_micros,
                    description=e.description,
                    reference_type=e.reference_type,
                    reference_id=e.reference_id,
                    created_at=e.created_at,
                )
                for e in items
            ]
            return out, next_cursor

    def list_usage_events(
        self,
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

        with self._uow(session) as s:
            rows: list[UsageEventOut] = []
            if status in (None, "recorded"):
                rows += [self._event_out(e) for e in page(UsageEventRecord)]
            if status in (None, "conflict"):
                rows += [self._conflict_out(c) for c in page(UsageEventConflict)]
            rows.sort(key=lambda row: row.id, reverse=True)
            return rows[:limit], (rows[limit - 1].id if len(rows) > limit else None)

    @staticmethod
    def _event_out(e: UsageEventRecord) -> UsageEventOut:
        return UsageEventOut(
            id=e.id,
            idempotency_key=e.idempotency_key,
            occurred_at=e.occurred_at,
            component=e.component,
            quantity=micro_to_quantity(e.quantity_micro),
            provider=e.provider,
            model=e.model,
            agent_id=e.agent_id,
            conversation_id=e.conversation_id,
            turn_id=e.turn_id,
            cost_usd=Decimal(e.cost_picousd) / 10**12,
            credits=micros_to_credits(e.credits_micros),
            covered=micros_to_credits(e.covered_micros),
            priced=e.priced,
        )

    @staticmethod
    def _conflict_out(c: UsageEventConflict) -> UsageEventOut:
        return UsageEventOut(
            id=c.id,
            idempotency_key=c.idempotency_key,
            occurred_at=c.occurred_at,
            component=c.component,
            quantity=micro_to_quantity(c.quantity_micro),
            provider=c.provider,
            model=c.model,
            agent_id=c.agent_id,
            conversation_id=c.conversation_id,
            turn_id=c.turn_id,
            cost_usd=Decimal(0),
            credits=micros_to_credits(0),
            covered=micros_to_credits(0),
            priced=False,
            status="conflict",
            conflicts_with=c.usage_event_id,
        )

    def get_usage_summary(
        self,
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
        with self._uow(session) as s:
            columns = []
            for g in group_by:
                if g == "day":
                    expr = (
                        func.to_char(func.timezone("UTC", UsageEventRecord.occurred_at), "YYYY-MM-DD")
                        if self._is_pg(s)
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

    def minutes_used(self, s: Session, account_id: str, now: datetime) -> int:
        """platform_minutes of the current month, in micro-minutes (the counter track_usage keeps)."""
        row = s.execute(
            select(BillingAccount.minutes_period, BillingAccount.minutes_used_micro).where(
                BillingAccount.account_id == account_id
            )
        ).one_or_none()
        if row is None or row[0] != month_period(now):
            return 0
        return int(row[1])

    def minutes_used_from_events(self, account_id: str, now: datetime, *, session: Session | None = None) -> int:
        """The same figure recomputed from the events (audits and tests: must equal ``minutes_used``)."""
        start, end = period_bounds(month_period(now))
        with self._uow(session) as s:
            return int(
                s.scalar(
                    select(func.coalesce(func.sum(UsageEventRecord.quantity_micro), 0)).where(
                        UsageEventRecord.account_id == account_id,
                        UsageEventRecord.component == UsageComponent.PLATFORM_MINUTES.value,
                        UsageEventRecord.occurred_at >= start,
                        UsageEventRecord.occurred_at < end,
                    )
                )
            )

    # -- limits -----------------------------------------------------------------------------------
    def check_usage_limits(
        self,
        account_id: str,
        *,
        starting_conversation: bool,
        active_conversations: int | None = None,
        session: Session | None = None,
    ) -> LimitCheck:
        """Call before a conversation starts (``starting_conversation=True``) and before each turn.

        ``active_conversations``: the caller's count of live conversations of this account (excluding the
        one being started); when omitted the injected counter is used; with neither it is not checked
        (``concurrent_conversations`` is None in the answer).
        """
        with self._uow(session) as s:
            row = self.ensure_account(account_id, session=s)
            tier = self.pricing.tier(row.tier)
            now = self.clock()
            account_status = s.scalar(select(Account.status).where(Account.id == account_id))
            if active_conversations is None and self.active_conversations is not None and starting_conversation:
                active_conversations = self.active_conversations(s, account_id)
            used_micro = self.minutes_used(s, account_id, now)
            # Credits owed for refunded/disputed payments reduce what may be started (they are settled by a top-up).
            available = row.balance_micros + tier.overdraft_micros - row.owed_micros
            base = {
                "tier": tier.name,
                "balance": micros_to_credits(row.balance_micros),
                "available": micros_to_credits(available),
                "minutes_used": micro_to_quantity(used_micro),
                "minutes_limit": tier.limits.minutes_per_month,
                "concurrent_conversations": active_conversations,
                "concurrent_limit": tier.limits.concurrent_conversations,
            }

            def deny(reason: str, message: str) -> LimitCheck:
                return LimitCheck(allowed=False, reason=reason, message=message, **base)

            if account_status != "active":
                return deny("account_inactive", "the account is not active")
            needed = tier.min_to_start_micros if starting_conversation else 0
            if available <= needed:
                return deny(
                    "insufficient_credits",
                    f"insufficient credits: available {micros_to_credits(available)}, "
                    f"{'starting a conversation needs more than ' + micros_to_credits(needed) if starting_conversation else 'a turn needs a positive balance'}; top up or change plan",
                )
            limit_minutes = tier.limits.minutes_per_month
            if limit_minutes is not None and used_micro >= limit_minutes * MICROS_PER_CREDIT:
                return deny(
                    "monthly_minutes_limit",
                    f"the {tier.display_name} tier allows {limit_minutes} conversation minutes per month; "
                    f"{micro_to_quantity(used_micro)} used",
                )
            limit_conc = tier.limits.concurrent_conversations
            if (
                starting_conversation
                and limit_conc is not None
                and active_conversations is not None
                and active_conversations >= limit_conc
            ):
                return deny(
                    "concurrent_conversation_limit",
                    f"the {tier.display_name} tier allows {limit_conc} concurrent conversation(s)",
                )
            return LimitCheck(allowed=True, **base)

    def check_kb_size(self, account_id: str, *, total_bytes: int, session: Session | None = None) -> None:
        """Raise 402 when a knowledge base of ``total_bytes`` (after the upload) exceeds the tier's size."""
        with self._uow(session) as s:
            tier = self.pricing.tier(self.ensure_account(account_id, session=s).tier)
        limit = tier.limits.kb_size_mb
        if limit is not None and total_bytes > limit * 1024 * 1024:
            raise PaymentRequiredError(
                f"the {tier.display_name} tier allows {limit} MB of knowledge base content",
                code="kb_size_limit",
                details={"limit_mb": limit, "total_bytes": total_bytes},
            )

    # -- daily roll-up ----------------------------------------------------------------------------
    def rollup_day(self, day: str, *, session: Session | None = None) -> int:
        """Recompute ``usage_daily`` for one UTC day (YYYY-MM-DD) from the events: idempotent."""
        start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
        end = start + timedelta(days=1)
        with self._uow(session) as s:
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
            s.execute(UsageDaily.__table__.delete().where(UsageDaily.day == day))
            now = self.clock()
            if results:
                s.execute(
                    UsageDaily.__table__.insert(),
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

    # -- invoices (delegates to the invoicing service) --------------------------------------------
    def generate_invoice(self, account_id: str, period: str, *, session: Session | None = None) -> Any:
        """Aggregate one period's usage into an invoice record (idempotent per account and period)."""
        from airies.billing.invoicing import InvoicingService

        with self._uow(session) as s:
            return InvoicingService(s, pricing=self.pricing, clock=self.clock).prepare_invoice(account_id, period)


# --- publishers ------------------------------------------------------------------------------------


class DirectUsagePublisher:
    """Local runs and tests: track in-process, in a unit of work of its own."""

    def __init__(self, service: UsageService) -> None:
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


def build_usage_service(
    settings: Settings | None = None, database: Database | None = None, **kwargs: Any
) -> UsageService:
    from airies.core.config import get_settings
    from airies.core.database import get_database

    settings = settings or get_settings()
    return UsageService(database or get_database(settings), **kwargs)


def build_usage_publisher(settings: Settings | None = None, database: Database | None = None) -> UsagePublisher:
    from airies.core.config import get_settings

    settings = settings or get_settings()
    if settings.usage_queue_url:
        return SqsUsagePublisher(
            settings.usage_queue_url, region=settings.aws_region, endpoint_url=settings.aws_endpoint_url
        )
    return DirectUsagePublisher(build_usage_service(settings, database))


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


__all__ = [
    "DeductResult",
    "DirectUsagePublisher",
    "SqsUsagePublisher",
    "TrackResult",
    "UsagePublisher",
    "UsageService",
    "build_usage_publisher",
    "build_usage_service",
]
