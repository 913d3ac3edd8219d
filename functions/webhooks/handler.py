"""WebhookFunction: the server-message delivery worker. Each SQS message is one attempt at one event
(``airies.webhooks.delivery``): POST it signed, record the answer, enqueue the next attempt or the dead letter.

The worker enqueues retries itself (with their backoff), so a handled message is deleted whatever the receiver
answered; only a message that could not be handled (bad body, database or SQS down) is reported as a batch item
failure and comes back after the visibility timeout (after maxReceiveCount: the dead-letter queue).
"""

from __future__ import annotations

from airies.core import bootstrap

bootstrap.pause_collector_for_init()  # before the imports (airies.core.bootstrap says why)

from typing import Any

from aws_lambda_powertools.utilities.parser.models import SqsRecordModel
from pydantic import Json

from airies.core.bootstrap import PerContainer
from airies.core.config import get_settings
from airies.core.database import get_database
from airies.core.metrics import MonitoringService
from airies.core.observability import lambda_handler, logger, metrics
from airies.core.sqs_batch import PartialBatchResponse, process_sqs_batch
from airies.webhooks.delivery import WebhookDeliverer
from airies.webhooks.queue import build_delivery_queue
from airies.webhooks.schemas import DeliveryMessage


class DeliveryRecord(SqsRecordModel):
    body: Json[DeliveryMessage]  # type: ignore[assignment]  # the parser validates the JSON body


monitoring = MonitoringService(metrics=metrics, logger=logger)


def _build_deliverer() -> WebhookDeliverer:
    # Built at the first record, not at import (cold start).
    settings = get_settings()
    queue = build_delivery_queue(settings)
    if queue is None:
        raise RuntimeError("AIRIES_WEBHOOK_QUEUE_URL is not set: retries would have nowhere to go")
    return WebhookDeliverer(get_database(settings), settings, queue)


deliverer = PerContainer(_build_deliverer)


def record_handler(record: DeliveryRecord) -> str:
    message = record.body
    outcome = deliverer.get().handle(message)
    response = outcome.response
    # Our own description of the answer only: a receiver's body is never read into logs.
    logger.info(
        "webhook attempt",
        extra={
            "event_id": message.delivery_id,
            "attempt": message.attempt,
            "result": outcome.result,
            "status_code": response.status_code if response else None,
            "latency_ms": response.latency_ms if response else None,
            "error": response.error if response else None,
        },
    )
    if response is not None:
        monitoring.increment_counter("WebhookDeliveries")
        monitoring.track_histogram("WebhookLatency", response.latency_ms)
    if outcome.result == "failed":
        monitoring.increment_counter("WebhooksFailed")
    return outcome.result


@lambda_handler
def handler(event: dict[str, Any], context: Any) -> PartialBatchResponse:
    return process_sqs_batch(event, DeliveryRecord, record_handler)


bootstrap.init_done()  # the module's last statement: its init is over
