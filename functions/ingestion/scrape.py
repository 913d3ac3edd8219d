"""ScrapeWorkerFunction: web scrape jobs from the scrape queue; each crawled page becomes a document."""

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


def record_handler(record: SQSRecord) -> str:
    body = json.loads(record.body)
    if body.get("type") != "scrape_job" or not body.get("job_id"):
        logger.warning("ignoring message", extra={"body": record.body[:500]})
        return "ignored"
    job = service().run_scrape_job(str(body["job_id"]))
    status = job.status if job is not None else "unknown_job"
    logger.info("scrape job done", extra={"job_id": body["job_id"], "status": status})
    return status


@lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
