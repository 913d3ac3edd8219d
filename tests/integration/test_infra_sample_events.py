"""Every AWS::Serverless::Function in template.yaml has sample events, and every sample event invokes cleanly.

Functions and events are discovered from template.yaml and infra/events/ at collection time, so functions that
other capabilities add are covered automatically. An event's sidecar (``<event>.meta.json``, see
``airies.local.invoke.EventMeta`` and the README) declares what it needs: ``database`` events run once per backend
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
    monkeypatch.chdir(tmp_path)  # anything a handler writes under ./.data stays out of the repo
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    run_sample_event(function, event_path, database_url=database.url)
