"""Usage tracking and the credit ledger on both databases: exactness, idempotency, limits."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from airies.db.ids import new_id
from airies.db.models import Account
from airies.errors import PaymentRequiredError
from airies.schemas.usage import MICROS_PER_CREDIT, UsageEvent
from airies.services.usage import UsageService

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)


def make_account(database, plan: str = "free") -> str:
    account_id = new_id("acc")
    with database.session() as s:
        s.add(Account(id=account_id, name="T", email=f"{account_id}@example.com", plan=plan, status="active"))
    return account_id


def event(account_id: str, key: str, component: str = "llm_output_tokens", quantity: str = "1000", **kw) -> UsageEvent:
    defaults = {"provider": "openai", "model": "gpt-4o"}
    defaults.update(kw)
    return UsageEvent(
        idempotency_key=key,
        account_id=account_id,
        occurred_at=NOW,
        component=component,
        quantity=Decimal(quantity),
        **defaults,
    )


def service(database) -> UsageService:
    return UsageService(database, clock=lambda: NOW)


def test_signup_grant_once_and_balance_equals_ledger(database):
    acc = make_account(database)
    svc = service(database)
    b1 = svc.get_balance(acc)
    b2 = svc.get_balance(acc)
    assert b1.balance == b2.balance == "500.000000"
    assert svc.ledger_sum(acc) == 500 * MICROS_PER_CREDIT


def test_track_usage_prices_exactly_and_is_idempotent(database):
    acc = make_account(database)
    svc = service(database)
    # gpt-4o output: $10 / Mtok; 1000 tokens = $0.01; free markup 50% -> $0.015 = 1.5 credits
    first = svc.track_usage([event(acc, "t1:out")])
    assert (first.accepted, first.duplicates, first.charged_micros) == (1, 0, 1_500_000)
    again = svc.track_usage([event(acc, "t1:out"), event(acc, "t1:out")])
    assert (again.accepted, again.duplicates, again.charged_micros) == (0, 1, 0)
    assert svc.get_balance(acc).balance == "498.500000"
    assert svc.ledger_sum(acc) == svc.ensure_account(acc).balance_micros
    events, _ = svc.list_usage_events(acc)
    assert [e.credits for e in events] == ["1.500000"]
    assert events[0].covered == "1.500000"


def test_usage_beyond_balance_is_recorded_uncovered_never_negative_on_free(database):
    acc = make_account(database)
    svc = service(database)
    # 60 platform minutes on free = 300 credits fee + cost; two such events exceed the 500 grant.
    r = svc.track_usage(
        [
            event(acc, "c1:min", "platform_minutes", "60", provider=None, model=None),
            event(acc, "c2:min", "platform_minutes", "60", provider=None, model=None),
        ]
    )
    assert r.accepted == 2 and r.uncovered_micros > 0
    assert r.debited_micros == 500 * MICROS_PER_CREDIT
    bal = svc.ensure_account(acc)
    assert bal.balance_micros == 0
    assert svc.ledger_sum(acc) == 0
    check = svc.check_usage_limits(acc, starting_conversation=False)
    assert not check.allowed and check.reason == "insufficient_credits"
    with pytest.raises(PaymentRequiredError):
        check.raise_for_status()


def test_deduct_credits_is_all_or_nothing(database):
    acc = make_account(database)
    svc = service(database)
    with pytest.raises(PaymentRequiredError):
        svc.deduct_credits(acc, 501 * MICROS_PER_CREDIT, idempotency_key="big")
    assert svc.ensure_account(acc).balance_micros == 500 * MICROS_PER_CREDIT
    r = svc.deduct_credits(acc, 200 * MICROS_PER_CREDIT, idempotency_key="k1")
    assert r.applied and r.balance_micros == 300 * MICROS_PER_CREDIT
    r2 = svc.deduct_credits(acc, 200 * MICROS_PER_CREDIT, idempotency_key="k1")
    assert not r2.applied and r2.balance_micros == 300 * MICROS_PER_CREDIT
    assert svc.ledger_sum(acc) == 300 * MICROS_PER_CREDIT


def test_pro_overdraft_and_monthly_grant(database):
    acc = make_account(database, plan="pro")
    svc = service(database)
    assert svc.get_balance(acc).balance == "10000.000000"  # included monthly credits, granted once
    svc.get_balance(acc)
    r = svc.deduct_credits(acc, 11_000 * MICROS_PER_CREDIT, idempotency_key="od")
    assert r.balance_micros == -1000 * MICROS_PER_CREDIT  # within the 2000-credit overdraft
    with pytest.raises(PaymentRequiredError):
        svc.deduct_credits(acc, 1001 * MICROS_PER_CREDIT, idempotency_key="od2")
    assert svc.ledger_sum(acc) == svc.ensure_account(acc).balance_micros


def test_limits_minutes_and_concurrency(database):
    acc = make_account(database)
    svc = service(database)
    ok = svc.check_usage_limits(acc, starting_conversation=True, active_conversations=0)
    assert ok.allowed
    busy = svc.check_usage_limits(acc, starting_conversation=True, active_conversations=1)
    assert busy.reason == "concurrent_conversation_limit"
    svc.grant_credits(acc, 10_000 * MICROS_PER_CREDIT, idempotency_key="gift")
    svc.track_usage([event(acc, "m", "platform_minutes", "60", provider=None, model=None)])
    over = svc.check_usage_limits(acc, starting_conversation=False)
    assert over.reason == "monthly_minutes_limit" and over.minutes_used == "60"
    # The O(1) counter equals the events; a late event of an older month does not count for this month.
    late = event(acc, "late", "platform_minutes", "7", provider=None, model=None)
    svc.track_usage([late.model_copy(update={"occurred_at": datetime(2026, 10, 31, tzinfo=UTC)})])
    with database.session() as s:
        assert svc.minutes_used(s, acc, NOW) == svc.minutes_used_from_events(acc, NOW) == 60_000_000


def test_tenancy_summary_only_own_events(database):
    a, b = make_account(database), make_account(database)
    svc = service(database)
    svc.track_usage([event(a, "a1"), event(b, "b1", quantity="2000")])
    start, end = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    summary = svc.get_usage_summary(a, start=start, end=end, group_by=["component", "model"])
    assert summary.total_credits == "1.500000"
    assert summary.rows[0].key == {"component": "llm_output_tokens", "model": "gpt-4o"}
    by_day = svc.get_usage_summary(a, start=start, end=end, group_by=["day"])
    assert by_day.rows[0].key == {"day": "2026-11-15"}


def test_rollup_day_is_idempotent(database):
    acc = make_account(database)
    svc = service(database)
    svc.track_usage([event(acc, "r1"), event(acc, "r2"), event(acc, "r3", "stt_seconds", "30", provider="deepgram")])
    assert svc.rollup_day("2026-11-15") == 2
    assert svc.rollup_day("2026-11-15") == 2


def test_bulk_invoices_equal_per_account_invoices(database):
    """The set-based bulk path (one SQL statement on PostgreSQL) and the per-account path of the state machine
    compute the same invoices from the same events."""
    from airies.db.models.billing import Invoice
    from airies.services.invoicing import InvoicingService

    oct_ = datetime(2026, 10, 5, tzinfo=UTC)
    svc = UsageService(database, clock=lambda: oct_)
    accounts = [make_account(database, plan) for plan in ("pay_as_you_go", "pro", "pay_as_you_go", "free")]
    svc.grant_credits(accounts[2], 3 * MICROS_PER_CREDIT, idempotency_key="partial")  # partly covered
    for i, acc in enumerate(accounts):
        svc.track_usage(
            [
                UsageEvent(
                    idempotency_key=f"{acc}:1",
                    account_id=acc,
                    occurred_at=oct_,
                    component="platform_minutes",
                    quantity=Decimal("3.25"),
                ),
                UsageEvent(
                    idempotency_key=f"{acc}:2",
                    account_id=acc,
                    occurred_at=oct_,
                    component="llm_output_tokens",
                    quantity=Decimal(1234 * (i + 1)),
                    provider="openai",
                    model="gpt-4o",
                ),
                UsageEvent(
                    idempotency_key=f"{acc}:3",
                    account_id=acc,
                    occurred_at=oct_,
                    component="tts_characters",
                    quantity=Decimal("777"),
                    provider="elevenlabs",
                    model=None,
                ),
                UsageEvent(
                    idempotency_key=f"{acc}:4",
                    account_id=acc,
                    occurred_at=oct_,
                    component="kb_pages",
                    quantity=Decimal("0.5"),
                ),
            ]
        )

    def snapshot() -> dict:
        with database.session() as s:
            return {
                i.account_id: (i.status, i.amount_cents, i.total_credits_micros, i.billable_micros, i.lines)
                for i in s.query(Invoice).all()
            }

    with database.session() as s:
        assert InvoicingService(s, clock=lambda: oct_).prepare_invoices_bulk("2026-10") == 3
    bulk = snapshot()
    with database.session() as s:
        assert InvoicingService(s, clock=lambda: oct_).prepare_invoices_bulk("2026-10") == 0  # idempotent
        s.query(Invoice).delete()
    with database.session() as s:
        service = InvoicingService(s, clock=lambda: oct_)
        for acc in accounts[:3]:
            service.prepare_invoice(acc, "2026-10")
    assert snapshot() == bulk
    assert bulk[accounts[0]][0] == "draft" and bulk[accounts[1]][0] == "no_charge"
    assert 0 < bulk[accounts[2]][1] < bulk[accounts[0]][1] + 100
