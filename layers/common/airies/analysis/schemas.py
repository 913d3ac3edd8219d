"""The analysis state machine's inputs (``infra/statemachines/analysis.asl.json``), typed.

``AnalysisExecution`` starts an execution (``airies.conversations.post_call.StepFunctionsPostCall``, one per
conversation); each Task state sends one of ``AnalyseTask``, ``FailTask`` or ``PublishTask`` to AnalysisFunction,
told apart by ``task``. Fields the state machine adds and a task does not use are ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class AnalysisExecution(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    account_id: str = Field(min_length=1, max_length=40)
    conversation_id: str = Field(min_length=1, max_length=40)


class AnalyseTask(AnalysisExecution):
    """Run the agent's plan, store and bill the result; answers ``{"status"}``."""

    task: Literal["analyse"]


class FailTask(AnalysisExecution):
    """Store ``failed`` with the error a state caught (``{"Error": ..., "Cause": ...}``)."""

    task: Literal["fail"]
    error: dict[str, Any] | str | None = None


class PublishTask(AnalysisExecution):
    """Send ``conversation.ended`` with the analysis; answers ``{"event_id"}``."""

    task: Literal["publish"]


AnalysisTask = Annotated[AnalyseTask | FailTask | PublishTask, Field(discriminator="task")]
ANALYSIS_TASKS: TypeAdapter[AnalyseTask | FailTask | PublishTask] = TypeAdapter(AnalysisTask)
