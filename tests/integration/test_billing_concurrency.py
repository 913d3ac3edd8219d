"""Concurrent deductions never overdraw nor lose an update; the balance always equals the ledger.

Runs on both databases: PostgreSQL with real row-level concurrency (many threads, many connections),
SQLite with its single writer lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from airies.accounts.models import Account
from airies.billing.models import CreditLedgerEntry, UsageEventRecord
from airies.billing.schemas import MICROS_PER_CREDIT, UsageEvent
from airies.billing.usage import UsageService
from airies.core.database import Database
from airies.core.errors import PaymentRequiredError
from airies.core.ids import new_id

NOW = datetime(2026, 11, 10, tzinfo=UTC)
THREADS = 12


def make_account(database, plan: str = "free") -> str:
    account_id = new_id("acc")
    with database.session() as s:
        s.add(Account(id=account_id, name="C", email=f"{account_id}@example.com", plan=plan, status="active"))
    return account_id


def test_parallel_deductions_never_overdraw_nor_lose_updates(database):
    svc = UsageService(database, clock=lambda: NOW)
    acc = make_account(database)  # 500 credits
    svc.ensure_account(acc)
    amount = 7 * MICROS_PER_CREDIT
    ok, refused = [], []
    lock = threading.Lock()
    barrier = threading.Barrier(THREADS)

    def worker(t: int) -> None:
        barrier.wait()
        for i in range(8):  # 12 * 8 * 7 = 672 credits demanded of 500
            try:
                result = svc.deduct_credits(acc, amount, idempotency_key=f"d:{t}:{i}")
                with lock:
                    ok.append(result)
            except PaymentRequiredError:
                with lock:
                    refused.append((t, i))

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(worker, range(THREADS)))
    final = svc.ensure_account(acc).balance_micros
    assert len(ok) == 500 // 7  # exactly as many as fit: 71
    assert final == 500 * MICROS_PER_CREDIT - len(ok) * amount == 3 * MICROS_PER_CREDIT
    assert len(ok) + len(refused) == THREADS * 8
    assert svc.ledger_sum(acc) == final


def test_parallel_usage_batches_and_redeliveries_debit_exactly_the_balance(database):
    svc = UsageService(database, clock=lambda: NOW)
    acc = make_account(database)
    svc.ensure_account(acc)
    barrier = threading.Barrier(THREADS)

    def worker(t: int) -> None:
        barrier.wait()
        for i in range(5):
            # Every key is sent by two threads (a redelivery racing the original).
            key = f"turn-{(t // 2)}-{i}"
            event = UsageEvent(
                idempotency_key=key,
                account_id=acc,
                occurred_at=NOW,
                component="platform_minutes",
                quantity=Decimal("2"),  # free: 2 * 5 credits fee + 2 * $0.004 * 1.5 / $0.01 = 11.2 credits
            )
            svc.track_usage([event])

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(worker, range(THREADS)))
    with database.session() as s:
        events = s.scalar(select(func.count()).where(UsageEventRecord.account_id == acc))
        charged = s.scalar(select(func.sum(UsageEventRecord.credits_micros)).where(UsageEventRecord.account_id == acc))
        covered = s.scalar(select(func.sum(UsageEventRecord.covered_micros)).where(UsageEventRecord.account_id == acc))
    assert events == (THREADS // 2) * 5  # 30 distinct keys, each counted once
    assert charged == 30 * 11_200_000
    assert covered == 30 * 11_200_000  # 336 credits fit in 500
    final = svc.ensure_account(acc).balance_micros
    assert final == 500 * MICROS_PER_CREDIT - covered
    with database.session() as s:  # the monthly minutes counter saw every distinct event once
        assert svc.minutes_used(s, acc, NOW) == svc.minutes_used_from_events(acc, NOW) == 60 * 1_000_000
    assert svc.ledger_sum(acc) == final


def test_racing_first_reads_grant_the_signup_credits_once(database):
    svc = UsageService(database, clock=lambda: NOW)
    acc = make_account(database)
    barrier = threading.Barrier(8)

    def worker(_: int) -> int:
        barrier.wait()
        return svc.get_balance(acc).balance_micros

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, range(8)))
    with database.session() as s:
        grants = s.scalar(select(func.count()).where(CreditLedgerEntry.account_id == acc))
    assert grants == 1
    assert svc.ensure_account(acc).balance_micros == 500 * MICROS_PER_CREDIT


operations = st.lists(
    st.one_of(
        st.tuples(st.just("grant"), st.integers(1, 5_000_000_000)),
        st.tuples(st.just("deduct"), st.integers(1, 5_000_000_000)),
        st.tuples(st.just("usage"), st.decimals(min_value=0, max_value=5000, places=3)),
        st.tuples(st.just("replay"), st.integers(0, 50)),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations, plan=st.sampled_from(["free", "pay_as_you_go", "pro"]))
def test_property_balance_always_equals_the_ledger_and_respects_the_floor(database, ops, plan):
    svc = UsageService(database, clock=lambda: NOW)
    acc = make_account(database, plan)
    floor = -svc.pricing.tier(plan).overdraft_micros
    keys: list[str] = []
    for n, (op, value) in enumerate(ops):
        if op == "grant":
            svc.grant_credits(acc, value, idempotency_key=f"{acc}:g{n}")
        elif op == "deduct":
            try:
                svc.deduct_credits(acc, value, idempotency_key=f"{acc}:d{n}")
            except PaymentRequiredError:
                pass
        elif op == "usage":
            key = f"{acc}:u{n}"
            keys.append(key)
            svc.track_usage(
                [
                    UsageEvent(
                        idempotency_key=key,
                        account_id=acc,
                        occurred_at=NOW,
                        component="llm_output_tokens",
                        quantity=value,
                        provider="openai",
                        model="gpt-4o",
                    )
                ]
            )
        elif keys:  # replay an earlier event: must change nothing
            before = svc.ensure_account(acc).balance_micros
            key = keys[value % len(keys)]
            svc.track_usage(
                [
                    UsageEvent(
                        idempotency_key=key,
                        account_id=acc,
                        occurred_at=NOW,
                        component="llm_output_tokens",
                        quantity=Decimal(1),
                        provider="openai",
                        model="gpt-4o",
                    )
                ]
            )
            assert svc.ensure_account(acc).balance_micros == before
        balance = svc.ensure_account(acc).balance_micros
        assert balance == svc.ledger_sum(acc)
        assert balance >= floor


# --- PostgreSQL: at the balance/overdraft boundary ------------------------------------------------------------


@pytest.fixture
def pg_database(postgres_url: str) -> Iterator[Database]:
    """PostgreSQL only: real row-level concurrency (SQLite's single writer would serialise everything)."""
    from tests.conftest import _databases, _truncate

    if postgres_url not in _databases:
        _databases[postgres_url] = Database(postgres_url, pool_size=5, max_overflow=10)
    database = _databases[postgres_url]
    yield database
    _truncate(database)


def near_zero_pro(database) -> tuple[UsageService, str]:
    """A pro account (2,000-credit overdraft; no calendar grant) holding 30 credits: the floor is 2,030 away."""
    svc = UsageService(database, clock=lambda: NOW)
    acc = make_account(database, "pro")
    svc.ensure_account(acc)
    svc.grant_credits(acc, 30 * MICROS_PER_CREDIT, idempotency_key="near-zero")
    return svc, acc


def minutes_event(acc: str, key: str) -> UsageEvent:
    # pro: 20 min * (3 credits + $0.004 * 1.2 / $0.01) = 69.6 credits
    return UsageEvent(
        idempotency_key=key, account_id=acc, occurred_at=NOW, component="platform_minutes", quantity=Decimal(20)
    )


def test_pg_parallel_usage_across_the_overdraft_floor_takes_exactly_down_to_it(pg_database):
    database = pg_database
    assert database.dialect == "postgresql"
    svc, acc = near_zero_pro(database)
    floor = -2000 * MICROS_PER_CREDIT
    barrier = threading.Barrier(THREADS)

    def worker(t: int) -> None:
        barrier.wait()
        for i in range(8):  # every key sent by two threads: a redelivery racing the original
            svc.track_usage([minutes_event(acc, f"turn-{t // 2}-{i}")])

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(worker, range(THREADS)))
    with database.session() as s:
        e = UsageEventRecord
        events, charged, covered = s.execute(
            select(func.count(), func.sum(e.credits_micros), func.sum(e.covered_micros)).where(e.account_id == acc)
        ).one()
    assert events == (THREADS // 2) * 8  # 48 distinct keys, each counted once
    assert charged == 48 * 69_600_000  # 3,340.8 credits demanded of 2,030 available
    assert covered == 2030 * MICROS_PER_CREDIT  # every available micro-credit taken, none more
    final = svc.ensure_account(acc).balance_micros
    assert final == floor  # exactly at the overdraft floor, never below
    assert svc.ledger_sum(acc) == final  # no lost update: the balance is the sum of its entries


def test_pg_parallel_deductions_and_usage_near_zero_respect_the_floor_and_the_ledger(pg_database):
    database = pg_database
    svc, acc = near_zero_pro(database)
    floor = -2000 * MICROS_PER_CREDIT
    amount = 7 * MICROS_PER_CREDIT
    deducted: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(THREADS)

    def worker(t: int) -> None:
        barrier.wait()
        for i in range(30):
            if (t + i) % 3:
                try:
                    svc.deduct_credits(acc, amount, idempotency_key=f"d:{t}:{i}")
                    with lock:
                        deducted.append(amount)
                except PaymentRequiredError:
                    pass
            else:
                svc.track_usage([minutes_event(acc, f"u:{t}:{i}")])

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(worker, range(THREADS)))
    final = svc.ensure_account(acc).balance_micros
    with database.session() as s:
        covered = s.scalar(select(func.sum(UsageEventRecord.covered_micros)).where(UsageEventRecord.account_id == acc))
    assert final >= floor
    assert svc.ledger_sum(acc) == final
    # Every micro-credit that left the balance is a successful deduction or a covered part of an event.
    assert 30 * MICROS_PER_CREDIT - final == sum(deducted) + covered
    # Usage alone demands 120 * 69.6 = 8,352 credits of the 2,030 available and the balance only goes down, so some
    # event was only partly covered: the floor was reached exactly, by whichever operation came last.
    assert final == floor


