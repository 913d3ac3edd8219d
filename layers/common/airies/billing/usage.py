"""``UsageService``: the ledger (``ledger.py``) with metering (``metering.py``), limits (``limits.py``) and reports
(``reports.py``), each operation written once in its module; what routes, handlers and other capabilities hold."""

from __future__ import annotations

from typing import Any

from airies.billing import limits, metering, reports
from airies.billing.ledger import Ledger
from airies.billing.metering import DirectUsagePublisher, SqsUsagePublisher, UsagePublisher
from airies.core.config import Settings, get_settings
from airies.core.database import Database, get_database


class UsageService(Ledger):
    # metering
    calculate_credits = metering.calculate_credits
    track_usage = metering.track_usage
    minutes_used = metering.minutes_used
    minutes_used_from_events = metering.minutes_used_from_events
    # limits
    check_usage_limits = limits.check_usage_limits
    check_kb_size = limits.check_kb_size
    # reports
    list_usage_events = reports.list_usage_events
    get_usage_summary = reports.get_usage_summary
    rollup_day = reports.rollup_day


def build_usage_service(
    settings: Settings | None = None, database: Database | None = None, **kwargs: Any
) -> UsageService:
    settings = settings or get_settings()
    return UsageService(database or get_database(settings), **kwargs)


def build_usage_publisher(settings: Settings | None = None, database: Database | None = None) -> UsagePublisher:
    settings = settings or get_settings()
    if settings.usage_queue_url:
        return SqsUsagePublisher(
            settings.usage_queue_url, region=settings.aws_region, endpoint_url=settings.aws_endpoint_url
        )
    return DirectUsagePublisher(build_usage_service(settings, database))
