"""The credit ledger: billing accounts, credits and debits, exactly once.

Exactness rules:
* credits are integers of micro-credits; quantities are stored as integer micro-units;
* the ledger is append-only and ``billing_accounts.balance_micros`` always equals the sum of the
  account's ledger entries: every balance move and its ledger row are written in one transaction;
* a balance moves only through one conditional/atomic ``UPDATE ... RETURNING`` (a row lock on
  PostgreSQL, the single writer lock on SQLite), so concurrent deductions never overdraw nor lose updates;
* ledger idempotency keys are scoped to the account: a repeated key writes nothing;
* included monthly credits: tiers without a price (free, pay-as-you-go) get them per calendar month, once per
  account and month (ledger key ``monthly_grant:<account>:<YYYY-MM>``); paid tiers (``monthly_price_usd > 0``)
  get them only when a subscription invoice is paid (``PaymentService``, key ``subscription_grant:<in_...>``);
* refunds and disputes take credits back with ``claw_back``: never below the tier's overdraft; what the balance
  cannot give back is owed (``billing_accounts.owed_micros``, outside the balance) and is settled first by the
  next grant or top-up, each settlement a ledger entry of its own.

Usage is charged through this ledger by ``metering``; ``limits`` decides what may start; ``reports`` reads usage
back. ``UsageService`` (``usage.py``) is the ledger with all three.

Every public method takes an optional ``session``: pass the caller's session to work inside its
transaction (the ledger and the caller's writes commit or roll back together); without one the
service opens its own unit of work.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from airies.accounts.models import Account
from airies.billing.models import BillingAccount, CreditLedgerEntry
from airies.billing.pricing import TIERS, Pricing, get_pricing
from airies.billing.schemas import BalanceOut, LedgerEntryOut, micros_to_credits
from airies.core.database import Database
from airies.core.errors import BadRequestError, NotFoundError, PaymentRequiredError
from airies.core.ids import new_id
from airies.core.metrics import MonitoringService
from airies.core.models import utcnow

LEDGER_ENTRY_TYPES = ("grant", "top_up", "usage_debit", "refund", "adjustment")
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


def keyset_page(
    session: Session, query: Any, model: Any, limit: int, cursor: str | None
) -> tuple[list[Any], str | None]:
    """One page of ``query`` newest id first, after ``cursor``; the next cursor is None on the last page."""
    if cursor:
        query = query.where(model.id < cursor)
    rows = list(session.scalars(query.order_by(model.id.desc()).limit(limit + 1)))
    return rows[:limit], (rows[limit - 1].id if len(rows) > limit else None)


@dataclass(frozen=True)
class DeductResult:
    applied: bool  # False when the idempotency key was already used
    debited_micros: int
    balance_micros: int


ActiveConversationCounter = Callable[[Session, str], int]


class Ledger:
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
    def unit_of_work(self, session: Session | None) -> Iterator[Session]:
        if session is not None:
            yield session
            return
        if self.database is None:
            raise RuntimeError("the ledger needs a session or a database")
        with self.database.session() as own:
            yield own

    def is_pg(self, session: Session) -> bool:
        return session.get_bind().dialect.name == "postgresql"

    def insert(self, session: Session, model: Any) -> Any:
        """INSERT with the dialect's ``on_conflict_do_nothing`` (PostgreSQL's or SQLite's: the bound database's own,
        whose package its engine has loaded; naming both here would load SQLite's in every production function)."""
        return importlib.import_module(f"sqlalchemy.dialects.{session.get_bind().dialect.name}").insert(model)

    def least(self, session: Session, *args: Any) -> Any:
        return func.least(*args) if self.is_pg(session) else func.min(*args)

    def greatest(self, session: Session, *args: Any) -> Any:
        return func.greatest(*args) if self.is_pg(session) else func.max(*args)

    # -- billing accounts -------------------------------------------------------------------------
    def ensure_account(self, account_id: str, *, session: Session | None = None) -> BillingAccount:
        """The billing row of an account, created lazily with the tier's signup grant (idempotent),
        and, on tiers without a price, topped with their included monthly credits once per calendar month."""
        with self.unit_of_work(session) as s:
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
                    self.insert(s, BillingAccount)
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
                row = self.load(s, account_id)
            self._ensure_monthly_grant(s, row)
            return row

    def load(self, s: Session, account_id: str) -> BillingAccount:
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
        with self.unit_of_work(session) as s:
            row = self.ensure_account(account_id, session=s)
            if row.tier != tier:
                s.execute(
                    update(BillingAccount)
                    .where(BillingAccount.account_id == account_id)
                    .values(tier=tier, monthly_grant_period=None, updated_at=self.clock())
                )
                s.execute(update(Account).where(Account.id == account_id).values(plan=tier))
                row = self.load(s, account_id)
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
        with self.unit_of_work(session) as s:
            return self._ledger_key_used(s, account_id, key)

    def append_ledger(
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
            self.insert(s, CreditLedgerEntry)
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
        entry = self.append_ledger(
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
        settle = self.least(s, b.owed_micros, credited)
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
        self.append_ledger(
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
            taken, _ = self.debit_up_to(s, account_id, amount_micros, self.pricing.tier(row.tier).overdraft_micros)
        owed = amount_micros - taken
        entry = self.append_ledger(
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
        with self.unit_of_work(session) as s:
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
        with self.unit_of_work(session) as s:
            row = self.ensure_account(account_id, session=s)
            if self._ledger_key_used(s, account_id, idempotency_key):
                return DeductResult(False, 0, self.load(s, account_id).balance_micros)
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
            entry = self.append_ledger(
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

    def debit_up_to(self, s: Session, account_id: str, amount_micros: int, overdraft_micros: int) -> tuple[int, int]:
        """Take min(amount, balance + overdraft) in one statement; returns (taken, new balance).

        Both SET expressions read the pre-update row, so ``last_debit_micros`` is exactly what was taken;
        on PostgreSQL a concurrent UPDATE re-evaluates them against the committed row (no lost update).
        """
        available = self.greatest(s, BillingAccount.balance_micros + overdraft_micros, 0)
        taken = self.least(s, amount_micros, available)
        row = s.execute(
            update(BillingAccount)
            .where(BillingAccount.account_id == account_id)
            .values(balance_micros=BillingAccount.balance_micros - taken, last_debit_micros=taken)
            .returning(BillingAccount.last_debit_micros, BillingAccount.balance_micros)
        ).one()
        return int(row[0]), int(row[1])

    # -- reads ------------------------------------------------------------------------------------
    def get_balance(self, account_id: str, *, session: Session | None = None) -> BalanceOut:
        with self.unit_of_work(session) as s:
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
        with self.unit_of_work(session) as s:
            return int(
                s.scalar(
                    select(func.coalesce(func.sum(CreditLedgerEntry.amount_micros), 0)).where(
                        CreditLedgerEntry.account_id == account_id
                    )
                )
                or 0
            )

    def list_ledger(
        self, account_id: str, *, limit: int = 50, cursor: str | None = None, session: Session | None = None
    ) -> tuple[list[LedgerEntryOut], str | None]:
        with self.unit_of_work(session) as s:
            self.ensure_account(account_id, session=s)
            q = select(CreditLedgerEntry).where(CreditLedgerEntry.account_id == account_id)
            items, next_cursor = keyset_page(s, q, CreditLedgerEntry, limit, cursor)
            return [LedgerEntryOut.model_validate(e) for e in items], next_cursor
