"""Shared helpers of the knowledge-base tests (the capability prefix keeps it clear of others' files)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airies.core.config import Settings

BUCKET = "airies-kb-documents-test"


class RecordingPublisher:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def publish(self, events: Any) -> None:
        self.events.extend(events)


def kb_settings(tmp_path: Any, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "stage": "local",
        "data_dir": tmp_path,
        "kb_documents_bucket": BUCKET,
        "aws_region": "us-east-1",
        "kb_scrape_allowed_private_hosts": "127.0.0.1",
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def moto_bucket(config: dict[str, Any] | None = None) -> Iterator[Any]:
    import boto3
    from moto import mock_aws

    with mock_aws(config=config) if config else mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        yield s3


def make_pdf(pages: list[str]) -> bytes:
    """A real text PDF (Helvetica, one text line per ~90 chars), built by hand: no PDF writer dependency."""
    objects: list[bytes] = []
    kids = []
    font_id = 3
    page_ids = []
    next_id = 4
    for _ in pages:
        page_ids.append((next_id, next_id + 1))
        next_id += 2
    for page_id, _ in page_ids:
        kids.append(f"{page_id} 0 R")
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for text, (_page_id, content_id) in zip(pages, page_ids, strict=True):
        lines = []
        for paragraph in text.split("\n"):
            words, line = paragraph.split(), ""
            for word in words:
                if len(line) + len(word) > 90:
                    lines.append(line)
                    line = ""
                line = f"{line} {word}".strip()
            lines.append(line)
        ops = ["BT", "/F1 10 Tf", "12 TL", "50 780 Td"]
        for line in lines:
            escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"({escaped}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1", errors="replace")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 {font_id} 0 R >> >>"
            f" /Contents {content_id} 0 R >>".encode()
        )
        objects.append(b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def make_docx(paragraphs: list[str]) -> bytes:
    import docx

    document = docx.Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def new_account(database: Any) -> str:
    from airies.accounts.models import Account
    from airies.core.ids import new_id

    with database.session() as session:
        account = Account(
            id=new_id("acc"), name="KB Co", email=f"{new_id('e')}@example.com", plan="free", status="active"
        )
        session.add(account)
    return account.id


class FakeLambdaContext:
    function_name = "airies-test-ingestion"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:airies-test-ingestion"
    memory_limit_in_mb = 1024
    aws_request_id = "00000000-0000-4000-8000-000000000000"
    log_group_name = "/aws/lambda/airies-test-ingestion"
    log_stream_name = "test"

    def get_remaining_time_in_millis(self) -> int:
        return 300_000


def load_function(name: str) -> Any:
    """Import functions/ingestion/<name>.py as its own module (every capability has a handler.py)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "functions" / "ingestion" / f"{name}.py"
    module_name = f"_kb_test_fn_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def sqs_event(
    messages: list[dict[str, Any]], queue_arn: str = "arn:aws:sqs:us-east-1:123456789012:ingestion"
) -> dict[str, Any]:
    """Lambda's SQS event for messages as returned by ``receive_message``."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": "0",
                    "SenderId": "S3",
                    "ApproximateFirstReceiveTimestamp": "0",
                },
                "messageAttributes": {},
                "md5OfBody": m.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": "us-east-1",
            }
            for m in messages
        ]
    }


def drain(sqs: Any, queue_url: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while True:
        batch = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
        if not batch:
            return messages
        messages.extend(batch)


@contextmanager
def ingestion_pipeline(database: Any, settings: Settings, **service_kwargs: Any) -> Iterator[dict[str, Any]]:
    """Under moto: the documents bucket notifying an ingestion queue (with a DLQ) and IngestionFunction's handler
    wired to a knowledge service on ``database``. Yields the pieces the tests drive."""
    import json

    import boto3

    from airies.knowledge.service import build_knowledge_service

    with moto_bucket() as s3:
        sqs = boto3.client("sqs", region_name="us-east-1")
        dlq = sqs.create_queue(QueueName="kb-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        queue_url = sqs.create_queue(
            QueueName="kb-ingestion",
            Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"})},
        )["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        s3.put_bucket_notification_configuration(
            Bucket=BUCKET,
            NotificationConfiguration={
                "QueueConfigurations": [{"QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"]}]
            },
        )
        publisher = service_kwargs.pop("usage_publisher", None) or RecordingPublisher()
        service = build_knowledge_service(settings, database, usage_publisher=publisher, **service_kwargs)
        handler_module = load_function("handler")
        handler_module.service.set(service)
        try:
            yield {
                "s3": s3,
                "sqs": sqs,
                "queue_url": queue_url,
                "dlq_url": dlq,
                "service": service,
                "handler": handler_module,
                "publisher": publisher,
                "database": database,
                "settings": settings,
            }
        finally:
            handler_module.service.set(None)


def deliver(pipeline: dict[str, Any], messages: list[dict[str, Any]] | None = None) -> tuple[list[Any], Any]:
    """Hand the queue's messages (or ``messages``) to IngestionFunction as one SQS batch."""
    messages = drain(pipeline["sqs"], pipeline["queue_url"]) if messages is None else messages
    result = pipeline["handler"].handler(sqs_event(messages), FakeLambdaContext())
    return messages, result
