"""UsageFunction: the usage SQS consumer. Each message is one ``UsageEvent`` (JSON).

Powertools batch processing with the Parser model below reports partial failures, so only the failed messages (a
fault, or a body that is not a ``UsageEvent``: logged) are redelivered (and, after maxReceiveCount, land in the
dead-letter queue). Redelivery is harmless: events are idempotent by key, so a message processed twice is counted
once.
"""

from __future__ import annotations

from airies.core import bootstrap

bootstrap.pause_collector_for_init()  # before the imports (airies.core.bootstrap says why)

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.parser.models import SqsRecordModel
from pydantic import Json

from airies.billing.schemas import UsageEvent
from airies.billing.usage import build_usage_service
from airies.core.config import get_settings
from airies.core.database import get_database
from airies.core.observability import lambda_handler, logger, metrics


class UsageMessage(SqsRecordModel):
    body: Json[UsageEvent]  # type: ignore[assignment]


settings = get_settings()
usage = build_usage_service(settings, get_database(settings))
processor = BatchProcessor(event_type=EventType.SQS, model=UsageMessage, logger=logger)


def record_handler(record: UsageMessage) -> dict[str, Any]:
    result = usage.track_usage([record.body])  # its own transaction: one bad message never rolls back the others
    if result.accepted:  # a redelivered event is a duplicate: booked once, counted once
        metrics.add_metric(name="UsageEventsBooked", unit=MetricUnit.Count, value=result.accepted)
    return {"accepted": result.accepted, "duplicates": result.duplicates}


@lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)


bootstrap.init_done()  # the module's last statement: its init is over