def test_pg_usage_recorded_while_its_period_is_invoiced_is_billed_exactly_once(pg_database):
    """A past-period event tracked while that period's invoice is being created waits for it (the SHARE lock on
    invoices), then is flagged late and billed by the next invoice: never by neither, never by both."""
    from sqlalchemy import text

    from airies.billing.invoicing import InvoicingService
    from airies.billing.models import Invoice

    database = pg_database
    october, november = datetime(2026, 10, 20, tzinfo=UTC), datetime(2026, 11, 20, tzinfo=UTC)
    acc = make_account(database, "pay_as_you_go")  # no credits: every event is billed on an invoice
    svc = UsageService(database, clock=lambda: november)

    def event(key: str, when: datetime) -> UsageEvent:
        return UsageEvent(
            idempotency_key=key, account_id=acc, occurred_at=when, component="platform_minutes", quantity=Decimal(10)
        )

    svc.track_usage([event("oct-1", october)])
    invoicing_session = database.session_factory()
    InvoicingService(invoicing_session, clock=lambda: november).prepare_invoice(acc, "2026-10")  # not committed
    tracker = threading.Thread(target=svc.track_usage, args=([event("oct-during", october)],))
    tracker.start()
    try:
        waiting = 0
        for _ in range(500):  # until the tracker waits on the invoices lock (pg_locks: a lock not granted)
            with database.engine.connect() as conn:
                waiting = conn.execute(
                    text("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'invoices'::regclass")
                ).scalar_one()
            if waiting or not tracker.is_alive():
                break
            threading.Event().wait(0.01)
        assert waiting == 1, "the tracker did not wait for the invoice being created"
    finally:
        invoicing_session.commit()
        invoicing_session.close()
        tracker.join(10)
    with database.session() as s:
        assert s.scalar(select(UsageEventRecord.late).where(UsageEventRecord.idempotency_key == "oct-during")) is True
        oct_invoice = s.scalar(select(Invoice).where(Invoice.account_id == acc, Invoice.period == "2026-10"))
        assert oct_invoice.billable_micros == 45_200_000  # oct-1 only: 10 min * 4.52 credits
        nov_invoice = InvoicingService(s, clock=lambda: november).prepare_invoice(acc, "2026-11")
        assert nov_invoice.billable_micros == 45_200_000  # the late one, once
