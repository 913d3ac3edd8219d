"""IngestionTaskFunction: the Lambda tasks of the ingestion state machine (large documents).

Input ``{"task": "prepare"|"embed"|"finalise"|"fail", "document_id": ..., ...}`` (one model per task below); each
task is one stage of ``KnowledgeService`` so the state machine and the inline path run the same code. A provider
failure is raised as ``ProviderRetryableError`` (retried by the state machine) or ``ProviderRejectedError`` (caught at
once); an input of no known shape as ``MalformedEvent``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter

from airies.core.bootstrap import PerContainer
from airies.core.events import parse_event
from airies.core.observability import lambda_handler, logger
from airies.core.stepfunctions import step_errors
from airies.knowledge.service import build_knowledge_service


class PrepareTask(BaseModel):
    task: Literal["prepare"]
    document_id: str
    etag: str | None = None


class EmbedTask(BaseModel):
    task: Literal["embed"]
    document_id: str
    start: int
    end: int


class FinaliseTask(BaseModel):
    task: Literal["finalise"]
    document_id: str
    etag: str | None = None


class FailTask(BaseModel):
    task: Literal["fail"]
    document_id: str
    error: Any = None  # the Catch's {"Error", "Cause"}


IngestionTask = Annotated[PrepareTask | EmbedTask | FinaliseTask | FailTask, Field(discriminator="task")]
TASKS: TypeAdapter[IngestionTask] = TypeAdapter(IngestionTask)

service = PerContainer(build_knowledge_service)  # built at the first task, not at import (cold start)


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
    task = parse_event(TASKS, event, source="ingestion task")
    logger.append_keys(document_id=task.document_id, task=task.task)
    with step_errors():
        return run_task(task)


def run_task(task: IngestionTask) -> dict[str, Any]:
    svc = service.get()
    if isinstance(task, PrepareTask):
        return svc.prepare_document(task.document_id, etag=task.etag).to_dict()
    if isinstance(task, EmbedTask):
        count = svc.embed_chunk_range(task.document_id, task.start, task.end)
        return {"document_id": task.document_id, "embedded": count}
    if isinstance(task, FinaliseTask):
        svc.finalise_document(task.document_id, etag=task.etag)
        return {"document_id": task.document_id, "status": "ready"}
    svc.fail_document(task.document_id, "processing_failed", _error_reason(task.error))
    return {"document_id": task.document_id, "status": "failed"}
