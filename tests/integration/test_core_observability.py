"""Every handler is wrapped by ``airies.core.observability.lambda_handler``: Logger context, EMF metrics, Tracer."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from airies.core import observability
from airies.core.config import PROJECT_ROOT
from airies.local.invoke import LambdaContext, _clear_container_caches, load_handler, patched_environ, resolve_function
from airies.local.template import function_environment, function_specs, load_template


def _emf_documents(out: str) -> list[dict[str, Any]]:
    docs = []
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{") and '"_aws"' in line:
            docs.append(json.loads(line))
    return docs


def test_a_handler_emits_its_metric_as_emf_with_namespace_and_service(database, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    spec, ctx = resolve_function("UsageRollupFunction")
    env = {**function_environment(spec, ctx), "DATABASE_URL": database.url}
    with patched_environ(env):
        _clear_container_caches()
        handler, module = load_handler(spec)
        try:
            capsys.readouterr()
            result = handler({"days": ["2026-01-01"]}, LambdaContext(spec))
        finally:
            module.usage.database.dispose()
            _clear_container_caches()
    assert result == {"rows": {"2026-01-01": 0}}
    docs = _emf_documents(capsys.readouterr().out)
    (doc,) = [d for d in docs if "UsageRollupRows" in d]
    directive = doc["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == observability.metrics.namespace
    assert [m["Name"] for m in directive["Metrics"]] == ["UsageRollupRows"]
    assert doc["service"] == "airies" and ["service"] in directive["Dimensions"]
    assert doc["UsageRollupRows"] == [0.0]


def test_the_namespace_falls_back_to_the_stage(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Airies/prod")
    assert observability.metrics_namespace() == "Airies/prod"
    monkeypatch.delenv("POWERTOOLS_METRICS_NAMESPACE")
    monkeypatch.setenv("AIRIES_STAGE", "staging")
    from airies.core.config import get_settings

    get_settings.cache_clear()
    try:
        assert observability.metrics_namespace() == "Airies/staging"
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"LAMBDA_TASK_ROOT": "/var/task"}, True),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "true"}, False),
        ({"LAMBDA_TASK_ROOT": "/var/task", "AWS_SAM_LOCAL": "true"}, False),
        ({}, False),
    ],
)
def test_tracing_only_on_the_lambda_runtime(monkeypatch, env: dict[str, str], expected: bool) -> None:  # type: ignore[no-untyped-def]
    for key in ("LAMBDA_TASK_ROOT", "POWERTOOLS_TRACE_DISABLED", "AWS_SAM_LOCAL"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert observability.tracing_enabled() is expected


def test_every_function_handler_is_wrapped_by_lambda_handler() -> None:
    specs = function_specs(load_template(PROJECT_ROOT / "template.yaml"), root=PROJECT_ROOT)
    handlers = {(spec.module_path, spec.function_name) for spec in specs.values()}
    assert len(handlers) >= 13
    for path, name in handlers:
        tree = ast.parse(Path(path).read_text())
        (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
        decorators = [ast.unparse(d) for d in fn.decorator_list]
        assert decorators == ["lambda_handler"], f"{path}:{name} has {decorators}"
