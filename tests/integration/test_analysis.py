"""Post-call analysis on both databases: the plan runs through the LLM router to the OpenAI wire double (the real
SDK), its result is stored on the conversation and returned by GET /conversations/{id}, billed as LLM usage once,
and sent in conversation.ended; offline (no key) it still gives a schema-valid result."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import jsonschema
import pytest
from sqlalchemy import select

from airies.analysis.service import PostCallAnalysis, build_post_call_analysis
from airies.billing.models import BillingAccount, UsageEventRecord
from airies.conversations import post_call
from airies.webhooks.models import WebhookDelivery
from airies.webhooks.schemas import EndpointPut
from airies.webhooks.service import WebhookService
from tests.doubles.openai_server import OpenAIDouble, Reply
from tests.integration import test_conv_api as conv
from tests.integration.test_conv_api import deployed_agent, start

SCHEMA = {
    "type": "object",
    "properties": {"destination": {"type": ["string", "null"]}, "wants_callback": {"type": "boolean"}},
    "required": ["destination", "wants_callback"],
}
PLAN = {
    "summary": {"enabled": True, "prompt": "Summarise the call."},
    "structured_data": {"enabled": True, "json_schema": SCHEMA, "prompt": "Extract the shipping destination."},
    "success_evaluation": {"enabled": True, "rubric": "numeric_1_10"},
}
SUMMARY = "The caller asked about shipping abroad; the agent said it ships worldwide."
VALID = json.dumps({"destination": "France", "wants_callback": False})
INVALID = json.dumps({"destination": "France"})  # wants_callback is required
SCORE = json.dumps({"score": 8, "reason": "The question was answered."})


engines = conv.engines  # the conversations tests' fixtures: interface-level engines, live sessions under moto
live_sessions = conv.live_sessions


class Inline:
    """The in-process starter, run at once (the local stack hands the same call to a thread)."""

    def __init__(self, runner: PostCallAnalysis) -> None:
        self.runner = runner
        self.started: list[str] = []

    def start(self, account_id: str, conversation_id: str) -> None:
        self.started.append(conversation_id)
        self.runner.run(account_id, conversation_id)


@pytest.fixture
def openai(settings) -> Iterator[OpenAIDouble]:  # type: ignore[no-untyped-def]
    with OpenAIDouble() as double:
        settings.openai_api_key = "sk-test"
        settings.openai_base_url = double.base_url
        yield double


@pytest.fixture
def inline(app, settings, database) -> Iterator[Inline]:  # type: ignore[no-untyped-def]
    starter = Inline(build_post_call_analysis(settings, database))
    post_call.register_in_process(starter)
    yield starter
    post_call.register_in_process(None)


def json_requests(double: OpenAIDouble) -> list[dict[str, Any]]:
    return [r.body for r in double.chat_requests if r.body and r.body.get("response_format")]


def ended_call(client, auth, plan: dict[str, Any] = PLAN) -> str:  # type: ignore[no-untyped-def]
    agent_id = deployed_agent(client, auth, analysis=plan)
    cid = start(client, auth, agent_id)["id"]
    reply = client.post(f"/api/v1/conversations/{cid}/message", json={"text": "Do you ship to France?"}, headers=auth)
    assert reply.status_code == 200, reply.text
    ended = client.put(f"/api/v1/conversations/{cid}", json={"status": "ended"}, headers=auth)
    assert ended.status_code == 200, ended.text
    return cid


def detail(client, auth, cid: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    response = client.get(f"/api/v1/conversations/{cid}", headers=auth)
    assert response.status_code == 200, response.text
    return response.json()


def analysis_usage(database, cid: str) -> list[UsageEventRecord]:  # type: ignore[no-untyped-def]
    with database.session() as s:
        rows = s.scalars(select(UsageEventRecord).where(UsageEventRecord.idempotency_key.like(f"{cid}:analysis:%")))
        return list(rows)


def scripted(*json_answers: str) -> Any:
    """Summary requests get the summary; JSON requests get ``json_answers`` in order (the last one repeats)."""
    answers = list(json_answers)

    def respond(body: dict[str, Any]) -> Reply:
        if not body.get("response_format"):
            return Reply(text=SUMMARY, prompt_tokens=120, completion_tokens=18)
        system = body["messages"][0]["content"]
        if "Score the call" in system:
            return Reply(text=SCORE, prompt_tokens=110, completion_tokens=12)
        text = answers.pop(0) if len(answers) > 1 else answers[0]
        return Reply(text=text, prompt_tokens=150, cached_tokens=50, completion_tokens=15)

    return respond


def ended_reports(database, account_id: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    with database.session() as s:
        rows = s.scalars(
            select(WebhookDelivery).where(
                WebhookDelivery.account_id == account_id, WebhookDelivery.event_type == "conversation.ended"
            )
        )
        return [r.payload["data"] for r in rows]


def with_endpoint(client, auth, database, settings) -> str:  # type: ignore[no-untyped-def]
    """An account-wide endpoint wanting conversation.ended (stored only: no queue delivers it here)."""
    account_id = client.get("/api/v1/accounts/me", headers=auth).json()["id"]
    settings.url_guard_allowed_hosts = "127.0.0.1"
    with database.session() as session:
        WebhookService(session, settings, queue=None).put_endpoint(
            account_id, None, EndpointPut(url="http://127.0.0.1:9/hook", events=["conversation.ended"])
        )
    return account_id


def test_a_valid_answer_is_stored_returned_and_reported(
    client, auth, engines, openai, inline, database, settings
) -> None:  # type: ignore[no-untyped-def]
    openai.responder = scripted(VALID)
    account_id = with_endpoint(client, auth, database, settings)
    cid = ended_call(client, auth)
    body = detail(client, auth, cid)
    assert body["analysis_status"] == "completed", body["analysis"]
    analysis = body["analysis"]
    assert analysis["summary"] == SUMMARY
    assert analysis["structured_data"] == {"destination": "France", "wants_callback": False}
    assert analysis["success_evaluation"] == {
        "rubric": "numeric_1_10",
        "score": 8,
        "reason": "The question was answered.",
    }
    assert analysis["offline"] is False and analysis["steps"]["structured_data"]["status"] == "completed"
    assert len(analysis["steps"]["structured_data"]["attempts"]) == 1
    sent = json_requests(openai)[0]
    assert sent["response_format"] == {"type": "json_object"} and sent["temperature"] == 0.0
    assert sent["model"] == "gpt-4o-mini" and "Caller: Do you ship to France?" in sent["messages"][-1]["content"]
    assert json.dumps(SCHEMA, sort_keys=True) in sent["messages"][0]["content"]
    (report,) = ended_reports(database, account_id)  # sent once the analysis is stored, with it
    assert report["conversation_id"] == cid and report["analysis"] == {"status": "completed", **analysis}


def test_a_deleted_conversation_reports_at_once_without_analysis(
    client, auth, engines, inline, database, settings
) -> None:  # type: ignore[no-untyped-def]
    account_id = with_endpoint(client, auth, database, settings)
    cid = start(client, auth, deployed_agent(client, auth))["id"]
    client.post(f"/api/v1/conversations/{cid}/message", json={"text": "Hello"}, headers=auth)
    assert client.delete(f"/api/v1/conversations/{cid}", headers=auth).status_code == 204
    assert inline.started == []
    (report,) = ended_reports(database, account_id)
    assert report["conversation_id"] == cid and report["end_reason"] == "deleted" and report["analysis"] is None


def test_an_invalid_answer_is_asked_again_once(client, auth, engines, openai, inline) -> None:  # type: ignore[no-untyped-def]
    openai.responder = scripted(INVALID, VALID)
    cid = ended_call(client, auth)
    analysis = detail(client, auth, cid)["analysis"]
    assert analysis["structured_data"] == {"destination": "France", "wants_callback": False}
    step = analysis["steps"]["structured_data"]
    assert step["status"] == "completed" and len(step["attempts"]) == 2 and step["error"] is None
    first, second = [r for r in json_requests(openai) if "Extract the shipping" in r["messages"][0]["content"]]
    assert second["messages"][-2] == {"role": "assistant", "content": INVALID}
    assert "'wants_callback' is a required property" in second["messages"][-1]["content"]
    assert len(first["messages"]) == 2


def test_invalid_twice_fails_without_inventing_data(client, auth, engines, openai, inline) -> None:  # type: ignore[no-untyped-def]
    openai.responder = scripted("not json at all", INVALID)
    cid = ended_call(client, auth)
    body = detail(client, auth, cid)
    assert body["analysis_status"] == "failed"
    analysis = body["analysis"]
    assert analysis["structured_data"] is None
    step = analysis["steps"]["structured_data"]
    assert step["status"] == "failed" and len(step["attempts"]) == 2
    assert "wants_callback" in step["error"]
    assert analysis["summary"] == SUMMARY  # the steps that succeeded keep their result


def test_billed_once_as_llm_usage_exactly(client, auth, engines, openai, inline, database, settings) -> None:  # type: ignore[no-untyped-def]
    openai.responder = scripted(INVALID, VALID)
    cid = ended_call(client, auth)
    analysis = detail(client, auth, cid)["analysis"]
    rows = analysis_usage(database, cid)
    quantities = {r.idempotency_key.split(":", 1)[1]: Decimal(r.quantity_micro) / 10**6 for r in rows}
    assert quantities == {
        "analysis:summary:1:llm_input_tokens": 120,
        "analysis:summary:1:llm_output_tokens": 18,
        "analysis:structured_data:1:llm_input_tokens": 100,
        "analysis:structured_data:1:llm_cached_tokens": 50,
        "analysis:structured_data:1:llm_output_tokens": 15,
        "analysis:structured_data:2:llm_input_tokens": 100,
        "analysis:structured_data:2:llm_cached_tokens": 50,
        "analysis:structured_data:2:llm_output_tokens": 15,
        "analysis:success_evaluation:1:llm_input_tokens": 110,
        "analysis:success_evaluation:1:llm_output_tokens": 12,
    }
    assert all(r.provider == "openai" and r.model == "gpt-4o-mini" and r.conversation_id == cid for r in rows)
    # what the ledger charged is what the stored analysis says it cost (exact: 9 decimal places of USD)
    picos = sum(r.cost_picousd for r in rows)
    assert Decimal(picos) / 10**12 == Decimal(analysis["cost_usd"]) > 0
    with database.session() as s:
        account_id = rows[0].account_id
        balance = s.get(BillingAccount, account_id).balance_micros
    # a retried execution: the stored result is kept and billed again under the same keys (counted once)
    requests = len(openai.chat_requests)
    runner = build_post_call_analysis(settings, database)
    assert runner.analyse(account_id, cid) == "completed"
    assert len(openai.chat_requests) == requests
    assert len(analysis_usage(database, cid)) == len(rows)
    with database.session() as s:
        assert s.get(BillingAccount, account_id).balance_micros == balance
    assert detail(client, auth, cid)["analysis"] == analysis


def test_offline_the_result_is_deterministic_and_schema_valid(client, auth, engines, inline) -> None:  # type: ignore[no-untyped-def]
    first = detail(client, auth, ended_call(client, auth))
    second = detail(client, auth, ended_call(client, auth))
    assert first["analysis_status"] == "completed" and first["analysis"]["offline"] is True
    jsonschema.validate(first["analysis"]["structured_data"], SCHEMA)
    for part in ("summary", "structured_data", "success_evaluation"):
        assert first["analysis"][part] == second["analysis"][part]
    assert 'The caller first said: "Do you ship to France?"' in first["analysis"]["summary"]
    assert 1 <= first["analysis"]["success_evaluation"]["score"] <= 10


def test_no_step_enabled_or_nothing_said_is_skipped(client, auth, engines, inline) -> None:  # type: ignore[no-untyped-def]
    off = {"summary": {"enabled": False}}
    body = detail(client, auth, ended_call(client, auth, off))
    assert body["analysis_status"] == "skipped" and body["analysis"]["steps"] == {}
    agent_id = deployed_agent(client, auth)
    silent = start(client, auth, agent_id)["id"]
    client.put(f"/api/v1/conversations/{silent}", json={"status": "ended"}, headers=auth)
    quiet = detail(client, auth, silent)
    assert quiet["analysis_status"] == "skipped" and quiet["analysis"] == {"reason": "nothing was said on the call"}


def test_without_a_runner_nothing_is_pending(client, auth, engines) -> None:  # type: ignore[no-untyped-def]
    body = detail(client, auth, ended_call(client, auth))
    assert body["analysis_status"] is None and body["analysis"] is None


class Broken:
    def start(self, account_id: str, conversation_id: str) -> None:
        raise RuntimeError("Step Functions is down")


def test_when_the_analysis_cannot_start_the_report_is_sent_at_once(client, auth, engines, database, settings) -> None:  # type: ignore[no-untyped-def]
    account_id = with_endpoint(client, auth, database, settings)
    post_call.register_in_process(Broken())
    try:
        cid = ended_call(client, auth)  # the call still ends
    finally:
        post_call.register_in_process(None)
    assert detail(client, auth, cid)["analysis_status"] == "pending"
    (report,) = ended_reports(database, account_id)
    assert report["conversation_id"] == cid and report["analysis"] == {"status": "pending"}
