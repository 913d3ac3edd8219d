"""IngestionFunction: S3 ObjectCreated notifications (through SQS) -> document ingestion.

A partial batch (airies.core.sqs_batch): a message fails alone (and is retried, then dead-lettered)
only on a transient fault or when it is not an S3 notification at all (logged); bad documents end as ``failed``
documents and their messages succeed.
"""

from __future__ import annotations

from airies.core import bootstrap

bootstrap.pause_collector_for_init()  # before the imports (airies.core.bootstrap says why)

from typing import Any, Literal

from aws_lambda_powertools.utilities.parser.models import SqsRecordModel
from pydantic import BaseModel, Json

from airies.core.bootstrap import PerContainer
from airies.core.metrics import MonitoringService
from airies.core.observability import lambda_handler, logger, metrics
from airies.core.sqs_batch import PartialBatchResponse, process_sqs_batch
from airies.knowledge.metrics import DocumentMetrics
from airies.knowledge.service import build_knowledge_service


class S3Object(BaseModel):
    key: str
    size: int | None = None
    eTag: str | None = None


class S3Entity(BaseModel):
    object: S3Object


class S3Record(BaseModel):
    eventName: str
    s3: S3Entity


class S3Notification(BaseModel):
    """The fields of an S3 event notification this function reads (Powertools' S3Model also requires
    ``userIdentity``/``requestParameters``, which the local S3 (moto) does not send)."""

    Records: list[S3Record]


class S3TestEvent(BaseModel):
    """Sent once when the notification is configured."""

    Event: Literal["s3:TestEvent"]


class IngestionMessage(SqsRecordModel):
    body: Json[S3TestEvent | S3Notification]  # type: ignore[assignment]


service = PerContainer(build_knowledge_service)  # built at the first record, not at import (cold start)
documents = DocumentMetrics(MonitoringService(metrics=metrics, logger=logger))  # flushed per invocation


def record_handler(record: IngestionMessage) -> list[str]:
    if isinstance(record.body, S3TestEvent):
        return ["skipped:test_event"]
    outcomes = []
    for s3_record in record.body.Records:
        if not s3_record.eventName.startswith("ObjectCreated"):
            continue
        obj = s3_record.s3.object
        outcome = service.get().handle_object_created(obj.key, size=obj.size, etag=obj.eTag)
        logger.info("document event", extra={"key": obj.key, "outcome": outcome})
        documents.outcome(outcome)  # processed here; a large one is counted by the state machine's tasks
        outcomes.append(outcome)
    return outcomes


@lambda_handler
def handler(event: dict[str, Any], context: Any) -> PartialBatchResponse:
    return process_sqs_batch(event, IngestionMessage, record_handler)


bootstrap.init_done()  # the module's last statement: its init is over
