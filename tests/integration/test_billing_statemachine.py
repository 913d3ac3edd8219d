"""The monthly invoicing state machine (infra/statemachines/billing_invoices.asl.json) executed by moto.

moto runs the ASL itself (``execute_state_machine``), but cannot run the project's Python inside a Lambda
task without Docker: this test routes moto's Lambda invocations to the real BillingInvoiceFunction handler
(functions/billing/invoices.py), loaded in this process by the local invoker, by replacing
``LambdaSimpleBackend.invoke``. Stripe is the wire-level double of tests/doubles/stripe_server.py.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from airies.accounts.models import Account
from airies.billing.models import Invoice
from airies.billing.schemas import UsageEvent
from airies.billing.usage import UsageService
from airies.core.ids import new_id
from airies.local.template import state_machine_definition
from tests.doubles.stripe_server import StripeInvoiceDouble
from tests.sfn_support import StateMachineHarness

OCT = datetime(2026, 10, 20, 12, 0, tzinfo=UTC)


def account(database, plan: str, email: str) -> str:
    account_id = new_id("acc")
    with database.session() as s:
        s.add(Account(id=account_id, name=email, email=email, plan=plan, status="active"))
    return account_id


def use(svc: UsageService, account_id: str, key: str, minutes: str) -> None:
    svc.track_usage(
        [
            UsageEvent(
                idempotency_key=key,
                account_id=account_id,
                occurred_at=OCT,
                component="platform_minutes",
                quantity=Decimal(minutes),
            )
        ]
    )


class Harness(StateMachineHarness):
    """The invoicing state machine, its tasks run by BillingInvoiceFunction's handler; Stripe is the double."""

    def __init__(self, database, stripe: StripeInvoiceDouble) -> None:
        super().__init__(
            "BillingInvoiceFunction",
            "BillingInvoiceStateMachine",
            {
                "DATABASE_URL": database.url,
                "AIRIES_STRIPE_SECRET_KEY": stripe.api_key,
                "AIRIES_STRIPE_API_BASE": stripe.url,
                "AIRIES_STRIPE_MAX_NETWORK_RETRIES": "0",
                "AIRIES_BILLING_EVENT_BUS": "",
            },
        )
        self.database = database


def invoices(database) -> dict[str, Invoice]:
    with database.session() as s:
        return {i.account_id: i for i in s.scalars(select(Invoice).where(Invoice.period == "2026-10"))}


@pytest.fixture
def stripe_double():
    double = StripeInvoiceDouble().start()
    yield double
    double.stop()


