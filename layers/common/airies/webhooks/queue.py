"""The queue between the publisher (``service``) and the delivery worker (``delivery``): one SQS message per attempt.

Apart from the worker so that what publishes events (every function that ends a call) does not import its HTTP
client."""

from __future__ import annotations

import json
from typing import Any, Protocol

from airies.core.config import Settings
from airies.webhooks.schemas import DeliveryMessage

MAX_DELAY_HOP_S = 900  # SQS DelaySeconds maximum


class DeliveryQueue(Protocol):
    def send(self, message: DeliveryMessage, delay_s: int = 0) -> None: ...

    def dead_letter(self, message: DeliveryMessage, reason: str) -> None: ...


class SqsDeliveryQueue:
    """The delivery queue on AWS (and under ``make run``, where moto serves the template's queues)."""

    def __init__(self, client: Any, queue_url: str, dead_letter_queue_url: str | None = None) -> None:
        self.client = client
        self.queue_url = queue_url
        self.dead_letter_queue_url = dead_letter_queue_url

    def send(self, message: DeliveryMessage, delay_s: int = 0) -> None:
        delay = max(0, min(MAX_DELAY_HOP_S, int(delay_s)))
        self.client.send_message(QueueUrl=self.queue_url, MessageBody=message.model_dump_json(), DelaySeconds=delay)

    def dead_letter(self, message: DeliveryMessage, reason: str) -> None:
        if self.dead_letter_queue_url:
            body = json.dumps({**message.model_dump(), "reason": reason})
            self.client.send_message(QueueUrl=self.dead_letter_queue_url, MessageBody=body)


def build_delivery_queue(settings: Settings) -> DeliveryQueue | None:
    """The configured queue; None without ``AIRIES_WEBHOOK_QUEUE_URL`` (events are stored, nothing delivers them)."""
    if not settings.webhook_queue_url:
        return None
    import boto3  # imported only where a queue is configured: it weighs on cold starts

    client = boto3.client("sqs", region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url)
    return SqsDeliveryQueue(client, settings.webhook_queue_url, settings.webhook_dead_letter_queue_url)
