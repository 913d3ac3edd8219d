"""What starts the post-call analysis when a conversation ends (the analysis capability runs it).

* On AWS (``AIRIES_ANALYSIS_STATE_MACHINE_ARN`` set): ``StepFunctionsPostCall`` starts one AnalysisStateMachine
  execution per conversation, named after it, so a second start of the same conversation is refused by Step
  Functions (``ExecutionAlreadyExists``) and nothing runs twice.
* In a process that registered an in-process runner (the local stack, tests): ``register_in_process(starter)``.
* Otherwise there is no post-call analysis: ``conversation.ended`` is published as the call ends.

A starter is called after the conversation's end has committed; it must not block the call's end for long (the
Step Functions call is one request; the local runner hands the work to a thread).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Protocol

from airies.core.bootstrap import after_snapstart_restore
from airies.core.config import Settings

log = logging.getLogger(__name__)


class PostCallStarter(Protocol):
    def start(self, account_id: str, conversation_id: str) -> None: ...


class StepFunctionsPostCall:
    def __init__(self, state_machine_arn: str, *, region: str, endpoint_url: str | None = None, client: Any = None):
        self.arn = state_machine_arn
        self.region = region
        self.endpoint_url = endpoint_url
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _sfn_client(self.region, self.endpoint_url)
        return self._client

    def start(self, account_id: str, conversation_id: str) -> None:
        name = re.sub(r"[^A-Za-z0-9_-]", "", conversation_id)[:80]
        body = json.dumps({"account_id": account_id, "conversation_id": conversation_id})
        try:
            self.client.start_execution(stateMachineArn=self.arn, name=name, input=body)
        except self.client.exceptions.ExecutionAlreadyExists:
            log.info("post-call analysis already started for %s", conversation_id)


_clients: dict[tuple[str, str | None], Any] = {}


def _sfn_client(region: str, endpoint_url: str | None) -> Any:
    """One Step Functions client per container (a client takes tens of milliseconds to build)."""
    key = (region, endpoint_url)
    if key not in _clients:
        import boto3  # only when a conversation ends

        _clients[key] = boto3.client("stepfunctions", region_name=region, endpoint_url=endpoint_url)
    return _clients[key]


after_snapstart_restore(_clients.clear)  # a snapshot's pooled connections are stale after a restore

_in_process: list[PostCallStarter] = []


def register_in_process(starter: PostCallStarter | None) -> None:
    """Make conversations ended in this process run their analysis with ``starter`` (None: no longer)."""
    _in_process.clear()
    if starter is not None:
        _in_process.append(starter)


def post_call_starter(settings: Settings) -> PostCallStarter | None:
    if settings.analysis_state_machine_arn:
        return StepFunctionsPostCall(
            settings.analysis_state_machine_arn, region=settings.aws_region, endpoint_url=settings.aws_endpoint_url
        )
    return _in_process[0] if _in_process else None
