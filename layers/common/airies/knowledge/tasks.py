"""The ingestion state machine's inputs (``infra/statemachines/ingestion.asl.json``), typed.

``IngestionExecution`` is what starts an execution (``ingestion.handle_object_created`` for a large document);
each Task state sends one of ``PrepareTask``, ``EmbedTask``, ``FinaliseTask`` or ``FailTask`` to the task function,
told apart by ``task``: parse with ``parse_ingestion_task``. Fields the state machine adds and a task does not use
are ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Input(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    document_id: str = Field(min_length=1, max_length=40)


class IngestionExecution(_Input):
    etag: str | None = None  # the object version: with the document id, the execution's dedup key


class PrepareTask(_Input):
    """Claim, download, extract and chunk; answers ``PreparedDocument.to_dict()`` (its batches feed the Map)."""

    task: Literal["prepare"]
    etag: str | None = None


class EmbedTask(_Input):
    """Embed chunks [start, end) and upsert their vectors: one Map iteration."""

    task: Literal["embed"]
    start: int = Field(ge=0)
    end: int = Field(ge=0)


class FinaliseTask(_Input):
    """Counts, status ``ready``, usage."""

    task: Literal["finalise"]
    etag: str | None = None


class FailTask(_Input):
    """Mark the document failed with the error a state caught (``{"Error": ..., "Cause": ...}``)."""

    task: Literal["fail"]
    error: dict[str, Any] | str | None = None


IngestionTask = Annotated[PrepareTask | EmbedTask | FinaliseTask | FailTask, Field(discriminator="task")]
INGESTION_TASKS: TypeAdapter[PrepareTask | EmbedTask | FinaliseTask | FailTask] = TypeAdapter(IngestionTask)


def parse_ingestion_task(payload: dict[str, Any]) -> PrepareTask | EmbedTask | FinaliseTask | FailTask:
    """The task a Task state sent; ``pydantic.ValidationError`` for an unknown task or a missing field."""
    return INGESTION_TASKS.validate_python(payload)
