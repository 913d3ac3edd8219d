"""Local stack (``make run``) workers of the knowledge capability: what Lambda's event sources do on AWS.

On startup: the documents bucket gets its ObjectCreated -> IngestionQueue notification (moto delivers it
synchronously, like S3 does asynchronously), and one daemon thread long-polls IngestionQueue and ScrapeQueue and
hands each batch to the same handlers as IngestionFunction and ScrapeWorkerFunction (partial batch failures are
left on the queue, as the event source mapping would). It stops when the stack stops.

Registered with ``@on_startup``; ``airies.local.server`` must import this module for the hook to run.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from airies.local.server import LocalStack, on_startup


def _sqs_event(messages: list[dict[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m.get("Attributes", {}),
                "messageAttributes": {},
                "md5OfBody": m.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
            for m in messages
        ]
    }


class _Context:
    function_name = "airies-local-knowledge-worker"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:airies-local-knowledge-worker"
    memory_limit_in_mb = 1024
    aws_request_id = "local"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


def _handler(module_file: str) -> Any:
    import importlib.util

    from airies.config import PROJECT_ROOT

    path = PROJECT_ROOT / "functions" / "ingestion" / module_file
    spec = importlib.util.spec_from_file_location(f"_airies_local_kb_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.handler


@on_startup
def start_knowledge_workers(stack: LocalStack) -> None:
    import boto3

    ctx = stack.context
    if "IngestionQueue" not in ctx.resources:
        return
    session = boto3.session.Session(region_name=ctx.region)
    sqs = session.client("sqs", endpoint_url=stack.aws_endpoint_url)
    s3 = session.client("s3", endpoint_url=stack.aws_endpoint_url)
    queues = {}
    for logical_id, module_file in (("IngestionQueue", "handler.py"), ("ScrapeQueue", "scrape.py")):
        url = sqs.get_queue_url(QueueName=ctx.local_name(logical_id))["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        queues[logical_id] = (url, arn, _handler(module_file))
    s3.put_bucket_notification_configuration(
        Bucket=ctx.local_name("DocumentsBucket"),
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": queues["IngestionQueue"][1], "Events": ["s3:ObjectCreated:*"]}]
        },
    )

    def poll() -> None:
        while not stack.stopping.is_set():
            idle = True
            for url, arn, handler in queues.values():
                messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=5, WaitTimeSeconds=0).get(
                    "Messages", []
                )
                if not messages:
                    continue
                idle = False
                try:
                    result = handler(_sqs_event(messages, arn, ctx.region), _Context())
                    failed = {item["itemIdentifier"] for item in result.get("batchItemFailures", [])}
                except Exception as exc:  # keep the worker alive; the messages become visible again
                    print(f"knowledge worker: batch failed: {exc}")
                    failed = {m["MessageId"] for m in messages}
                for message in messages:
                    if message["MessageId"] not in failed:
                        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            if idle:
                time.sleep(0.5)

    threading.Thread(target=poll, name="kb-local-worker", daemon=True).start()
    print(json.dumps({"knowledge_workers": sorted(queues)}))