def test_monthly_run_bills_each_account_once_survives_failures_and_reruns(database, stripe_double):
    svc = UsageService(database, clock=lambda: OCT)
    billed = account(database, "pay_as_you_go", "billed@example.com")  # no credits: usage is all overage
    covered = account(database, "pro", "covered@example.com")  # 10,000 included credits cover it
    # Pro's included credits arrive with its paid subscription invoice (invoice.paid webhook): granted here directly.
    svc.grant_credits(covered, 10_000 * 1_000_000, idempotency_key="subscription_grant:in_statemachine")
    rejected = account(database, "pay_as_you_go", "rejected@example.com")  # Stripe refuses its customer
    free = account(database, "free", "free@example.com")  # free tier: never invoiced
    use(svc, billed, "b1", "30")
    use(svc, billed, "b2", "12.5")
    use(svc, covered, "c1", "100")
    use(svc, rejected, "r1", "10")
    use(svc, free, "f1", "5")
    stripe_double.reject_emails.add("rejected@example.com")
    stripe_double.fail_next("/v1/invoices/", status=500)  # one transient failure: retried with backoff

    with Harness(database, stripe_double) as harness:
        result = harness.run({"period": "2026-10", "page_size": 1})  # one account per page: the loop runs
        assert result["status"] == "SUCCEEDED", result
        rows = invoices(database)
        assert set(rows) == {billed, covered, rejected}
        # pay-as-you-go: 42.5 minutes * (4 credits + $0.004 * 1.3 / $0.01) = 192.1 credits = $1.921 -> 192 cents
        assert rows[billed].status == "open" and rows[billed].amount_cents == 192
        assert rows[billed].stripe_invoice_id and rows[billed].hosted_invoice_url
        assert rows[covered].status == "no_charge" and rows[covered].stripe_invoice_id is None
        assert rows[rejected].status == "draft" and "Invalid email" in (rows[rejected].error or "")
        stripe_invoice = stripe_double.invoices[rows[billed].stripe_invoice_id]
        assert stripe_invoice["amount_due"] == 192 and stripe_invoice["status"] == "open"
        assert stripe_invoice["metadata"]["airies_invoice_id"] == rows[billed].id
        # The injected 500 hit the read-back after the create; the retried step re-sent the create with the
        # same idempotency key and got the same invoice back: one invoice exists at Stripe.
        creates = [r for r in stripe_double.requests if r[0] == "POST" and r[1] == "/v1/invoices"]
        assert len(creates) == 2 and len({r[3] for r in creates}) == 1
        assert len(stripe_double.invoices) == 1
        assert stripe_double.count("POST", r"/v1/invoices/[^/]+/finalize") == 1
        assert any(e["action"] == "record_failure" for e in harness.invocations)

        # Re-run the same period: nothing is billed twice.
        again = harness.run({"period": "2026-10"})
        assert again["status"] == "SUCCEEDED", again
        assert stripe_double.count("POST", "/v1/invoices") == 2  # no new create
        assert len(stripe_double.invoices) == 1
        assert stripe_double.count("POST", r"/v1/invoices/[^/]+/finalize") == 1

        # Once the cause is fixed, a re-run bills the account that failed, exactly once.
        stripe_double.reject_emails.clear()
        third = harness.run({"period": "2026-10"})
        assert third["status"] == "SUCCEEDED", third
        rows = invoices(database)
        assert rows[rejected].status == "open" and rows[rejected].stripe_invoice_id
        assert len(stripe_double.invoices) == 2
        assert len({i["metadata"]["airies_invoice_id"] for i in stripe_double.invoices.values()}) == 2
        assert stripe_double.count("POST", r"/v1/invoices/[^/]+/finalize") == 2


def history(sfn, execution_arn: str) -> list[dict[str, Any]]:
    events, token = [], None
    while True:
        page = sfn.get_execution_history(
            executionArn=execution_arn, maxResults=1000, **({"nextToken": token} if token else {})
        )
        events += page["events"]
        token = page.get("nextToken")
        if not token:
            return events


def many_accounts(database, svc: UsageService, count: int, *, prefix: str) -> list[str]:
    """``count`` pay-as-you-go accounts, each with a sliver of usage: billable, but under a cent (no_charge)."""
    ids = [f"acc_{prefix}{i:05d}" for i in range(count)]
    with database.session() as s:
        s.add_all(Account(id=i, name=i, email=f"{i}@example.com", plan="pay_as_you_go", status="active") for i in ids)
    events = [
        UsageEvent(
            idempotency_key=f"{i}:sliver",
            account_id=i,
            occurred_at=OCT,
            component="platform_minutes",
            quantity=Decimal("0.001"),
        )
        for i in ids
    ]
    for start in range(0, count, 1000):
        svc.track_usage(events[start : start + 1000])
    return ids


# The parent's history must not grow with accounts: these events are the run's fixed cost (plan, map run, end).
PARENT_EVENTS_MAX = 40
HISTORY_LIMIT = 25_000
# 1,200 accounts (past the ~1,000 where one execution with an inline Map hit the history limit) in every run;
# AIRIES_TEST_INVOICING_ACCOUNTS=10000 runs the full size (about 3.5 minutes on SQLite; docs/deployment.md).
SCALE_ACCOUNTS = int(os.environ.get("AIRIES_TEST_INVOICING_ACCOUNTS", "1200"))


