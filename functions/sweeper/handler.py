"""SessionSweeperFunction (every minute): silence reminders and timeouts, max duration, abandoned and stale sessions."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from airies.conversations.live import WebSocketService
from airies.conversations.sessions import build_session_store
from airies.core.config import get_settings
from airies.core.database import get_database
from airies.core.observability import lambda_handler, logger, metrics

_service: WebSocketService | None = None


@lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _service
    if _service is None:
        settings = get_settings()
        _service = WebSocketService(settings, get_database(settings), build_session_store(settings))
    done = _service.sweep()
    metrics.add_metric(name="SweepActions", unit=MetricUnit.Count, value=sum(done.values()))
    logger.info("sweep done", extra={"actions": done})
    return {"actions": done}
