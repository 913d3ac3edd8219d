"""SessionSweeperFunction (every minute): silence reminders and timeouts, max duration, abandoned and stale sessions."""

from __future__ import annotations

from airies.core import bootstrap

bootstrap.pause_collector_for_init()  # before the imports (airies.core.bootstrap says why)

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from airies.conversations.live_sessions import LiveSessions
from airies.conversations.sessions import build_session_store
from airies.core.bootstrap import PerContainer
from airies.core.config import get_settings
from airies.core.database import get_database
from airies.core.events import AnyObject, parse_event
from airies.core.observability import lambda_handler, logger, metrics
from airies.webhooks.service import build_webhook_publisher


def build_service() -> LiveSessions:
    """The live sessions without the WebSocket edge (endpointing, the socket and relay events): a sweep needs none."""
    settings = get_settings()
    database = get_database(settings)
    publisher = build_webhook_publisher(settings, database)  # the calls it ends send conversation.ended
    return LiveSessions(settings, database, build_session_store(settings), publisher=publisher)


service = PerContainer(build_service)


@lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    parse_event(AnyObject, event, source="schedule")  # the schedule's tick carries nothing the sweep reads
    done = service.get().sweep()
    metrics.add_metric(name="SweepActions", unit=MetricUnit.Count, value=sum(done.values()))
    logger.info("sweep done", extra={"actions": done})
    return {"actions": done}


bootstrap.init_done()  # the module's last statement: its init is over
