"""IngestionTaskFunction: the Lambda tasks of the ingestion state machine (large documents).

Input ``{"task": "prepare"|"embed"|"finalise"|"fail", "document_id": ..., ...}`` (``airies.knowledge.tasks``); each
task is one stage of ``KnowledgeService`` so the state machine and the inline path run the same code. A provider
failure is raised as ``ProviderRetryableError`` (retried by the state machine) or ``ProviderRejectedError`` (caught at
once); an input of no known shape as ``MalformedEvent``.
"""

from __future__ import annotations

from airies.core import bootstrap

bootstrap.pause_collector_for_init()  # before the imports (airies.core.bootstrap says why)

from typing import Any

from airies.core.bootstrap import PerContainer
from airies.core.events import parse_event
from airies.core.metrics import MonitoringService
from airies.core.observability import lambda_handler, logger, metrics
from airies.core.stepfunctions import caught_error_reason, step_errors
from airies.knowledge.metrics import DocumentMetrics
from airies.knowledge.service import build_knowledge_service
from airies.knowledge.tasks import INGESTION_TASKS, EmbedTask, FinaliseTask, IngestionTask, PrepareTask

service = PerContainer(build_knowledge_service)  # built at the first task, not at import (cold start)
documents = DocumentMetrics(MonitoringService(metrics=metrics, logger=logger))  # flushed per invocation


@lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    task = parse_event(INGESTION_TASKS, event, source="ingestion task")
    logger.append_keys(document_id=task.document_id, task=task.task)
    with step_errors():
        return run_task(task)


def run_task(task: IngestionTask) -> dict[str, Any]:
    svc = service.get()
    if isinstance(task, PrepareTask):
        prepared = svc.prepare_document(task.document_id, etag=task.etag)
        if (prepared.reason or "").startswith("failed:"):  # rejected while preparing: the Choice state ends the run
            documents.outcome("failed")
        return prepared.to_dict()
    if isinstance(task, EmbedTask):
        count = svc.embed_chunk_range(task.document_id, task.start, task.end)
        return {"document_id": task.document_id, "embedded": count}
    if isinstance(task, FinaliseTask):
        svc.finalise_document(task.document_id, etag=task.etag)
        documents.outcome("ready")
        return {"document_id": task.document_id, "status": "ready"}
    svc.fail_document(task.document_id, "processing_failed", caught_error_reason(task.error))
    documents.outcome("failed")
    return {"document_id": task.document_id, "status": "failed"}


bootstrap.init_done()  # the module's last statement: its init is over
