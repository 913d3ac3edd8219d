"""Every AWS::Serverless::Function in template.yaml has sample events, and every sample event invokes cleanly.

Functions and events are discovered from template.yaml and infra/events/ at collection time, so functions that
other capabilities add are covered automatically. An event's sidecar (``<event>.meta.json``, see
``airies.local.invoke.EventMeta`` and docs/operations.md) declares what it needs: ``database`` events run once per backend
(SQLite and PostgreSQL, through the ``database`` fixture), ``aws`` events run under moto with the template's
resources created, ``expect`` pins the result. Without ``expect`` an HTTP result must be < 500.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from airies.local.invoke import run_sample_event, sample_events
from airies.local.template import function_specs, load_template

FUNCTIONS = sorted(function_specs(load_template()))
EVENTS = [(fn, path) for fn in FUNCTIONS for path in sample_events(fn)]


def _ids(items: list[tuple[str, Path]]) -> list[str]:
    return [path.name for _, path in items]


@pytest.mark.parametrize("function", FUNCTIONS)
def test_every_function_has_a_sample_event(function: str) -> None:
    assert sample_events(function), f"{function}: add at least one infra/events/{function}.<case>.json"


def test_the_template_has_functions_and_events() -> None:
    assert "ApiFunction" in FUNCTIONS
    assert len(EVENTS) >= len(FUNCTIONS)


# Every event runs once per backend: a handler that opens the database at first use needs one either way.
@pytest.mark.parametrize(("function", "event_path"), EVENTS, ids=_ids(EVENTS))
def test_sample_event(function: str, event_path: Path, database, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)  # anything a handler or setup writes under .data stays out of the repo
    monkeypatch.setenv("AIRIES_DATA_DIR", str(tmp_path / ".data"))
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    run_sample_event(function, event_path, database_url=database.url)


def test_invoking_sample_events_reuses_one_sample_account(database, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Every invoke used to sign up another "Sample events" account in the (dev) database."""
    from sqlalchemy import func, select

    from airies.accounts.models import Account, ApiKey
    from airies.core.config import PROJECT_ROOT

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AIRIES_DATA_DIR", str(tmp_path / ".data"))
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    events = PROJECT_ROOT / "infra" / "events"
    for _ in range(2):
        result = run_sample_event("ApiFunction", events / "ApiFunction.list-agents.json", database_url=database.url)
        assert result["statusCode"] == 200
    run_sample_event(
        "BillingInvoiceFunction", events / "BillingInvoiceFunction.aggregate.json", database_url=database.url
    )
    with database.session() as session:
        accounts = session.scalars(select(Account).where(Account.name == "Sample events")).all()
        assert len(accounts) == 1
        assert session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.account_id == accounts[0].id)) == 1
    assert oct((tmp_path / ".data" / "sample_events_api_key").stat().st_mode & 0o777) == "0o600"
