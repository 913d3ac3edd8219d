"""IngestionTaskFunction: the Lambda tasks of the ingestion state machine (large documents).

Input ``{"task": "prepare"|"embed"|"finalise"|"fail", "document_id": ..., ...}``; each task is one stage of
``KnowledgeService`` so the state machine and the inline path run the same code. A provider failure is raised as
``ProviderRetryableError`` (retried by the state machine) or ``ProviderRejectedError`` (caught at once).
"""

from __future__ import annotations

import json
from typing import Any

from airies.core.observability import lambda_handler, logger
from airies.core.stepfunctions import step_errors
from airies.knowledge.service import KnowledgeService, build_knowledge_service

_service: KnowledgeService | None = None


def service() -> KnowledgeService:
    global _service
    if _service is None:  # built at the first record, not at import (cold start)
        _service = build_knowledge_service()
    return _service


def _error_reason(error: Any) -> str:
    if isinstance(error, dict):
        cause = error.get("Cause") or ""
        try:
            cause = json.loads(cause).get("errorMessage", cause)
        except (ValueError, AttributeError):
            pass
        return f"{error.get('Error', 'error')}: {cause}"[:2000]
    return str(error)[:2000]


@lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    task = event.get("task")
    document_id = str(event.get("document_id") or "")
    logger.append_keys(document_id=document_id, task=task)
    with step_errors():
        return run_task(task, document_id, event)


def run_task(task: Any, document_id: str, event: dict[str, Any]) -> dict[str, Any]:
    svc = service()
    if task == "prepare":
        return svc.prepare_document(document_id, etag=event.get("etag")).to_dict()
    if task == "embed":
        count = svc.embed_chunk_range(document_id, int(event["start"]), int(event["end"]))
        return {"document_id": document_id, "embedded": count}
    if task == "finalise":
        svc.finalise_document(document_id, etag=event.get("etag"))
        return {"document_id": document_id, "status": "ready"}
    if task == "fail":
        svc.fail_document(document_id, "processing_failed", _error_reason(event.get("error")))
        return {"document_id": document_id, "status": "failed"}
    raise ValueError(f"unknown task {task!r}")
