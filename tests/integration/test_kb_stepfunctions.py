"""The ingestion state machine's ASL, executed by moto's Step Functions interpreter.

moto runs ASL only with ``execute_state_machine``; its Lambda tasks are routed to the in-process task handler
(functions/ingestion/tasks.py) by replacing moto's no-Docker Lambda backend ``invoke`` for the test's duration.
The large-document path then is: S3 event -> IngestionFunction -> StartExecution -> Prepare -> Map(embed) -> Finalise.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import boto3
import pytest
from moto.awslambda_simple.models import LambdaSimpleBackend

from airies.core.errors import ProviderError
from airies.knowledge.service import build_knowledge_service
from tests.kb_support import (
    BUCKET,
    FakeLambdaContext,
    RecordingPublisher,
    drain,
    kb_settings,
    load_function,
    make_pdf,
    moto_bucket,
    new_account,
    sqs_event,
)

ASL = Path(__file__).resolve().parents[2] / "infra" / "statemachines" / "ingestion.asl.json"
MOTO_CONFIG = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}


@pytest.fixture
def machine(database, tmp_path, monkeypatch):
    tasks = load_function("tasks")
    calls: list[dict] = []

    def invoke(self, function_name, qualifier, body, headers, response_headers):
        event = json.loads(body or "{}")
        calls.append(event)
        try:
            result = tasks.handler(event, FakeLambdaContext())
        except Exception as exc:
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)}).encode()
        return json.dumps(result).encode()

    monkeypatch.setattr(LambdaSimpleBackend, "invoke", invoke)
    with moto_bucket(MOTO_CONFIG) as s3:
        iam = boto3.client("iam", region_name="us-east-1")
        role = iam.create_role(RoleName="kb-role", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        zipped = io.BytesIO()
        with zipfile.ZipFile(zipped, "w") as archive:
            archive.writestr("tasks.py", "def handler(event, context):\n    return event\n")
        function_arn = boto3.client("lambda", region_name="us-east-1").create_function(
            FunctionName="kb-ingestion-tasks",
            Runtime="python3.12",
            Role=role,
            Handler="tasks.handler",
            Code={"ZipFile": zipped.getvalue()},
        )["FunctionArn"]
        definition = ASL.read_text().replace("${IngestionTaskFunctionArn}", function_arn)
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        arn = sfn.create_state_machine(name="kb-ingestion", definition=definition, roleArn=role)["stateMachineArn"]
        sqs = boto3.client("sqs", region_name="us-east-1")
        queue_url = sqs.create_queue(QueueName="kb-ingestion")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        s3.put_bucket_notification_configuration(
            Bucket=BUCKET,
            NotificationConfiguration={
                "QueueConfigurations": [{"QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"]}]
            },
        )
        settings = kb_settings(
            tmp_path, kb_ingestion_state_machine_arn=arn, kb_large_document_bytes=1000, kb_embed_batch_chunks=4
        )
        service = build_knowledge_service(settings, database, usage_publisher=RecordingPublisher(), sfn_client=sfn)
        handler = load_function("handler")
        handler.service.set(service)
        tasks.service.set(service)
        try:
            yield {
                "s3": s3,
                "sqs": sqs,
                "queue_url": queue_url,
                "sfn": sfn,
                "arn": arn,
                "service": service,
                "handler": handler,
                "calls": calls,
                "database": database,
            }
        finally:
            handler.service.set(None)
            tasks.service.set(None)


def _wait(sfn, arn: str) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        executions = sfn.list_executions(stateMachineArn=arn)["executions"]
        if executions and all(e["status"] != "RUNNING" for e in executions):
            return sfn.describe_execution(executionArn=executions[0]["executionArn"])
        time.sleep(0.05)
    raise AssertionError("the state machine did not finish in 60 s")


def emitted(out: str, name: str) -> int:
    """How many of the EMF metric ``name`` the handlers printed."""
    docs = [json.loads(line) for line in out.splitlines() if f'"{name}"' in line and '"_aws"' in line]
    return int(sum(sum(v) if isinstance(v, list) else v for v in (d[name] for d in docs)))


def test_large_document_goes_through_the_state_machine(machine, capsys, monkeypatch):
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    m = machine
    service = m["service"]
    account = new_account(m["database"])
    kb = service.create_knowledge_base(account, "Manuals", chunk_size=60, chunk_overlap=10)
    doc, _ = service.upload_document(account, kb.id, filename="manual.pdf", content_type="application/pdf")
    pages = [
        f"Section {i}. The pump model P{i} needs a filter change every {i + 2} months. "
        f"Error code E{i}0 means the inlet valve {i} is blocked; clean it and restart the unit." * 2
        for i in range(12)
    ]
    m["s3"].put_object(Bucket=BUCKET, Key=f"accounts/{account}/{doc.storage_key}", Body=make_pdf(pages))
    messages = drain(m["sqs"], m["queue_url"])
    result = m["handler"].handler(sqs_event(messages), FakeLambdaContext())
    assert result == {"batchItemFailures": []}

    execution = _wait(m["sfn"], m["arn"])
    assert execution["status"] == "SUCCEEDED", execution
    tasks = [c["task"] for c in m["calls"]]
    ready = service.get_document(account, kb.id, doc.id)
    assert ready.status == "ready", ready.error
    batches = -(-ready.chunk_count // 4)
    assert batches >= 2  # the Map really fanned out
    assert tasks.count("prepare") == 1 and tasks.count("embed") == batches and tasks[-1] == "finalise"
    assert ready.page_count == 12
    hit = service.query_knowledge_base(account, kb.id, "what does error code E70 mean", top_k=3)
    assert any("E70" in h.text for h in hit)
    out = capsys.readouterr().out
    assert emitted(out, "DocumentsIngested") == 1 and emitted(out, "DocumentsFailed") == 0

    # A duplicated event for the same object version starts no second execution.
    again = m["handler"].handler(sqs_event(messages), FakeLambdaContext())
    assert again == {"batchItemFailures": []}
    assert len(m["sfn"].list_executions(stateMachineArn=m["arn"])["executions"]) == 1


def test_rejected_large_document_ends_failed_through_the_choice_state(machine, capsys, monkeypatch):
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    m = machine
    service = m["service"]
    account = new_account(m["database"])
    kb = service.create_knowledge_base(account, "Bad")
    doc, _ = service.upload_document(account, kb.id, filename="broken.pdf", content_type="application/pdf")
    m["s3"].put_object(
        Bucket=BUCKET, Key=f"accounts/{account}/{doc.storage_key}", Body=b"%PDF-1.7\n" + b"garbage " * 500
    )
    m["handler"].handler(sqs_event(drain(m["sqs"], m["queue_url"])), FakeLambdaContext())
    execution = _wait(m["sfn"], m["arn"])
    assert execution["status"] == "SUCCEEDED"  # the run itself is fine: it recorded the failure and stopped
    failed = service.get_document(account, kb.id, doc.id)
    assert (failed.status, failed.error_code) == ("failed", "corrupt_pdf")
    assert [c["task"] for c in m["calls"]] == ["prepare"]
    out = capsys.readouterr().out
    assert emitted(out, "DocumentsFailed") == 1 and emitted(out, "DocumentsIngested") == 0


def _upload_large(m) -> tuple[str, str, str]:
    service = m["service"]
    account = new_account(m["database"])
    kb = service.create_knowledge_base(account, "Retries", chunk_size=60, chunk_overlap=10)
    doc, _ = service.upload_document(account, kb.id, filename="manual.pdf", content_type="application/pdf")
    pages = [
        f"Section {i}. Part P{i} is replaced every {i + 2} months; code E{i}0 means valve {i}." * 3 for i in range(6)
    ]
    m["s3"].put_object(Bucket=BUCKET, Key=f"accounts/{account}/{doc.storage_key}", Body=make_pdf(pages))
    m["handler"].handler(sqs_event(drain(m["sqs"], m["queue_url"])), FakeLambdaContext())
    return account, kb.id, doc.id


def _failing_embed(service, monkeypatch, error: ProviderError, times: int) -> None:
    real = service.embed_chunk_range
    left = {"n": times}

    def embed(*args, **kwargs):  # type: ignore[no-untyped-def]
        if left["n"] > 0:
            left["n"] -= 1
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "embed_chunk_range", embed)


def test_a_permanent_provider_error_is_not_retried_and_marks_the_document_failed(machine, monkeypatch):
    m = machine
    rejected = ProviderError("embedding key rejected", provider="openai", retryable=False, upstream_status=401)
    _failing_embed(m["service"], monkeypatch, rejected, times=1_000)
    account, kb_id, doc_id = _upload_large(m)
    execution = _wait(m["sfn"], m["arn"])
    assert execution["status"] == "FAILED" and execution["error"] == "IngestionFailed"
    embeds = [c for c in m["calls"] if c["task"] == "embed"]
    starts = [c["start"] for c in embeds]
    assert len(starts) == len(set(starts)), "a rejected batch was retried"
    failed = m["service"].get_document(account, kb_id, doc_id)
    assert failed.status == "failed" and "ProviderRejectedError" in (failed.error or "")


def test_a_transient_provider_error_is_retried_and_the_document_gets_ready(machine, monkeypatch):
    m = machine
    flaky = ProviderError("embeddings unavailable", provider="openai", retryable=True, upstream_status=503)
    _failing_embed(m["service"], monkeypatch, flaky, times=1)
    account, kb_id, doc_id = _upload_large(m)
    execution = _wait(m["sfn"], m["arn"])
    assert execution["status"] == "SUCCEEDED", execution
    ready = m["service"].get_document(account, kb_id, doc_id)
    batches = -(-ready.chunk_count // 4)
    assert ready.status == "ready"
    assert len([c for c in m["calls"] if c["task"] == "embed"]) == batches + 1  # the failed batch ran twice
