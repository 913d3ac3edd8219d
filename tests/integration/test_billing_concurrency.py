"""Concurrent deductions never overdraw nor lose an update; the balance always equals the ledger.

Runs on both databases: PostgreSQL with real row-level concurrency (many threads, many connections),
SQLite with its single writer lock.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from airies.db.ids import new_id
from airies.db.models import Account
from airies.db.models.billing import CreditLedgerEntry, UsageEventRecord
from airies.errors import PaymentRequiredError
from airies.schemas.usage import MICROS_PER_CREDIT, UsageEvent
from airies.services.usage import UsageService

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
