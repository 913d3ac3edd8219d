"""The local stack's event sources (``airies/local/knowledge.py`` + ``event_sources.py``): under moto with the
template's resources, a presigned-style upload to DocumentsBucket is ingested through IngestionQueue, a scrape-job
message on ScrapeQueue is consumed, and usage published to UsageQueue reaches the ledger, all by the same handlers
as the Lambda functions."""

from __future__ import annotations

import time
from decimal import Decimal

import boto3
import pytest
from moto import mock_aws

from airies.billing.metering import SqsUsagePublisher
from airies.billing.schemas import UsageComponent, UsageEvent
from airies.billing.usage import build_usage_service
from airies.core.config import get_settings
from airies.core.database import get_database
from airies.knowledge.service import build_knowledge_service
from airies.local.invoke import patched_environ
from airies.local.template import DEFAULT_ENV_FILE, LocalContext, create_local_resources, load_env_file, load_template
from tests.kb_support import new_account


class _Stack:
    def __init__(self, ctx, settings, database):
        import threading

        self.context = ctx
        self.settings = settings
        self.database = database
        self.aws_endpoint_url = None
        self.stopping = threading.Event()


def sqs_depth(sqs, url: str) -> int:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return sum(int(value) for value in attributes.values())


def _wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_local_workers_ingest_uploads_and_scrape_jobs(database, monkeypatch, tmp_path):
    # The pollers add their functions' template env to the process (as make run does): give it back afterwards.
    with patched_environ({}), mock_aws():
        ctx = LocalContext(template=load_template(), env_file=load_env_file(DEFAULT_ENV_FILE), region="us-east-1")
        create_local_resources(ctx)
        sqs = boto3.client("sqs", region_name="us-east-1")
        monkeypatch.setenv("DATABASE_URL", database.url)
        monkeypatch.setenv("AIRIES_DATA_DIR", str(tmp_path))
        monkeypatch.setenv("AIRIES_KB_DOCUMENTS_BUCKET", ctx.local_name("DocumentsBucket"))
        monkeypatch.setenv("AIRIES_KB_SCRAPE_ALLOWED_PRIVATE_HOSTS", "127.0.0.1")
        monkeypatch.setenv(
            "AIRIES_KB_SCRAPE_QUEUE_URL", sqs.get_queue_url(QueueName=ctx.local_name("ScrapeQueue"))["QueueUrl"]
        )
        get_settings.cache_clear()
        settings = get_settings()
        from airies.local.event_sources import start_queue_workers
        from airies.local.knowledge import notify_ingestion_queue

        stack = _Stack(ctx, settings, get_database(settings))
        try:
            notify_ingestion_queue(stack)
            start_queue_workers(stack)
            service = build_knowledge_service(settings, database)
            account = new_account(database)
            kb = service.create_knowledge_base(account, "Local")
            doc, _ = service.upload_document(account, kb.id, filename="notes.txt", content_type="text/plain")
            boto3.client("s3", region_name="us-east-1").put_object(
                Bucket=ctx.local_name("DocumentsBucket"),
                Key=f"accounts/{account}/{doc.storage_key}",
                Body=b"The local worker turns uploads into chunks.",
            )
            assert _wait_for(lambda: service.get_document(account, kb.id, doc.id).status == "ready")

            job = service.create_web_scrape_job(account, kb.id, ["http://127.0.0.1:9/"], max_depth=0, max_pages=1)
            assert service.enqueue_scrape_job(job)
            assert _wait_for(lambda: service.get_scrape_job(account, kb.id, job.id).status == "failed")
            assert "could not fetch" in service.get_scrape_job(account, kb.id, job.id).error

            # Usage published to UsageQueue (twice: a redelivery) is tracked once by UsageFunction's handler.
            usage_url = sqs.get_queue_url(QueueName=ctx.local_name("UsageQueue"))["QueueUrl"]
            event = UsageEvent(
                idempotency_key="turn_local:llm_output_tokens",
                account_id=account,
                component=UsageComponent.LLM_OUTPUT_TOKENS,
                quantity=Decimal("42"),
                provider="openai",
                model="gpt-4o-mini",
            )
            SqsUsagePublisher(usage_url, region="us-east-1").publish([event, event])
            usage = build_usage_service(settings, database)

            def llm_events() -> list[tuple[str, str]]:
                events, _ = usage.list_usage_events(account, component="llm_output_tokens")
                return [(e.idempotency_key, e.quantity) for e in events]

            assert _wait_for(lambda: llm_events() != [])
            assert _wait_for(lambda: sqs_depth(sqs, usage_url) == 0)  # the duplicate was consumed as well
            assert llm_events() == [("turn_local:llm_output_tokens", "42")]
        finally:
            stack.stopping.set()
            time.sleep(0.6)  # the poller notices within one idle sleep
            get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _no_leaked_settings():
    yield
    get_settings.cache_clear()
