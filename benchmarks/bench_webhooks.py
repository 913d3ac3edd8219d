"""Server messages: delivery throughput through the delivery function, and what webhooks and the post-call analysis
add to the AWS bill of a conversation.

1. Throughput. ``events`` ``turn.completed`` events (``BENCH_WEBHOOK_EVENTS``, default 400; a turn's payload) are
   published for one account (``WebhookService.publish``: stored, one queue message each), then handed to
   WebhookFunction's handler (functions/webhooks/handler.py, loaded by the local invoker, so Powertools' batch
   processor runs as on Lambda) in SQS batches of the template's ``BatchSize``, one invocation after another, to a
   local receiver that checks every signature (tests/doubles/webhook_receiver.py). Each delivery: read the event and
   its endpoint, open the sealed signing secret, sign, POST, record the attempt. The database is SQLite in a
   temporary folder (PostgreSQL on AWS: another latency, not measured here).
   Baseline, in the same run against the same receiver, interleaved batch by batch: the same bodies POSTed with one
   httpx client, unsigned, nothing read or recorded (the floor: an HTTP round trip to the receiver). Ratio =
   delivery throughput / baseline throughput.
2. Cost per conversation (``cost_per_conversation``, pure and unit-tested), us-east-1 list prices (as
   ``cost_model.py``): per event one SQS SendMessage, the event source's ReceiveMessage and DeleteMessageBatch per
   batch, one Lambda request per batch and the measured delivery time as Lambda GB-seconds at WebhookFunction's
   memory; a conversation of ``turns`` turns sends ``2 * turns + 2`` events (started, turn.completed and
   transcript.updated per turn, ended). The post-call analysis adds a Step Functions Standard execution (its state
   transitions), AnalysisFunction's two invocations (analyse, publish) with the LLM's answer time as Lambda time
   (assumed: ``analysis_llm_seconds``, three requests; the doubles answer in milliseconds, so it is not measured),
   and one SQS message per usage event. The baseline of the ratio is a conversation without either.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import harness

EVENTS = int(os.environ.get("BENCH_WEBHOOK_EVENTS", "400"))
TARGET_MS_PER_EVENT = 20.0  # one warm delivery function, sequential batches: at least 50 events/s
TARGET_COST_PER_CONVERSATION = 0.001  # USD: webhooks + analysis stay a tenth of a cent per call


@dataclass(frozen=True)
class Prices:
    sqs_request: float = 0.40 / 1e6
    lambda_request: float = 0.20 / 1e6
    lambda_gb_s: float = 0.0000133334  # arm64
    sfn_transition: float = 0.025 / 1000  # Standard workflows


@dataclass(frozen=True)
class Assumptions:
    turns: int = 10  # a three-minute call
    batch_size: int = 10  # WebhookEventSource BatchSize
    webhook_memory_gb: float = 0.5
    analysis_memory_gb: float = 0.5
    analysis_llm_seconds: float = 4.5  # three LLM requests of about 1.5 s each
    analysis_transitions: int = 4  # Analyse, Publish, Done and the execution's start, as Step Functions counts them
    analysis_usage_events: int = 7  # input, cached and output tokens of three steps (cached only when reported)


def cost_per_conversation(
    delivery_ms_per_event: float, a: Assumptions = Assumptions(), p: Prices = Prices()
) -> dict[str, Any]:
    """USD per conversation, line by line: webhooks (``2 * turns + 2`` events), then the post-call analysis."""
    events = 2 * a.turns + 2
    batches = events / a.batch_size
    lines = {
        "webhooks: sqs (send per event, receive + delete per batch)": (events + 2 * batches) * p.sqs_request,
        "webhooks: lambda requests (one per batch)": batches * p.lambda_request,
        "webhooks: lambda time (measured per event)": events
        * delivery_ms_per_event
        / 1000
        * a.webhook_memory_gb
        * p.lambda_gb_s,
        "analysis: step functions transitions": a.analysis_transitions * p.sfn_transition,
        "analysis: lambda (analyse + publish, LLM time)": 2 * p.lambda_request
        + a.analysis_llm_seconds * a.analysis_memory_gb * p.lambda_gb_s,
        "analysis: sqs (usage events, conversation.ended)": (a.analysis_usage_events + 1) * p.sqs_request,
    }
    webhooks = sum(v for k, v in lines.items() if k.startswith("webhooks"))
    analysis = sum(v for k, v in lines.items() if k.startswith("analysis"))
    return {
        "events": events,
        "lines": lines,
        "webhooks": webhooks,
        "analysis": analysis,
        "total": webhooks + analysis,
        "assumptions": asdict(a),
    }


def _template_figures() -> tuple[int, float, float]:
    from airies.local.template import load_template

    resources = load_template()["Resources"]
    batch = int(resources["WebhookEventSource"]["Properties"]["BatchSize"])
    webhook_mb = int(resources["WebhookFunction"]["Properties"].get("MemorySize", 1024))
    analysis_mb = int(resources["AnalysisFunction"]["Properties"].get("MemorySize", 1024))
    return batch, webhook_mb / 1024, analysis_mb / 1024


def _sqs_event(messages: list[Any]) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": f"m-{i}",
                "receiptHandle": f"r-{i}",
                "body": message.model_dump_json(),
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": "0",
                    "SenderId": "bench",
                    "ApproximateFirstReceiveTimestamp": "0",
                },
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:bench",
                "awsRegion": "us-east-1",
            }
            for i, message in enumerate(messages)
        ]
    }


def measure_throughput(events: int, batch: int) -> dict[str, Any]:
    import httpx

    from airies.core.config import Settings
    from airies.core.database import Database
    from airies.local.invoke import LambdaContext, load_handler, patched_environ, resolve_function
    from airies.local.template import function_environment
    from airies.migrations.runner import upgrade_head
    from airies.webhooks.delivery import WebhookDeliverer
    from airies.webhooks.schemas import EndpointPut
    from airies.webhooks.service import WebhookService
    from tests.doubles.webhook_receiver import ListQueue, WebhookReceiver

    folder = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    url = f"sqlite:///{folder / 'bench.db'}"
    upgrade_head(url)
    with WebhookReceiver() as receiver:
        settings = Settings(stage="local", data_dir=folder, database_url=url, url_guard_allowed_hosts=receiver.host)
        database = Database(url)
        from airies.accounts.models import Account

        with database.session() as session:
            session.add(Account(id="acc_bench", name="Bench", email="bench@example.com", plan="pro", status="active"))
        with database.session() as session:
            endpoint, _ = WebhookService(session, settings, queue=None).put_endpoint(
                "acc_bench", None, EndpointPut(url=receiver.url, events=["turn.completed"])
            )
            receiver.secret = endpoint.secret or ""
        queue = ListQueue()
        data = {
            "conversation_id": "conv_bench",
            "turn_id": "turn_bench",
            "seq": 1,
            "status": "completed",
            "user_text": "Do you ship to France?",
            "agent_text": "We ship worldwide, and to France in three days. Anything else?",
            "latency_ms": {"stt_ms": 180.0, "llm_ttft_ms": 320.0, "tts_ttfb_ms": 150.0, "total_ms": 700.0},
            "cost": {"total": "0.001234000", "components": {"llm": "0.000200000", "stt": "0.000700000"}},
        }
        with database.session() as session:
            service = WebhookService(session, settings, queue=queue)
            for i in range(events):
                service.publish("acc_bench", None, "turn.completed", {**data, "seq": i}, idempotency_key=f"b:{i}")
        messages = list(queue.messages)
        bodies = [json.dumps({"type": "turn.completed", "data": {**data, "seq": i}}).encode() for i in range(events)]

        spec, ctx = resolve_function("WebhookFunction")
        env = {
            **function_environment(spec, ctx),
            "DATABASE_URL": url,
            "AIRIES_URL_GUARD_ALLOWED_HOSTS": receiver.host,
            "POWERTOOLS_LOG_LEVEL": "WARNING",  # one line per attempt would be measured (and printed) too
        }
        with patched_environ(env):
            handler, module = load_handler(spec)
            module.deliverer.set(WebhookDeliverer(database, settings, queue))
            warm = _sqs_event(messages[:1])  # the first invocation: clients and the secret cipher are built
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                handler(warm, LambdaContext(spec))
            durations: list[float] = []
            results = []
            delivered_s = baseline_s = 0.0
            # Interleaved batch by batch (a batch delivered, then the same number of bare POSTs), so a change of
            # the machine's load moves both sides of the ratio alike. Each invocation writes its EMF document to
            # stdout, as on Lambda; kept out of the terminal only.
            with (
                httpx.Client(timeout=10) as client,
                open(os.devnull, "w") as sink,
                contextlib.redirect_stdout(sink),
            ):
                client.post(receiver.url, content=bodies[0])
                for first in range(1, len(messages), batch):
                    t0 = time.perf_counter()
                    results.append(handler(_sqs_event(messages[first : first + batch]), LambdaContext(spec)))
                    t1 = time.perf_counter()
                    for body in bodies[first : first + batch]:
                        client.post(receiver.url, content=body, headers={"content-type": "application/json"})
                    t2 = time.perf_counter()
                    durations.append((t1 - t0) * 1000)
                    delivered_s += t1 - t0
                    baseline_s += t2 - t1
            if any(result.get("batchItemFailures") for result in results):
                raise RuntimeError("a delivery failed")
            module.deliverer.get().close()
        if len(receiver.verified) != events:
            raise RuntimeError(f"{len(receiver.verified)} of {events} deliveries verified")
        database.dispose()
    measured = events - 1
    return {
        "events": measured,
        "delivered_per_s": measured / delivered_s,
        "baseline_per_s": measured / baseline_s,
        "delivery_ms_per_event": delivered_s * 1000 / measured,
        "baseline_ms_per_event": baseline_s * 1000 / measured,
        "batch_ms_p50": harness.median(durations),
        "batch_ms_p95": harness.percentile(durations, 95),
    }


def run(args: Any = None) -> dict[str, Any]:
    batch, webhook_gb, analysis_gb = _template_figures()
    figures = measure_throughput(EVENTS, batch)
    ratio = figures["delivered_per_s"] / figures["baseline_per_s"]
    assumptions = Assumptions(batch_size=batch, webhook_memory_gb=webhook_gb, analysis_memory_gb=analysis_gb)
    cost = cost_per_conversation(figures["delivery_ms_per_event"], assumptions)
    print(
        f"delivery: {figures['delivered_per_s']:.0f} events/s ({figures['delivery_ms_per_event']:.2f} ms/event, "
        f"batches of {batch}: p50 {figures['batch_ms_p50']:.1f} ms, p95 {figures['batch_ms_p95']:.1f} ms)"
    )
    print(
        f"baseline (bare POST): {figures['baseline_per_s']:.0f} events/s "
        f"({figures['baseline_ms_per_event']:.2f} ms/event); delivery/baseline = {ratio:.2f}"
    )
    print(f"cost per conversation ({cost['events']} events, {assumptions.turns} turns):")
    for line, usd in cost["lines"].items():
        print(f"  {line:<58} ${usd:.8f}")
    print(f"  {'webhooks':<58} ${cost['webhooks']:.8f}")
    print(f"  {'post-call analysis':<58} ${cost['analysis']:.8f}")
    print(f"  {'total added (baseline: a conversation without either)':<58} ${cost['total']:.8f}")
    return {
        **figures,
        "ratio_to_baseline": ratio,
        "cost_per_conversation": cost,
        "targets": [
            harness.target(
                "webhook delivery time per event (one function, sequential batches)",
                figures["delivery_ms_per_event"],
                TARGET_MS_PER_EVENT,
                "ms",
                digits=2,
            ),
            harness.target(
                "added AWS cost per conversation (webhooks + analysis)",
                cost["total"],
                TARGET_COST_PER_CONVERSATION,
                "USD",
                digits=8,
            ),
        ],
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2, default=str))
