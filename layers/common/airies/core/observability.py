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

Calls to providers (STT, LLM, TTS, embeddings, a tenant's tool server) are wrapped in :func:`provider_span`: an X-Ray
subsegment ``## <kind>`` annotated with the provider, when tracing is on; nothing otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import Metrics

from airies.core.config import get_settings

SERVICE = "airies"
Handler = TypeVar("Handler", bound=Callable[..., Any])
Item = TypeVar("Item")


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


@contextlib.contextmanager
def provider_span(kind: str, provider: str) -> Iterator[None]:
    """An X-Ray subsegment ``## <kind>`` (annotated ``provider``) around one provider call, when tracing is on.

    A turn runs its LLM stream and speech synthesis at once on one event loop, so the recorder's stack of open
    entities (one per thread) would nest them in each other or close the wrong one: each span is built beside that
    stack, as a child of whatever the thread's trace is in, and sent to the daemon once closed (as X-Ray's own
    subsegment streaming does). A tracing failure is logged, never raised into the call.
    """
    if tracer is None:
        yield
        return
    span = None
    try:
        span = _open_span(tracer.provider, kind, provider)
    except Exception:
        logging.getLogger(__name__).warning("no X-Ray span for %s %s", kind, provider, exc_info=True)
    try:
        yield
    except Exception as exc:
        if span is not None:
            span.add_error_flag()
            span.put_metadata("error", type(exc).__name__, "airies")
        raise
    except BaseException:  # cancelled (a barge-in stops the LLM stream): not an error of the provider
        if span is not None:
            span.put_annotation("cancelled", True)
        raise
    finally:
        if span is not None:
            _close_span(tracer.provider, span)


def traced_stream(kind: str, provider: str, events: AsyncIterator[Item]) -> AsyncIterator[Item]:
    """``events`` (a provider's stream: LLM tokens, TTS audio) inside one :func:`provider_span`; the stream itself
    when tracing is off, so no token of a turn pays for a wrapper it does not need."""
    if tracer is None:
        return events
    return _spanned(kind, provider, events)


async def _spanned(kind: str, provider: str, events: AsyncIterator[Item]) -> AsyncIterator[Item]:
    with provider_span(kind, provider):
        async for event in events:
            yield event


def _open_span(recorder: Any, kind: str, provider: str) -> Any:
    from aws_xray_sdk.core.models.subsegment import Subsegment  # loaded with the Tracer (tracing is on)

    parent = recorder.get_trace_entity()
    segment = parent.parent_segment if isinstance(parent, Subsegment) else parent
    if segment is None or not getattr(segment, "sampled", False):
        return None
    span = Subsegment(f"## {kind}", "remote", segment)
    span.parent_id = parent.id
    span.put_annotation("provider", provider)
    return span


def _close_span(recorder: Any, span: Any) -> None:
    try:
        span.end_time = time.time()
        span.in_progress = False
        recorder.emitter.send_entity(span)
    except Exception:
        logging.getLogger(__name__).warning("X-Ray span %s not sent", span.name, exc_info=True)
