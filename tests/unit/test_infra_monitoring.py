"""MonitoringService: EMF lines on stdout (what CloudWatch ingests), error logs, lazy Tracer."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from aws_lambda_powertools.metrics import Metrics

from airies.core.errors import NotFoundError
from airies.core.metrics import MonitoringService


@pytest.fixture
def monitoring(monkeypatch: pytest.MonkeyPatch) -> Iterator[MonitoringService]:
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    service = MonitoringService(namespace="AiriesTest", service="svc")
    service.metrics.clear_metrics()
    yield service
    service.metrics.clear_metrics()  # Powertools keeps the metric set at class level


def _emf_lines(out: str) -> list[dict[str, Any]]:
    lines = []
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{") and '"_aws"' in line:
            lines.append(json.loads(line))
    return lines


def _metric_names(doc: dict[str, Any]) -> list[str]:
    return [m["Name"] for m in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]]


def test_buffered_metrics_flush_as_one_emf_document(monitoring: MonitoringService, capsys) -> None:  # type: ignore[no-untyped-def]
    monitoring.track_metric("TurnsCompleted", 2)
    monitoring.increment_counter("TurnsCompleted")
    monitoring.track_histogram("TurnLatency", 120.5)
    monitoring.track_histogram("TurnLatency", 340.0)
    assert _emf_lines(capsys.readouterr().out) == []  # nothing emitted before the flush
    monitoring.flush()
    (doc,) = _emf_lines(capsys.readouterr().out)
    assert doc["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "AiriesTest"
    assert sorted(_metric_names(doc)) == ["TurnLatency", "TurnsCompleted"]
    assert doc["TurnsCompleted"] == [2.0, 1.0]
    assert doc["TurnLatency"] == [120.5, 340.0]  # a distribution: CloudWatch computes percentiles over it
    units = {m["Name"]: m["Unit"] for m in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert units == {"TurnsCompleted": "Count", "TurnLatency": "Milliseconds"}


def test_metrics_with_dimensions_are_emitted_at_once_and_do_not_leak(monitoring: MonitoringService, capsys) -> None:  # type: ignore[no-untyped-def]
    monitoring.increment_counter("ProviderCalls", dimensions={"provider": "openai"})
    monitoring.increment_counter("ProviderCalls", dimensions={"provider": "groq"})
    docs = _emf_lines(capsys.readouterr().out)
    assert [d["provider"] for d in docs] == ["openai", "groq"]
    assert all(d["ProviderCalls"] == [1.0] for d in docs)
    assert any("provider" in dims for dims in docs[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"])
    monitoring.track_metric("Plain", 1)
    monitoring.flush()
    (plain,) = _emf_lines(capsys.readouterr().out)
    assert "provider" not in plain


def test_counters_only_go_up(monitoring: MonitoringService) -> None:
    with pytest.raises(ValueError):
        monitoring.increment_counter("X", -1)


def test_timer_records_elapsed_milliseconds_even_on_error(monitoring: MonitoringService, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError), monitoring.timer("Step"):
        raise RuntimeError("boom")
    monitoring.flush()
    (doc,) = _emf_lines(capsys.readouterr().out)
    assert len(doc["Step"]) == 1 and doc["Step"][0] >= 0.0


def test_track_error_logs_and_counts_by_error_code(monitoring: MonitoringService, capsys) -> None:  # type: ignore[no-untyped-def]
    try:
        raise NotFoundError("agent", "agt_1")
    except NotFoundError as exc:
        monitoring.track_error(exc, operation="get_agent", account_id="acc_1")
    out = capsys.readouterr().out
    log = next(json.loads(line) for line in out.splitlines() if '"level"' in line)
    assert log["level"] == "ERROR"
    assert log["operation"] == "get_agent" and log["error_type"] == "not_found" and log["account_id"] == "acc_1"
    assert "NotFoundError" in log["exception"]
    (metric,) = _emf_lines(out)
    assert metric["Errors"] == [1.0] and metric["error_type"] == "not_found" and metric["operation"] == "get_agent"
    monitoring.track_error(ValueError("x"), operation="parse")
    (metric,) = _emf_lines(capsys.readouterr().out)
    assert metric["error_type"] == "ValueError"


def test_log_metrics_decorator_flushes_per_invocation(monitoring: MonitoringService, capsys) -> None:  # type: ignore[no-untyped-def]
    @monitoring.log_metrics(capture_cold_start_metric=False)
    def handler(event: dict, context: object) -> str:
        monitoring.increment_counter("Invocations")
        return "ok"

    assert handler({}, None) == "ok"
    docs = _emf_lines(capsys.readouterr().out)
    assert any(doc.get("Invocations") == [1.0] for doc in docs)


def test_injected_metrics_object_is_used() -> None:
    metrics = Metrics(namespace="Injected", service="svc")
    assert MonitoringService(metrics=metrics).metrics is metrics


def test_tracer_is_imported_only_when_used() -> None:
    code = (
        "import sys\n"
        "from airies.core.metrics import MonitoringService\n"
        "m = MonitoringService(namespace='N', service='s')\n"
        "m.increment_counter('X'); m.metrics.clear_metrics()\n"
        "before = 'aws_xray_sdk' in sys.modules\n"
        "m.tracer\n"
        "print(before, 'aws_xray_sdk' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
        env={"POWERTOOLS_TRACE_DISABLED": "true", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.stdout.split()[-2:] == ["False", "True"]
