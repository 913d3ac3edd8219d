"""Warm latency of an authenticated ``GET /api/v1/agents/{id}`` through the Lambda handler, on PostgreSQL.

functions/api/handler.py is loaded once (one warm container) with its template env and a fresh temporary
PostgreSQL database (migrated to head; one account, one agent), then invoked with an API Gateway HTTP API v2
event, in-process, like the Lambda runtime does after init. Logs go to /dev/null (their formatting is still paid).
Baseline measured in the same run: ``GET /api/v1/health`` (no auth, one ``SELECT 1``).
Target: p95 < 10 ms.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
import time
import uuid
from typing import Any

from benchmarks import harness

WARMUP = 50
DEFAULT_RUNS = 500
PG_ADMIN_URL = os.environ.get("AIRIES_TEST_PG_URL", "postgresql+pg8000://postgres@127.0.0.1:5432/postgres")


@contextlib.contextmanager
def temporary_database() -> Any:
    from sqlalchemy import create_engine, text

    name = f"airies_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _seed(url: str) -> tuple[str, str]:
    from airies.accounts.service import AccountService
    from airies.agents.schemas import AgentCreate
    from airies.agents.service import AgentService
    from airies.core.database import Database
    from airies.migrations.runner import upgrade_head

    upgrade_head(url)
    database = Database(url)
    try:
        with database.session() as session:
            account, issued = AccountService(session).signup(name="Bench", email=f"bench-{uuid.uuid4().hex[:8]}@x.io")
            agent = AgentService(session).create(
                account.id,
                AgentCreate(
                    name="Front desk",
                    system_prompt="You are a concise receptionist.",
                    first_message="Hello, how can I help?",
                ),
            )
            return issued.raw_key, agent.id
    finally:
        database.dispose()


def _event(path: str, api_key: str | None) -> dict[str, Any]:
    sample = json.loads((harness.ROOT / "infra" / "events" / "ApiFunction.health.json").read_text())
    event = copy.deepcopy(sample)
    event["rawPath"] = path
    event["requestContext"]["http"]["path"] = path
    event["requestContext"]["http"]["method"] = "GET"
    event["pathParameters"] = {"proxy": path.removeprefix("/api/v1/")}
    if api_key:
        event["headers"]["authorization"] = f"Bearer {api_key}"
    return event


def _measure(handler: Any, spec: Any, event: dict[str, Any], runs: int) -> list[float]:
    from airies.local.invoke import LambdaContext

    timings = []
    for index in range(WARMUP + runs):
        event["requestContext"]["requestId"] = f"bench-{index}"
        context = LambdaContext(spec)
        started = time.perf_counter()
        result = handler(event, context)
        elapsed = (time.perf_counter() - started) * 1000.0
        if result["statusCode"] != 200:
            raise RuntimeError(f"unexpected {result['statusCode']}: {result.get('body')}")
        if index >= WARMUP:
            timings.append(elapsed)
    return timings


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(harness.percentile(values, 50), 3),
        "p95_ms": round(harness.percentile(values, 95), 3),
        "p99_ms": round(harness.percentile(values, 99), 3),
        "mean_ms": round(sum(values) / len(values), 3),
    }


def run(args: Any) -> dict[str, Any]:
    from airies.local.invoke import _clear_container_caches, load_handler, patched_environ
    from airies.local.template import function_environment, function_specs, local_context

    runs = getattr(args, "requests", None) or DEFAULT_RUNS
    ctx = local_context()
    spec = function_specs(ctx.template)["ApiFunction"]
    with temporary_database() as url:
        api_key, agent_id = _seed(url)
        env = function_environment(spec, ctx)
        env.update(DATABASE_URL=url, AWS_ENDPOINT_URL=None)
        with patched_environ(env), open(os.devnull, "w") as devnull:
            _clear_container_caches()
            handler, module = load_handler(spec)
            stdout = sys.stdout
            sys.stdout = devnull  # Powertools logs to stdout
            try:
                health = _measure(handler, spec, _event("/api/v1/health", None), runs)
                agent = _measure(handler, spec, _event(f"/api/v1/agents/{agent_id}", api_key), runs)
            finally:
                sys.stdout = stdout
                module.app.state.database.dispose()
                _clear_container_caches()
    agent_stats, health_stats = _summary(agent), _summary(health)
    print(f"  {'':<34}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}")
    print(
        f"  {'GET /api/v1/health (baseline)':<34}{health_stats['p50_ms']:>9.2f}{health_stats['p95_ms']:>9.2f}{health_stats['p99_ms']:>9.2f}"
    )
    print(
        f"  {'GET /api/v1/agents/{id} (auth)':<34}{agent_stats['p50_ms']:>9.2f}{agent_stats['p95_ms']:>9.2f}{agent_stats['p99_ms']:>9.2f}"
    )
    return {
        "runs": runs,
        "warmup": WARMUP,
        "database": "postgresql (temporary database, pg8000)",
        "baseline": {"name": "GET /api/v1/health", **health_stats},
        "get_agent": agent_stats,
        "ratio_p50_to_health": round(agent_stats["p50_ms"] / health_stats["p50_ms"], 2),
        "targets": [harness.target("GET /api/v1/agents/{id} p95", agent_stats["p95_ms"], 10.0, "ms")],
    }
