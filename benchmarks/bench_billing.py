"""Billing on PostgreSQL: invoice aggregation at scale, and credit deductions under concurrency.

Data: a temporary database (migrated to head) with 10,000 pay-as-you-go accounts and 1,000,000 usage events in
one month, generated inside the server with ``INSERT ... SELECT generate_series`` (no client round trips).

1. Invoice aggregation, beside the bare ``GROUP BY`` in the same run (alternating, median of N):
   - ``bare``: the aggregation query alone, every row fetched;
   - ``aggregate``: ``InvoicingService._aggregate`` + building every account's line items (what the run computes);
   - ``prepare_bulk``: ``prepare_invoices_bulk``: aggregation, line items and the 10,000 invoice rows written, in
     one server-side statement on PostgreSQL (rows deleted between repetitions).
   Targets: prepare_bulk <= 2x bare and < 10 s.
   Also: the per-account step of the state machine (``prepare_invoice``) on a sample of accounts.
2. Credit deductions per second (``deduct_credits``: conditional UPDATE + ledger row + commit, one transaction each)
   from 8 threads: all on ONE account (one hot row) and each thread on its own account.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from typing import Any

from benchmarks import harness

PG_ADMIN_URL = "postgresql+pg8000://postgres@127.0.0.1:5432/postgres"
ACCOUNTS = 10_000
EVENTS = 1_000_000
PERIOD = "2026-10"
THREADS = 8
DEDUCT_SECONDS = 3.0

GENERATE_ACCOUNTS = """
INSERT INTO accounts (id, name, email, plan, status, created_at, updated_at)
SELECT 'acc_bench_' || lpad(i::text, 6, '0'), 'Bench ' || i, 'bench' || i || '@example.com',
       'pay_as_you_go', 'active', now(), now()
FROM generate_series(0, :n - 1) AS i;
INSERT INTO billing_accounts (account_id, tier, balance_micros, last_debit_micros, minutes_used_micro,
                              cancel_at_period_end, created_at, updated_at)
SELECT 'acc_bench_' || lpad(i::text, 6, '0'), 'pay_as_you_go', 0, 0, 0, false, now(), now()
FROM generate_series(0, :n - 1) AS i;
"""

# Nine components with a fixed provider/model each; quantities and credits vary; ~half the credits covered.
GENERATE_EVENTS = """
INSERT INTO usage_events (id, account_id, idempotency_key, occurred_at, component, quantity_micro, provider, model,
                          agent_id, conversation_id, turn_id, tier, priced, cost_picousd, credits_micros,
                          covered_micros, ledger_entry_id, metadata, created_at)
SELECT 'use_bench_' || i,
       'acc_bench_' || lpad(mod(i, :accounts)::text, 6, '0'),
       'bench:' || i,
       timestamptz '2026-10-01 00:00:00+00' + mod(i::bigint * 2654435761, 2678400) * interval '1 second',
       (ARRAY['stt_seconds','llm_input_tokens','llm_cached_tokens','llm_output_tokens','tts_characters',
              'platform_minutes','storage_gb_hours','kb_pages','embedding_tokens'])[1 + mod(i / :accounts, 9)],
       (1 + mod(i, 5000)) * 1000000::bigint,
       (ARRAY['deepgram','openai','openai','openai','elevenlabs',NULL,NULL,NULL,'openai'])[1 + mod(i / :accounts, 9)],
       (ARRAY['nova-3','gpt-4o-mini','gpt-4o-mini','gpt-4o-mini','eleven_flash_v2_5',NULL,NULL,NULL,
              'text-embedding-3-small'])[1 + mod(i / :accounts, 9)],
       'agt_bench_' || mod(i, 7), 'conv_bench_' || (i / 10), NULL, 'pay_as_you_go', true,
       mod(i, 997) * 1000000::bigint,
       (100 + mod(i, 100000))::bigint,
       CASE WHEN mod(i, 2) = 0 THEN (100 + mod(i, 100000))::bigint ELSE 0 END,
       NULL, '{}'::jsonb, now()
