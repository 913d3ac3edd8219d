"""UsageFunction: the usage SQS consumer. Each message is one ``UsageEvent`` (JSON).

Processed as a partial batch (airies.core.sqs_batch) with the Parser model below, so only the failed messages (a
fault, or a body that is not a ``UsageEvent``: logged) are redelivered (and, after maxReceiveCount, land in the
dead-letter queue). Redelivery is harmless: events are idempotent by key, so a message processed twice is counted
once.
"""

from __future__ import annotations

from airies.core import bootstrap

bootstrap.pause_collector_for_init()  # before the imports (airies.core.bootstrap says why)

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser.models import SqsRecordModel
from pydantic import Json

from airies.billing.schemas import UsageEvent
from airies.billing.usage import build_usage_service
from airies.core.config import get_settings
from airies.core.database import get_database
from airies.core.observability import lambda_handler, metrics
from airies.core.sqs_batch import PartialBatchResponse, process_sqs_batch


class UsageMessage(SqsRecordModel):
    body: Json[UsageEvent]  # type: ignore[assignment]


settings = get_settings()
usage = build_usage_service(settings, get_database(settings))


def record_handler(record: UsageMessage) -> dict[str, Any]:
    result = usage.track_usage([record.body])  # its own transaction: one bad message never rolls back the others
    if result.accepted:  # a redelivered event is a duplicate: booked once, counted once
        metrics.add_metric(name="UsageEventsBooked", unit=MetricUnit.Count, value=result.accepted)
    return {"accepted": result.accepted, "duplicates": result.duplicates}


@lambda_handler
def handler(event: dict[str, Any], context: Any) -> PartialBatchResponse:
    return process_sqs_batch(event, UsageMessage, record_handler)


bootstrap.init_done()  # the module's last statement: its init is over
