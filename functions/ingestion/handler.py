"""IngestionFunction: S3 ObjectCreated notifications (through SQS) -> document ingestion.

Powertools BatchProcessor with partial batch failures: a message fails alone (and is retried, then dead-lettered)
only on a transient fault; bad documents end as ``failed`` documents and their messages succeed.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from airies.core.observability import lambda_handler, logger
from airies.knowledge.service import KnowledgeService, build_knowledge_service

processor = BatchProcessor(event_type=EventType.SQS)
_service: KnowledgeService | None = None


def service() -> KnowledgeService:
    global _service
    if _service is None:  # built at the first record, not at import (cold start)
        _service = build_knowledge_service()
    return _service


def record_handler(record: SQSRecord) -> list[str]:
    body = json.loads(record.body)
    if body.get("Event") == "s3:TestEvent":  # sent once when the notification is configured
        return ["skipped:test_event"]
    outcomes = []
    for s3_record in body.get("Records", []):
        if not str(s3_record.get("eventName", "")).startswith("ObjectCreated"):
            continue
        obj = s3_record["s3"]["object"]
        outcome = service().handle_object_created(obj["key"], size=obj.get("size"), etag=obj.get("eTag"))
        logger.info("document event", extra={"key": obj["key"], "outcome": outcome})
        outcomes.append(outcome)
    return outcomes


@lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