FROM generate_series(0, :events - 1) AS i;
ANALYZE usage_events;
"""


def _create_database() -> tuple[str, str]:
    from sqlalchemy import create_engine, text

    name = f"airies_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return name, PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def _drop_database(name: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _generate(database: Any) -> float:
    from sqlalchemy import text

    started = time.perf_counter()
    with database.engine.begin() as conn:
        for statement in GENERATE_ACCOUNTS.strip().split(";\n"):
            if statement.strip():
                conn.execute(text(statement), {"n": ACCOUNTS})
        for statement in GENERATE_EVENTS.strip().split(";\n"):
            if statement.strip():
                conn.execute(text(statement.rstrip(";")), {"accounts": ACCOUNTS, "events": EVENTS})
    return time.perf_counter() - started


def _bare_group_by(database: Any) -> tuple[float, int]:
    from sqlalchemy import text

    from airies.billing.ledger import period_bounds

    start, end = period_bounds(PERIOD)
    sql = text(
        "SELECT account_id, component, provider, model, sum(quantity_micro), sum(credits_micros), "
        "sum(covered_micros), count(*) FROM usage_events "
        "WHERE occurred_at >= :start AND occurred_at < :end AND tier IN ('enterprise', 'pay_as_you_go', 'pro') "
        "GROUP BY account_id, component, provider, model"
    )
    with database.engine.connect() as conn:
        t0 = time.perf_counter()
        rows = conn.execute(sql, {"start": start, "end": end}).fetchall()
        return time.perf_counter() - t0, len(rows)


def _service_aggregate(database: Any) -> tuple[float, int]:
    from airies.billing.invoicing import InvoicingService

    with database.session() as session:
        service = InvoicingService(session)
        t0 = time.perf_counter()
        aggregated = service._aggregate(PERIOD)
        invoices = [service._lines(groups) for groups in aggregated.values()]
        return time.perf_counter() - t0, len(invoices)


def _prepare_bulk(database: Any) -> tuple[float, int]:
    from sqlalchemy import create_engine, text

    from airies.billing.invoicing import InvoicingService

    # Every repetition is a first run: no invoices, and no event marked as billed by an earlier repetition (a rerun
    # over marked events does almost nothing and would flatter the figure).
    with database.engine.begin() as conn:
        conn.execute(text("DELETE FROM invoices"))
        conn.execute(text("UPDATE usage_events SET invoice_id = NULL WHERE invoice_id IS NOT NULL"))
    vacuum = create_engine(database.engine.url, isolation_level="AUTOCOMMIT")  # VACUUM refuses a transaction
    with vacuum.connect() as conn:
        conn.execute(text("VACUUM ANALYZE usage_events"))
    vacuum.dispose()
    t0 = time.perf_counter()
    with database.session() as session:
        created = InvoicingService(session).prepare_invoices_bulk(PERIOD)
    return time.perf_counter() - t0, created


def _per_account(database: Any, sample: int = 200) -> dict[str, float]:
    from sqlalchemy import text

    from airies.billing.invoicing import InvoicingService

    with database.engine.begin() as conn:
        conn.execute(text("DELETE FROM invoices"))
        conn.execute(text("UPDATE usage_events SET invoice_id = NULL WHERE invoice_id IS NOT NULL"))
    timings = []
    for i in range(0, ACCOUNTS, ACCOUNTS // sample):
        account_id = f"acc_bench_{i:06d}"
        t0 = time.perf_counter()
        with database.session() as session:
            InvoicingService(session).prepare_invoice(account_id, PERIOD)
        timings.append((time.perf_counter() - t0) * 1000)
    return {
        "accounts": len(timings),
        "p50_ms": round(harness.percentile(timings, 50), 2),
        "p95_ms": round(harness.percentile(timings, 95), 2),
        "projected_10k_sequential_s": round(statistics.fmean(timings) * ACCOUNTS / 1000, 1),
    }


def _deductions(database: Any, accounts: list[str]) -> dict[str, Any]:
    """THREADS threads deduct 1 micro-credit each time for DEDUCT_SECONDS; thread t uses accounts[t % len]."""
    from airies.billing.usage import UsageService

    service = UsageService(database)
    counts = [0] * THREADS
    stop = time.perf_counter() + DEDUCT_SECONDS
    barrier = threading.Barrier(THREADS)
    run = uuid.uuid4().hex[:8]

    def worker(t: int) -> None:
        account_id = accounts[t % len(accounts)]
        barrier.wait()
        n = 0
        while time.perf_counter() < stop:
            service.deduct_credits(account_id, 1, idempotency_key=f"bench:{run}:{t}:{n}")
            n += 1
        counts[t] = n

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - t0
    total = sum(counts)
    # Exactness check after the storm: balance == sum(ledger) on every account used.
    exact = all(service.ledger_sum(a) == service.ensure_account(a).balance_micros for a in set(accounts))
    return {
        "threads": THREADS,
        "deductions": total,
        "per_second": round(total / elapsed, 1),
        "balance_equals_ledger": exact,
    }


def run(args: Any = None) -> dict[str, Any]:
    from sqlalchemy import text

    from airies.billing.usage import UsageService
    from airies.core.database import Database
    from airies.migrations.runner import upgrade_head

    repetitions = getattr(args, "runs", None) or 3
    name, url = _create_database()
    try:
        upgrade_head(url)
        database = Database(url, pool_size=THREADS + 2, max_overflow=4)
        generate_s = _generate(database)
        # Warm the cache once for both sides, then alternate so noise hits both alike.
        _bare_group_by(database)
        bare, agg, bulk = [], [], []
        groups = invoices = 0
        for _ in range(repetitions):
            seconds, groups = _bare_group_by(database)
            bare.append(seconds)
            seconds, _n = _service_aggregate(database)
            agg.append(seconds)
            seconds, invoices = _prepare_bulk(database)
            bulk.append(seconds)
        per_account = _per_account(database)

        # Deductions: give every account plenty of credits (a grant through the service: ledger-consistent).
        usage = UsageService(database)
        hot = ["acc_bench_000001"]
        many = [f"acc_bench_{i:06d}" for i in range(2, 2 + THREADS)]
        for account_id in hot + many:
            usage.grant_credits(account_id, 10**15, idempotency_key=f"bench-grant:{account_id}")
        one_account = _deductions(database, hot)
        many_accounts = _deductions(database, many)
        with database.engine.connect() as conn:
            events = conn.execute(text("SELECT count(*) FROM usage_events")).scalar_one()
        database.dispose()
    finally:
        _drop_database(name)

    bare_s, agg_s, bulk_s = statistics.median(bare), statistics.median(agg), statistics.median(bulk)
    return {
        "accounts": ACCOUNTS,
        "usage_events": events,
        "generate_s": round(generate_s, 2),
        "aggregation": {
            "groups": groups,
            "invoices": invoices,
            "bare_group_by_s": round(bare_s, 3),
            "service_aggregate_s": round(agg_s, 3),
            "prepare_invoices_bulk_s": round(bulk_s, 3),
            "ratio_aggregate_to_bare": round(agg_s / bare_s, 2),
            "ratio_bulk_to_bare": round(bulk_s / bare_s, 2),
            "runs": {
                "bare": [round(x, 3) for x in bare],
                "aggregate": [round(x, 3) for x in agg],
                "bulk": [round(x, 3) for x in bulk],
            },
        },
        "per_account_prepare_invoice": per_account,
        "deductions_one_account": one_account,
        "deductions_many_accounts": many_accounts,
        "targets": [
            harness.target("prepare_invoices_bulk / bare GROUP BY", bulk_s / bare_s, 2.0, "x"),
            harness.target("prepare_invoices_bulk (10k accounts, 1M events)", bulk_s, 10.0, "s"),
        ],
    }
