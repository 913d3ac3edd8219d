"""Local stack (``make run``): the SQS event source mappings of template.yaml, as Lambda runs them on AWS.

Every ``AWS::Lambda::EventSourceMapping`` from an SQS queue to a function (and every ``AWS::Serverless::Function``
with an ``Events: {Type: SQS}``) gets one warm "container" (its handler loaded once, with its template env added) and
a daemon thread that polls the queue and hands batches to the handler.
Messages the handler reports in ``batchItemFailures`` (or all of a batch that raised) stay on the queue and come
back after the visibility timeout, and moto's redrive policy moves them to the dead-letter queue, as on AWS.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from airies.local.invoke import LambdaContext, load_handler
from airies.local.server import LocalStack, apply_environment, on_startup
from airies.local.template import FunctionSpec, function_environment, function_specs

IDLE_SLEEP_S = 0.5


@dataclass(frozen=True)
class QueueSource:
    function: FunctionSpec
    queue_logical_id: str
    batch_size: int


def _queue_of(owner: str, queue: Any) -> str:
    target = queue.get("Fn::GetAtt") if isinstance(queue, dict) else None
    if not target or target[1] != "Arn":
        raise ValueError(f"{owner}: an SQS event source's queue must be !GetAtt <queue>.Arn locally")
    return str(target[0])


def sqs_sources(specs: dict[str, FunctionSpec], template: dict[str, Any] | None = None) -> list[QueueSource]:
    """The SQS event sources of the template: mapping resources from a queue, then SAM ``SQS`` events."""
    sources = []
    resources = (template or {}).get("Resources") or {}
    for logical_id, resource in resources.items():
        if resource.get("Type") != "AWS::Lambda::EventSourceMapping":
            continue
        props = resource.get("Properties") or {}
        function = props.get("FunctionName")
        ref = function.get("Ref") if isinstance(function, dict) else None
        spec = specs.get(ref) if isinstance(ref, str) else None
        source_arn = props.get("EventSourceArn")
        queue_id = _queue_of(logical_id, source_arn)
        if spec is None or (resources.get(queue_id) or {}).get("Type") != "AWS::SQS::Queue":
            continue  # not a queue -> function mapping of this template (a stream, another function type)
        sources.append(QueueSource(spec, queue_id, int(props.get("BatchSize", 10))))
    for spec in specs.values():
        for event in spec.events.values():
            if event.get("Type") != "SQS":
                continue
            props = event.get("Properties") or {}
            sources.append(
                QueueSource(spec, _queue_of(spec.logical_id, props.get("Queue")), int(props.get("BatchSize", 10)))
            )
    return sources


def sqs_event(messages: list[dict[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
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


@on_startup
def start_queue_workers(stack: LocalStack) -> None:
    import boto3

    ctx = stack.context
    sources = [
        s
        for s in sqs_sources(function_specs(ctx.template, root=ctx.root), ctx.template)
        if s.queue_logical_id in ctx.resources
    ]
    if not sources:
        return
    sqs = boto3.session.Session(region_name=ctx.region).client("sqs", endpoint_url=stack.aws_endpoint_url)
    workers = []
    for source in sources:
        # One process serves every function: add each function's own variables (Globals are already set).
        apply_environment(function_environment(source.function, ctx))
        handler, _module = load_handler(source.function)
        url = sqs.get_queue_url(QueueName=ctx.local_name(source.queue_logical_id))["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        workers.append((source, url, arn, handler))

    def poll() -> None:
        while not stack.stopping.is_set():
            idle = True
            for source, url, arn, handler in workers:
                batch = min(source.batch_size, 10)
                # System attributes as Lambda's event source passes them (Powertools' SQS models require them).
                messages = sqs.receive_message(
                    QueueUrl=url, MaxNumberOfMessages=batch, MessageSystemAttributeNames=["All"]
                ).get("Messages", [])
                if not messages:
                    continue
                idle = False
                try:
                    result = handler(sqs_event(messages, arn, ctx.region), LambdaContext(source.function, ctx.region))
                    failed = {item["itemIdentifier"] for item in (result or {}).get("batchItemFailures", [])}
                    if failed:
                        print(f"{source.function.logical_id}: {len(failed)} of {len(messages)} failed", flush=True)
                except Exception as exc:  # the worker lives on; the batch becomes visible again
                    print(f"{source.function.logical_id}: batch failed: {exc}", flush=True)
                    failed = {m["MessageId"] for m in messages}
                for message in messages:
                    if message["MessageId"] not in failed:
                        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            if idle:
                time.sleep(IDLE_SLEEP_S)

    threading.Thread(target=poll, name="local-sqs-event-sources", daemon=True).start()
    print(json.dumps({"sqs_event_sources": {s.queue_logical_id: s.function.logical_id for s, *_ in workers}}))
