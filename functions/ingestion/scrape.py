"""ScrapeWorkerFunction: web scrape jobs from the scrape queue; each crawled page becomes a document.

A message that is not a scrape job is logged and acknowledged (nothing would ever process it); a malformed SQS
record fails alone (partial batch failure, then the dead-letter queue).
"""

from __future__ import annotations

from airies.core import bootstrap

bootstrap.pause_collector_for_init()  # before the imports (airies.core.bootstrap says why)

from typing import Any

from aws_lambda_powertools.utilities.parser.models import SqsRecordModel
from pydantic import BaseModel, Json

from airies.core.bootstrap import PerContainer
from airies.core.observability import lambda_handler, logger
from airies.core.sqs_batch import PartialBatchResponse, process_sqs_batch
from airies.knowledge.service import build_knowledge_service


class ScrapeJobMessage(BaseModel):
    type: str | None = None
    job_id: str | None = None


class ScrapeMessage(SqsRecordModel):
    body: Json[ScrapeJobMessage]  # type: ignore[assignment]


service = PerContainer(build_knowledge_service)  # built at the first record, not at import (cold start)


def record_handler(record: ScrapeMessage) -> str:
    message = record.body
    if message.type != "scrape_job" or not message.job_id:
        logger.warning("ignoring message", extra={"message_id": record.messageId, "type": message.type})
        return "ignored"
    job = service.get().run_scrape_job(message.job_id)
    status = job.status if job is not None else "unknown_job"
    logger.info("scrape job done", extra={"job_id": message.job_id, "status": status})
    return status


@lambda_handler
def handler(event: dict[str, Any], context: Any) -> PartialBatchResponse:
    return process_sqs_batch(event, ScrapeMessage, record_handler)


bootstrap.init_done()  # the module's last statement: its init is over
