"""The post-call analysis state machine (infra/statemachines/analysis.asl.json) executed by moto.

As for the invoicing state machine, moto runs the ASL (``execute_state_machine``) and its Lambda invocations are
routed to the real AnalysisFunction handler (functions/analysis/handler.py), loaded in this process by the local
invoker. The LLM is the OpenAI wire double; the conversation is made and ended through the REST API.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from airies.core.config import Settings
from airies.webhooks.models import WebhookDelivery
from airies.webhooks.schemas import EndpointPut
from airies.webhooks.service import WebhookService
from tests.doubles.openai_server import OpenAIDouble, Reply
from tests.integration import test_conv_api as conv
from tests.integration.test_analysis import PLAN, SUMMARY, VALID, analysis_usage, detail, ended_call
from tests.sfn_support import StateMachineHarness

engines = conv.engines
live_sessions = conv.live_sessions


class Harness(StateMachineHarness):
    """The analysis state machine, its tasks run by AnalysisFunction's handler; the LLM is the OpenAI double.
    ``fail_tasks``: how many of a task's next invocations fail with a transient Lambda-reported error."""

    def __init__(self, database, openai: OpenAIDouble) -> None:  # type: ignore[no-untyped-def]
        super().__init__(
            "AnalysisFunction",
            "AnalysisStateMachine",
            {
                "DATABASE_URL": database.url,
                "AIRIES_OPENAI_API_KEY": "sk-test",
                "AIRIES_OPENAI_BASE_URL": openai.base_url,
                "AIRIES_USAGE_QUEUE_URL": "",  # usage straight into the ledger, as the local stack does
                "AIRIES_WEBHOOK_QUEUE_URL": "",  # events stored; nothing delivers them here
            },
        )
        self.fail_tasks: dict[str, int] = {}

    def definition(self, text: str) -> str:
        # Retry waits of seconds: moto waits them out; shortened here, every other field kept.
        fast = json.loads(text)
        for state in fast["States"].values():
            for retry in state.get("Retry", []):
                retry["IntervalSeconds"] = 1
                retry["BackoffRate"] = 1
        return json.dumps(fast)

    def routed_invoke(self, function_name, qualifier, body, headers, response_headers) -> bytes:  # type: ignore[no-untyped-def]
        task = json.loads(body).get("task")
        if self.fail_tasks.get(task, 0) > 0:
            self.fail_tasks[task] -= 1
            self.invocations.append(json.loads(body))
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps({"errorType": "OperationalError", "errorMessage": "connection lost"}).encode()
        return super().routed_invoke(function_name, qualifier, body, headers, response_headers)

    def run_for(self, account_id: str, conversation_id: str) -> dict[str, Any]:
        return self.run({"account_id": account_id, "conversation_id": conversation_id})


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
        result = harness.run_for(account_id, cid)
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
        again = harness.run_for(account_id, cid)
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
        result = harness.run_for(account_id, cid)
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
