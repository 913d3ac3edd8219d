"""Usage tracking and the credit ledger on both databases: exactness, idempotency, limits."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func

import airies.billing.pricing as pricing_module
from airies.accounts.models import Account
from airies.billing.pricing import Pricing
from airies.billing.schemas import MICROS_PER_CREDIT, UsageEvent
from airies.billing.usage import UsageService
from airies.core.errors import PaymentRequiredError
from airies.core.ids import new_id

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


def test_pro_overdraft_and_no_calendar_grant_for_paid_tiers(database):
    acc = make_account(database, plan="pro")
    svc = service(database)
    # Pro's included credits come only with a paid subscription invoice (PaymentService), never by calendar month:
    # not on the first read, not in a later month.
    assert svc.get_balance(acc).balance == "0.000000"
    later = UsageService(database, clock=lambda: datetime(2026, 12, 1, tzinfo=UTC))
    assert later.get_balance(acc).balance == "0.000000"
    svc.grant_credits(acc, 10_000 * MICROS_PER_CREDIT, idempotency_key="subscription_grant:in_test")
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
    from airies.billing.invoicing import InvoicingService
    from airies.billing.models import Invoice, UsageEventRecord

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
        s.query(UsageEventRecord).update({UsageEventRecord.invoice_id: None})  # as if never invoiced
    with database.session() as s:
        service = InvoicingService(s, clock=lambda: oct_)
        for acc in accounts[:3]:
            service.prepare_invoice(acc, "2026-10")
    assert snapshot() == bulk
    assert bulk[accounts[0]][0] == "draft" and bulk[accounts[1]][0] == "no_charge"
    assert 0 < bulk[accounts[2]][1] < bulk[accounts[0]][1] + 100


def test_free_tier_monthly_grant_is_once_per_account_and_month(database):
    """Unpaid tiers keep a calendar-month grant (free has 0 today; a pricing with 100 shows the rule): once per
    account and month, whatever the number of reads, the tier switches in between, or other accounts."""
    data = json.loads((Path(pricing_module.__file__).parent.parent / "data" / "pricing.json").read_text())
    data["tiers"]["free"]["included_monthly_credits"] = "100"
    pricing = Pricing(pricing=data)
    a, b = make_account(database), make_account(database)
    nov = UsageService(database, pricing=pricing, clock=lambda: NOW)
    for _ in range(3):
        assert nov.get_balance(a).balance == "600.000000"  # 500 signup + 100 for November
    nov.set_tier(a, "pay_as_you_go")
    nov.set_tier(a, "free")  # back to free in the same month: no second November grant
    assert nov.get_balance(a).balance == "600.000000"
    assert nov.get_balance(b).balance == "600.000000"  # the other account gets its own
    dec = UsageService(database, pricing=pricing, clock=lambda: datetime(2026, 12, 2, tzinfo=UTC))
    assert dec.get_balance(a).balance == dec.get_balance(a).balance == "700.000000"
    assert nov.ledger_sum(a) == 700 * MICROS_PER_CREDIT


def test_idempotency_keys_are_scoped_to_the_account(database):
    """The same key on two accounts is two events (and two ledger entries), never a cross-account duplicate."""
    a, b = make_account(database), make_account(database)
    svc = service(database)
    first = svc.track_usage([event(a, "turn-1:out")])
    other = svc.track_usage([event(b, "turn-1:out")])
    assert (first.accepted, first.duplicates) == (1, 0)
    assert (other.accepted, other.duplicates, other.charged_micros) == (1, 0, 1_500_000)
    both = svc.track_usage([event(a, "turn-1:out"), event(b, "turn-1:out")])  # real redeliveries: duplicates
    assert (both.accepted, both.duplicates) == (0, 2)
    assert svc.get_balance(a).balance == svc.get_balance(b).balance == "498.500000"
    assert svc.deduct_credits(a, MICROS_PER_CREDIT, idempotency_key="refund-fee").applied
    assert svc.deduct_credits(b, MICROS_PER_CREDIT, idempotency_key="refund-fee").applied
    assert svc.grant_credits(a, MICROS_PER_CREDIT, idempotency_key="gift")
    assert svc.grant_credits(b, MICROS_PER_CREDIT, idempotency_key="gift")
    for acc in (a, b):
        assert svc.ensure_account(acc).balance_micros == svc.ledger_sum(acc) == 498_500_000


def _late_usage_run(database, bulk: bool) -> None:
    from airies.billing.invoicing import InvoicingService
    from airies.billing.models import Invoice, UsageEventRecord

    oct_, nov = datetime(2026, 10, 20, tzinfo=UTC), datetime(2026, 11, 20, tzinfo=UTC)
    acc = make_account(database, "pay_as_you_go")  # no credits: all usage is uncovered, billed on invoices
    svc = UsageService(database, clock=lambda: nov)
    minutes = lambda key, when, qty: UsageEvent(  # noqa: E731
        idempotency_key=key, account_id=acc, occurred_at=when, component="platform_minutes", quantity=Decimal(qty)
    )

    def run(period: str) -> Invoice:
        with database.session() as s:
            invoicing = InvoicingService(s, clock=lambda: nov)
            if bulk:
                invoicing.prepare_invoices_bulk(period)
            else:
                invoicing.prepare_invoice(acc, period)
        with database.session() as s:
            return s.query(Invoice).filter_by(account_id=acc, period=period).one_or_none()

    svc.track_usage([minutes("oct-1", oct_, "10")])
    october = run("2026-10")
    # 10 min * (4 + 0.52) credits = 45.2 credits = 45 cents
    assert october.amount_cents == 45 and october.billable_micros == 45_200_000
    # Redriven from the DLQ after October was invoiced: it occurred in October.
    svc.track_usage([minutes("oct-late", oct_, "5")])
    assert run("2026-10").amount_cents == 45  # October's invoice never changes
    svc.track_usage([minutes("nov-1", nov, "20")])
    november = run("2026-11")
    assert november.billable_micros == (5 + 20) * 4_520_000  # November's usage + the late October event, once
    assert november.amount_cents == 113
    assert run("2026-11").billable_micros == november.billable_micros  # re-run: the same invoice
    december = run("2026-12")  # nothing left: the late event is not billed again
    if bulk:
        assert december is None  # the bulk run invoices billable accounts only
    else:
        assert december.billable_micros == 0 and december.status == "no_charge"
    with database.session() as s:
        marks = {
            key: (late, invoice_id)
            for key, late, invoice_id in s.query(
                UsageEventRecord.idempotency_key, UsageEventRecord.late, UsageEventRecord.invoice_id
            ).filter_by(account_id=acc)
        }
    # Only the late event is marked (by the invoice that billed it); the others are billed by their period.
    assert marks == {"oct-1": (False, None), "oct-late": (True, november.id), "nov-1": (False, None)}
    total = sum(i.billable_micros for i in (october, november, december) if i is not None)
    with database.session() as s:
        uncovered = s.query(func.sum(UsageEventRecord.credits_micros - UsageEventRecord.covered_micros)).filter_by(
            account_id=acc
        )
        assert total == uncovered.scalar()  # every uncovered credit billed exactly once


def test_late_usage_is_billed_once_on_the_next_invoice(database):
    _late_usage_run(database, bulk=False)


def test_late_usage_is_billed_once_on_the_next_invoice_bulk(database):
    _late_usage_run(database, bulk=True)