def test_many_accounts_keep_every_history_bounded_by_the_page_size(database, stripe_double):
    """Thousands of billable accounts under moto: the parent execution's history stays constant in the number of
    accounts (one Distributed Map run over pages of 250); every account gets its invoice exactly once.

    moto executes the Distributed Map's child executions but keeps their histories to itself, so a child is also
    run as its own state machine below, where its history is measured per billed account.
    """
    svc = UsageService(database, clock=lambda: OCT)
    small = many_accounts(database, svc, SCALE_ACCOUNTS, prefix="m")
    billed = [account(database, "pay_as_you_go", f"big{i}@example.com") for i in range(3)]
    for i, account_id in enumerate(billed):
        use(svc, account_id, f"big{i}", "30")

    with Harness(database, stripe_double) as harness:
        result = harness.run({"period": "2026-10"}, timeout=900)
        assert result["status"] == "SUCCEEDED", result
        events = history(harness.sfn, result["executionArn"])
        assert len(events) <= PARENT_EVENTS_MAX, [e["type"] for e in events]
        assert sum(e["type"] == "MapRunStarted" for e in events) == 1
        plans = [e for e in harness.invocations if e["action"] == "plan_pages"]
        pages = [e for e in harness.invocations if e["action"] == "aggregate_page"]
        assert len(plans) == 1 and {p["page_size"] for p in pages} == {250}
        assert len(pages) == math.ceil((SCALE_ACCOUNTS + len(billed)) / 250)

        rows = invoices(database)
        assert set(rows) == {*small, *billed}
        assert {rows[a].status for a in small} == {"no_charge"}
        assert all(rows[a].status == "open" and rows[a].stripe_invoice_id for a in billed)
        assert len(stripe_double.invoices) == 3

        # A small run has the same parent history: its length does not depend on the number of accounts.
        again = harness.run({"period": "2026-10", "page_size": 5000})
        assert again["status"] == "SUCCEEDED"
        assert len(history(harness.sfn, again["executionArn"])) == len(events)
        assert len(stripe_double.invoices) == 3  # the re-run billed nobody twice


def test_a_page_child_execution_stays_far_under_the_history_limit(database, stripe_double):
    """One page's child execution (the Distributed Map's ItemProcessor) as its own state machine: its history is
    measured for two page sizes of billed accounts (every account through Stripe: the longest path), and the
    events per billed account times the default page size, doubled for retries, stays under 25,000."""
    svc = UsageService(database, clock=lambda: OCT)
    for i in range(30):
        use(svc, account(database, "pay_as_you_go", f"child{i}@example.com"), f"child{i}", "20")

    with Harness(database, stripe_double) as harness:
        definition = json.loads(
            state_machine_definition(harness.ctx, harness.ctx.resources["BillingInvoiceStateMachine"])
        )
        processor = definition["States"]["InvoicePages"]["ItemProcessor"]
        child = {"StartAt": processor["StartAt"], "States": processor["States"]}
        arn = harness.sfn.create_state_machine(
            name="invoice-page", definition=json.dumps(child), roleArn="arn:aws:iam::123456789012:role/sfn"
        )["stateMachineArn"]

        def page_history(size: int, cursor: str | None) -> list[dict[str, Any]]:
            execution = harness.sfn.start_execution(
                stateMachineArn=arn,
                name=f"page-{uuid.uuid4().hex[:8]}",
                input=json.dumps({"period": "2026-10", "cursor": cursor, "page_size": size}),
            )["executionArn"]
            deadline = time.monotonic() + 300
            while harness.sfn.describe_execution(executionArn=execution)["status"] == "RUNNING":
                assert time.monotonic() < deadline, "the page did not finish"
                time.sleep(0.2)
            assert harness.sfn.describe_execution(executionArn=execution)["status"] == "SUCCEEDED"
            return history(harness.sfn, execution)

        first = page_history(10, None)
        cursor = sorted(invoices(database))[9]
        second = page_history(20, cursor)
        assert all(i.status == "open" for i in invoices(database).values())
        per_account = (len(second) - len(first)) / 10
        fixed = len(first) - 10 * per_account
        assert 10 <= per_account <= 40, per_account
        worst = fixed + harness.module.DEFAULT_PAGE_SIZE * per_account * 2
        assert worst < HISTORY_LIMIT, (fixed, per_account, worst)
