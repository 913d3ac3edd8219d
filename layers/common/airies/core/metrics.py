"""MonitoringService: metrics (CloudWatch EMF through Powertools Metrics), structured logs, traces.

- Metrics without extra dimensions are buffered and flushed once per invocation (``log_metrics`` on the handler,
  or :meth:`MonitoringService.flush`); metrics *with* dimensions are emitted at once as a single EMF line, so the
  dimensions of one call never leak into another.
- Histograms: EMF keeps every value of a metric name within a flush (``Values`` array), so CloudWatch computes
  percentiles (p50/p95/p99) over them; no client-side bucketing.
- Tracer is imported lazily: ``from aws_lambda_powertools import Tracer`` costs ~190 ms (X-Ray SDK) even when
  tracing is disabled, and most cold starts never need it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aws_lambda_powertools.logging import Logger
from aws_lambda_powertools.metrics import Metrics, MetricUnit, single_metric

from airies.core.errors import AiriesError

ERRORS_METRIC = "Errors"


class MonitoringService:
    def __init__(
        self,
        namespace: str | None = None,
        service: str | None = None,
        *,
        metrics: Metrics | None = None,
        logger: Logger | None = None,
        tracer: Any = None,
    ) -> None:
        self.namespace = namespace  # None: POWERTOOLS_METRICS_NAMESPACE
        self.service = service  # None: POWERTOOLS_SERVICE_NAME
        self._metrics = metrics
        self._logger = logger
        self._tracer = tracer

    # Lazily built Powertools objects ----------------------------------------------------------------------------

    @property
    def metrics(self) -> Metrics:
        if self._metrics is None:
            self._metrics = Metrics(namespace=self.namespace, service=self.service)
        return self._metrics

    @property
    def logger(self) -> Logger:
        if self._logger is None:
            self._logger = Logger(service=self.service)
        return self._logger

    @property
    def tracer(self) -> Any:
        if self._tracer is None:
            from aws_lambda_powertools.tracing import Tracer  # ~190 ms: only when a trace is really wanted

            self._tracer = Tracer(service=self.service)
        return self._tracer

    # Metrics ----------------------------------------------------------------------------------------------------

    def track_metric(
        self,
        name: str,
        value: float,
        unit: MetricUnit | str = MetricUnit.Count,
        *,
        dimensions: dict[str, str] | None = None,
        high_resolution: bool = False,
    ) -> None:
        unit = MetricUnit(unit) if isinstance(unit, str) else unit
        resolution = 1 if high_resolution else 60
        if dimensions:
            with single_metric(
                name=name,
                unit=unit,
                value=float(value),
                resolution=resolution,
                namespace=self.metrics.namespace,
                default_dimensions={"service": self.metrics.service, **_str_dims(dimensions)}
                if self.metrics.service
                else _str_dims(dimensions),
            ):
                pass
            return
        self.metrics.add_metric(name=name, unit=unit, value=float(value), resolution=resolution)

    def increment_counter(self, name: str, by: float = 1, *, dimensions: dict[str, str] | None = None) -> None:
        if by < 0:
            raise ValueError("a counter only goes up")
        self.track_metric(name, by, MetricUnit.Count, dimensions=dimensions)

    def track_histogram(
        self,
        name: str,
        value: float,
        unit: MetricUnit | str = MetricUnit.Milliseconds,
        *,
        dimensions: dict[str, str] | None = None,
    ) -> None:
        """One observation of a distribution (latency, sizes): CloudWatch derives percentiles from the values."""
        self.track_metric(name, value, unit, dimensions=dimensions)

    @contextmanager
    def timer(self, name: str, *, dimensions: dict[str, str] | None = None) -> Iterator[None]:
        """Observe the block's duration in milliseconds as a histogram (also when it raises)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.track_histogram(name, (time.perf_counter() - started) * 1000.0, dimensions=dimensions)

    def track_error(
        self,
        error: BaseException,
        *,
        operation: str,
        dimensions: dict[str, str] | None = None,
        **context: Any,
    ) -> None:
        """Log the error with its stack and count it as ``Errors`` by operation and error type.

        The type dimension is the AiriesError code (bounded set) or the exception class name, never the message.
        """
        error_type = error.code if isinstance(error, AiriesError) else type(error).__name__
        self.logger.error(
            f"{operation} failed: {error_type}",
            exc_info=(type(error), error, error.__traceback__),
            extra={"operation": operation, "error_type": error_type, **context},
        )
        self.track_metric(
            ERRORS_METRIC,
            1,
            MetricUnit.Count,
            dimensions={"operation": operation, "error_type": error_type, **(dimensions or {})},
        )

    def flush(self) -> None:
        """Emit buffered metrics now (handlers decorated with :meth:`log_metrics` do this per invocation)."""
        self.metrics.flush_metrics()

    def log_metrics(self, handler: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
        """Handler decorator: flush metrics after every invocation (cold-start metric included)."""
        kwargs.setdefault("capture_cold_start_metric", True)
        return self.metrics.log_metrics(handler, **kwargs) if handler else self.metrics.log_metrics(**kwargs)


def _str_dims(dimensions: dict[str, Any]) -> dict[str, str]:
    return {str(key): str(value) for key, value in dimensions.items()}
