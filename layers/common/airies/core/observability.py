"""Logger, Metrics and Tracer of every Lambda handler, in one place.

Every handler in ``functions/`` is declared as::

    from airies.core.observability import lambda_handler, logger, metrics

    @lambda_handler
    def handler(event, context): ...

which gives it, per invocation:

* Powertools Logger with the Lambda context (request id, cold start, function name) and keys cleared in between;
* Powertools Metrics in the namespace ``POWERTOOLS_METRICS_NAMESPACE`` (the template sets ``Airies/<stage>``; without
  it ``Airies/<stage>`` from Settings) with the dimension ``service=airies``: what the handler (or any
  ``MonitoringService``) adds is flushed as one EMF document after the invocation, plus the ``ColdStart`` metric;
* Powertools Tracer (``capture_lambda_handler``) where tracing is on: on Lambda, unless ``POWERTOOLS_TRACE_DISABLED``.
  Elsewhere (the local stack, tests, benchmarks) Powertools would disable it anyway, so the X-Ray SDK
  (~190 ms of imports) is not even loaded.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import Metrics

from airies.core.config import get_settings

SERVICE = "airies"
Handler = TypeVar("Handler", bound=Callable[..., Any])


def metrics_namespace() -> str:
    return os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or f"Airies/{get_settings().stage}"


def tracing_enabled() -> bool:
    """Powertools' own rule: traced only on the Lambda runtime (not SAM local) and when not disabled."""
    disabled = os.environ.get("POWERTOOLS_TRACE_DISABLED", "false").strip().lower() in ("1", "true", "yes", "on")
    on_lambda = bool(os.environ.get("LAMBDA_TASK_ROOT")) and not os.environ.get("AWS_SAM_LOCAL")
    return on_lambda and not disabled


# An invocation that adds no metric is normal (most do not): not a warning in every log stream.
warnings.filterwarnings("ignore", message="No application metrics to publish", category=UserWarning)

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=metrics_namespace(), service=SERVICE)


def _build_tracer() -> Any:
    from aws_lambda_powertools import Tracer

    return Tracer(service=SERVICE)


tracer: Any = _build_tracer() if tracing_enabled() else None


def lambda_handler(handler: Handler) -> Handler:
    """Wrap a Lambda handler with the Logger context, the metrics flush (cold start included) and the Tracer."""
    wrapped: Callable[..., Any] = metrics.log_metrics(handler, capture_cold_start_metric=True)
    if tracer is not None:
        # The response is not recorded in the trace: API bodies and task results may hold tenant data.
        wrapped = tracer.capture_lambda_handler(wrapped, capture_response=False)
    wrapped = logger.inject_lambda_context(wrapped, clear_state=True)
    return functools.wraps(handler)(wrapped)  # type: ignore[return-value]
