"""Post-call analysis units: schema examples, the offline responder's analysis answers, answer parsing, the
Step Functions starter (moto) and the plan's schema checks."""

from __future__ import annotations

import asyncio
import json

import boto3
import jsonschema
import pytest
from moto import mock_aws
from pydantic import ValidationError

from airies.agents.config import AnalysisPlan, AnalysisStructuredData
from airies.analysis.service import InvalidOutput, StepResult, analysis_status, parse_json
from airies.conversations.post_call import StepFunctionsPostCall
from airies.llm.json_example import example_for
from airies.llm.router import collect_response
from airies.llm.vendors.base import LLMRequest
from airies.llm.vendors.offline import OfflineResponder

SCHEMAS = [
    {"type": "object", "properties": {"a": {"type": "string", "minLength": 12, "maxLength": 20}}},
    {"type": "object", "properties": {"n": {"type": "integer", "exclusiveMinimum": 3, "maximum": 9, "multipleOf": 2}}},
    {"type": "object", "properties": {"x": {"type": "number", "minimum": -5.5, "maximum": -1}}},
    {"type": "object", "properties": {"day": {"type": "string", "format": "date"}, "kind": {"enum": ["a", "b"]}}},
    {
        "type": "object",
        "properties": {"items": {"type": "array", "minItems": 2, "items": {"$ref": "#/$defs/item"}}},
        "$defs": {"item": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}},
    },
    {"type": "object", "properties": {"v": {"anyOf": [{"type": "null"}, {"type": "integer"}]}}},
    {"type": "object", "allOf": [{"properties": {"p": {"type": "string"}}}, {"properties": {"q": {"const": 3}}}]},
    {"type": "object", "properties": {"maybe": {"type": ["null", "string"]}}, "required": ["maybe"]},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_the_example_of_a_schema_validates_against_it(schema: dict) -> None:
    jsonschema.validate(example_for(schema), schema)
    assert example_for(schema) == example_for(schema)


def test_the_offline_responder_answers_json_from_the_schema_and_summarises() -> None:
    schema = SCHEMAS[4]
    transcript = "Transcript:\nCaller: goodbye, I want a refund\nAgent: Sure.\nCaller: bye bye\nAgent: Goodbye!"
    messages = [{"role": "system", "content": "..."}, {"role": "user", "content": transcript}]
    offline = OfflineResponder()
    as_json = asyncio.run(
        collect_response(offline.stream(LLMRequest(model="m", messages=messages, metadata={"json_schema": schema})))
    )
    jsonschema.validate(json.loads(as_json.text), schema)  # never the end-call reply, whatever the caller said
    assert as_json.end.metadata["offline_reason"] == "json_example" and as_json.end.usage.completion_tokens > 0
    summary = offline.decide(LLMRequest(model="m", messages=messages, metadata={"transcript_summary": True}))
    assert summary[0] == (
        'The caller spoke twice and the agent twice. The caller first said: "goodbye, I want a refund". '
        'The agent last said: "Goodbye!".'
    )


def test_answers_are_parsed_fenced_or_not_and_checked() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    assert parse_json(' {"a": 1} ', schema) == {"a": 1}
    assert parse_json('```json\n{"a": 2}\n```', schema) == {"a": 2}
    with pytest.raises(InvalidOutput, match="not JSON"):
        parse_json("Sure! Here it is: {a: 1}", schema)
    with pytest.raises(InvalidOutput, match="at a: 'x' is not of type 'integer'"):
        parse_json('{"a": "x"}', schema)
    assert analysis_status({}) == "skipped"
    assert analysis_status({"a": StepResult("completed"), "b": StepResult("failed")}) == "failed"


def test_the_plan_checks_its_schema() -> None:
    plan = AnalysisPlan()
    assert plan.summary.enabled and not plan.structured_data.enabled and not plan.success_evaluation.enabled
    with pytest.raises(ValidationError, match="must be a JSON Schema of an object"):
        AnalysisStructuredData(json_schema={"type": "string"})
    with pytest.raises(ValidationError, match="at most 20 KiB as JSON"):
        AnalysisStructuredData(json_schema={"type": "object", "description": "x" * 30_000})
    with pytest.raises(ValidationError, match="required when structured data is enabled"):
        AnalysisStructuredData(enabled=True)


def test_one_execution_per_conversation() -> None:
    with mock_aws():
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        arn = sfn.create_state_machine(
            name="analysis",
            definition='{"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}',
            roleArn="arn:aws:iam::123456789012:role/sfn",
        )["stateMachineArn"]
        starter = StepFunctionsPostCall(arn, region="us-east-1", client=sfn)
        starter.start("acc_1", "conv_1")
        starter.start("acc_1", "conv_1")  # a repeated end: refused by Step Functions, not an error
        executions = sfn.list_executions(stateMachineArn=arn)["executions"]
        assert [e["name"] for e in executions] == ["conv_1"]
        described = sfn.describe_execution(executionArn=executions[0]["executionArn"])
        assert json.loads(described["input"]) == {"account_id": "acc_1", "conversation_id": "conv_1"}
