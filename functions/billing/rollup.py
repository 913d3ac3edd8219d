"""UsageRollupFunction: the daily usage roll-up (EventBridge Scheduler, once a day).

Recomputes ``usage_daily`` for yesterday and today (UTC) from the events: idempotent, so a retried or
repeated run converges to the same rows; late SQS deliveries of yesterday's usage are picked up.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from airies.billing.ledger import build_usage_service
from airies.core.config import get_settings
from airies.core.database import get_database
from airies.core.observability import lambda_handler, logger, metrics

settings = get_settings()
usage = build_usage_service(settings, get_database(settings))


@lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    days = event.get("days")
    if not days:
        today = datetime.now(UTC).date()
        days = [(today - timedelta(days=1)).isoformat(), today.isoformat()]
    rows = {day: usage.rollup_day(day) for day in days}
    metrics.add_metric(name="UsageRollupRows", unit=MetricUnit.Count, value=sum(rows.values()))
    logger.info("usage rolled up", extra={"rows": rows})
    return {"rows": rows}
