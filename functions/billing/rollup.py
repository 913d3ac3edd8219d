"""UsageRollupFunction: the daily usage roll-up (EventBridge Scheduler, once a day).

Recomputes ``usage_daily`` for yesterday and today (UTC) from the events: idempotent, so a retried or
repeated run converges to the same rows; late SQS deliveries of yesterday's usage are picked up. An operator may
name the days: ``{"days": ["2026-10-31"]}``.
"""

from __future__ import annotations

from airies.core import bootstrap

bootstrap.pause_collector_for_init()  # before the imports (airies.core.bootstrap says why)

from datetime import UTC, date, datetime, timedelta
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from pydantic import BaseModel

from airies.billing.usage import build_usage_service
from airies.core.config import get_settings
from airies.core.database import get_database
from airies.core.events import parse_event
from airies.core.observability import lambda_handler, logger, metrics

settings = get_settings()
usage = build_usage_service(settings, get_database(settings))


class RollupRequest(BaseModel):
    days: list[date] | None = None


@lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    request = parse_event(RollupRequest, event, source="usage roll-up")
    days = request.days
    if not days:
        today = datetime.now(UTC).date()
        days = [today - timedelta(days=1), today]
    rows = {day.isoformat(): usage.rollup_day(day.isoformat()) for day in days}
    metrics.add_metric(name="UsageRollupRows", unit=MetricUnit.Count, value=sum(rows.values()))
    logger.info("usage rolled up", extra={"rows": rows})
    return {"rows": rows}


bootstrap.init_done()  # the module's last statement: its init is over
