"""AnalysisFunction: the Lambda tasks of the post-call analysis state machine.

Input ``{"task": "analyse"|"fail"|"publish", "account_id": ..., "conversation_id": ...}``
(``airies.analysis.schemas``); each task is one step of ``PostCallAnalysis``, so the state machine and the local
stack's in-process runner run the same code. A transient provider failure is raised as ``ProviderRetryableError``
(retried by the state machine), an input of no known shape as ``MalformedEvent``.
"""

from __future__ import annotations

from airies.core import bootstrap

bootstrap.pause_collector_for_init()  # before the imports (airies.core.bootstrap says why)

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from airies.analysis.schemas import ANALYSIS_TASKS, AnalyseTask, AnalysisTask, FailTask
from airies.analysis.service import build_post_call_analysis
from airies.core.bootstrap import PerContainer
from airies.core.config import get_settings
from airies.core.database import get_database
from airies.core.events import parse_event
from airies.core.observability import lambda_handler, logger, metrics
from airies.core.stepfunctions import caught_error_reason, step_errors


def _build() -> Any:
    settings = get_settings()
    return build_post_call_analysis(settings, get_database(settings))


service = PerContainer(_build)  # built at the first task, not at import (cold start)


@lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    task = parse_event(ANALYSIS_TASKS, event, source="analysis task")
    logger.append_keys(conversation_id=task.conversation_id, task=task.task)
    with step_errors():
        return run_task(task)


def run_task(task: AnalysisTask) -> dict[str, Any]:
    svc = service.get()
    if isinstance(task, AnalyseTask):
        status = svc.analyse(task.account_id, task.conversation_id)
        metrics.add_metric(name="ConversationsAnalysed", unit=MetricUnit.Count, value=1)
        if status == "failed":
            metrics.add_metric(name="AnalysesFailed", unit=MetricUnit.Count, value=1)
        return {"status": status}
    if isinstance(task, FailTask):
        status = svc.mark_failed(
            task.account_id, task.conversation_id, caught_error_reason(task.error or "the analysis did not finish", 500)
        )
        metrics.add_metric(name="AnalysesFailed", unit=MetricUnit.Count, value=1)
        return {"status": status}
    return {"event_id": svc.publish_ended(task.account_id, task.conversation_id)}


bootstrap.init_done()  # the module's last statement: its init is over
