"""The post-call analysis state machine (infra/statemachines/analysis.asl.json) executed by moto.

As for the invoicing state machine, moto runs the ASL (``execute_state_machine``) and its Lambda invocations are
routed to the real AnalysisFunction handler (functions/analysis/handler.py), loaded in this process by the local
invoker. The LLM is the OpenAI wire double; the conversation is made and ended through the REST API.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any
from unittest.mock import patch

import boto3
import pytest
from moto import mock_aws
from moto.awslambda_simple.models import LambdaSimpleBackend
from sqlalchemy import select

from airies.core.config import Settings
from airies.local.invoke import LambdaContext, _clear_container_caches, load_handler, patched_environ, resolve_function
from airies.local.template import function_environment, state_machine_definition
from airies.webhooks.models import WebhookDelivery
from airies.webhooks.schemas import EndpointPut
from airies.webhooks.service import WebhookService
from tests.doubles.openai_server import OpenAIDouble, Reply
from tests.integration import test_conv_api as conv
from tests.integration.test_analysis import PLAN, SUMMARY, VALID, analysis_usage, detail, ended_call

engines = conv.engines
live_sessions = conv.live_sessions


class Harness:
    """moto + the state machine + Lambda invocations routed to the in-process handler."""

    def __init__(self, database, openai: OpenAIDouble) -> None:  # type: ignore[no-untyped-def]
        self.spec, self.ctx = resolve_function("AnalysisFunction")
        self.env = {
            **function_environment(self.spec, self.ctx),
            "DATABASE_URL": database.url,
            "AIRIES_OPENAI_API_KEY": "sk-test",
            "AIRIES_OPENAI_BASE_URL": openai.base_url,
            "AIRIES_USAGE_QUEUE_URL": "",  # usage straight into the ledger, as the local stack does
            "AIRIES_WEBHOOK_QUEUE_URL": "",  # events stored; nothing delivers them here
        }
        self.database = database
        self.invocations: list[dict[str, Any]] = []
        self.fail_tasks: dict[str, int] = {}  # task -> how many of its next invocations fail with a Lambda fault

    def routed_invoke(self, function_name, qualifier, body, headers, response_headers) -> bytes:  # type: ignore[no-untyped-def]
        event = json.loads(body)
        self.invocations.append(event)
        if self.fail_tasks.get(event.get("task"), 0) > 0:
            self.fail_tasks[event["task"]] -= 1
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps({"errorType": "OperationalError", "errorMessage": "connection lost"}).encode()
        try:
            result = self.handler(event, LambdaContext(self.spec))
        except Exception as exc:  # what the Lambda runtime reports for an unhandled error
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)}).encode()
        return json.dumps(result, default=str).encode()

    def __enter__(self) -> Harness:
        self._env = patched_environ(self.env)
        self._env.__enter__()
        _clear_container_caches()
        self.handler, self.module = load_handler(self.spec)
        self._aws = mock_aws(config={"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}})
        self._aws.__enter__()
        self._patch = patch.object(LambdaSimpleBackend, "invoke", self.routed_invoke)
        self._patch.__enter__()
        self.sfn = boto3.client("stepfunctions", region_name="us-east-1")
        definition = state_machine_definition(self.ctx, self.ctx.resources["AnalysisStateMachine"])
        assert "${" not in definition
        # Retry intervals of seconds: moto waits them out; the test shortens them, keeping every other field.
        fast = json.loads(definition)
        for state in fast["States"].values():
            for retry in state.get("Retry", []):
                retry["IntervalSeconds"] = 1
                retry["BackoffRate"] = 1
        self.arn = self.sfn.create_state_machine(
            name="analysis", definition=json.dumps(fast), roleArn="arn:aws:iam::123456789012:role/sfn"
        )["stateMachineArn"]
        return self

    def __exit__(self, *exc: Any) -> None:
        self._patch.__exit__(*exc)
        self._aws.__exit__(*exc)
        self._env.__exit__(*exc)
        _clear_container_caches()

    def run(self, account_id: str, conversation_id: str, timeout: float = 120) -> dict[str, Any]:
        payload = {"account_id": account_id, "conversation_id": conversation_id}
        execution = self.sfn.start_execution(
            stateMachineArn=self.arn, name=f"run-{uuid.uuid4().hex[:12]}", input=json.dumps(payload)
        )["executionArn"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            described = self.sfn.describe_execution(executionArn=execution)
            if described["status"] != "RUNNING":
                return described
            time.sleep(0.2)
        raise AssertionError("state machine did not finish")


@pytest.fixture
def openai() -> Iterator[OpenAIDouble]:
    with OpenAIDouble() as double:
        yield double


def ended_reports(database, cid: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    with database.session() as s:
        rows = s.scalars(select(WebhookDelivery).where(WebhookDelivery.event_type == "conversation.ended"))
        return [r.payload["data"] for r in rows if r.payload["data"]["conversation_id"] == cid]


def endpoint_for(database, settings: Settings, account_id: str) -> None:  # type: ignore[no-untyped-def]
    settings.url_guard_allowed_hosts = "127.0.0.1"  # nothing is delivered: the events are only stored
    with database.session() as session:
        WebhookService(session, settings, queue=None).put_endpoint(
            account_id, None, EndpointPut(url="http://127.0.0.1:9/hook", events=["conversation.ended"])
        )


def test_the_state_machine_analyses_bills_once_and_sends_the_report(client, auth, engines, openai, database, settings):  # type: ignore[no-untyped-def]
    def respond(body: dict[str, Any]) -> Reply:
        if not body.get("response_format"):
            return Reply(text=SUMMARY, prompt_tokens=120, completion_tokens=18)
        if "Score the call" in body["messages"][0]["content"]:
            return Reply(text=json.dumps({"score": 9, "reason": "Answered."}), prompt_tokens=90, completion_tokens=9)
        return Reply(text=VALID, prompt_tokens=150, completion_tokens=15)

    openai.responder = respond
    cid = ended_call(client, auth)
    account_id = client.get("/api/v1/accounts/me", headers=auth).json()["id"]
    endpoint_for(database, settings, account_id)
    assert ended_reports(database, cid) == []  # no analysis ran yet (nothing was registered to start it)

    with Harness(database, openai) as harness:
        harness.fail_tasks["analyse"] = 1  # a transient Lambda fault: retried
        result = harness.run(account_id, cid)
        assert result["status"] == "SUCCEEDED", result
        assert [e["task"] for e in harness.invocations] == ["analyse", "analyse", "publish"]
        body = detail(client, auth, cid)
        assert body["analysis_status"] == "completed"
        assert body["analysis"]["structured_data"] == json.loads(VALID)
        billed = analysis_usage(database, cid)
        reports = ended_reports(database, cid)
        assert len(reports) == 1 and reports[0]["analysis"]["status"] == "completed"
        assert reports[0]["analysis"]["summary"] == SUMMARY
        requests = len(openai.chat_requests)

        # A second execution of the same conversation (a redriven start): nothing asked, billed or sent twice.
        again = harness.run(account_id, cid)
        assert again["status"] == "SUCCEEDED", again
        assert len(openai.chat_requests) == requests
        assert [r.idempotency_key for r in analysis_usage(database, cid)] == [r.idempotency_key for r in billed]
        assert len(ended_reports(database, cid)) == 1


def test_a_provider_that_keeps_failing_stores_failed_and_still_sends_the_report(
    client, auth, engines, openai, database, settings
):  # type: ignore[no-untyped-def]
    openai.default = Reply(status=503, error_message="overloaded")
    cid = ended_call(client, auth, PLAN)
    account_id = client.get("/api/v1/accounts/me", headers=auth).json()["id"]
    endpoint_for(database, settings, account_id)
    with Harness(database, openai) as harness:
        result = harness.run(account_id, cid)
        assert result["status"] == "SUCCEEDED", result
        tasks = [e["task"] for e in harness.invocations]
        assert tasks == ["analyse"] * 4 + ["fail", "publish"]  # the first try and three retries
        body = detail(client, auth, cid)
        assert body["analysis_status"] == "failed"
        assert "ProviderRetryableError" in body["analysis"]["error"]
        assert body["analysis"].get("structured_data") is None and body["analysis"].get("summary") is None
        assert analysis_usage(database, cid) == []  # nothing answered, nothing billed
        (report,) = ended_reports(database, cid)
        assert report["analysis"]["status"] == "failed"
