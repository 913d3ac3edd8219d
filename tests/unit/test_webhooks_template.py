"""template.yaml wiring of server messages: the delivery queue, its dead-letter queue and alarm, the worker."""

from __future__ import annotations

import pytest

from airies.local.template import load_template


@pytest.fixture(scope="module")
def resources() -> dict:
    return load_template()["Resources"]


def test_the_delivery_queue_has_a_watched_dead_letter_queue(resources: dict) -> None:
    queue = resources["WebhookQueue"]["Properties"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["WebhookDeadLetterQueue", "Arn"]}
    assert resources["WebhookDeadLetterQueue"]["Properties"]["MessageRetentionPeriod"] == 14 * 24 * 3600
    alarm = resources["WebhookDeadLetterQueueAlarm"]["Properties"]
    assert alarm["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["WebhookDeadLetterQueue", "QueueName"]}}
    ]
    assert alarm["Threshold"] == 0 and alarm["ComparisonOperator"] == "GreaterThanThreshold"


def test_the_worker_consumes_the_queue_and_reports_partial_failures(resources: dict) -> None:
    function = resources["WebhookFunction"]["Properties"]
    mapping = resources["WebhookEventSource"]["Properties"]
    assert mapping["FunctionName"] == {"Ref": "WebhookFunction"}
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": ["WebhookQueue", "Arn"]}
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    # the visibility timeout outlasts a whole batch, so a message is never handed out twice while it is worked on
    assert resources["WebhookQueue"]["Properties"]["VisibilityTimeout"] >= 6 * function["Timeout"]
    env = function["Environment"]["Variables"]
    assert env["AIRIES_WEBHOOK_QUEUE_URL"] == {"Ref": "WebhookQueue"}
    assert env["AIRIES_WEBHOOK_DEAD_LETTER_QUEUE_URL"] == {"Ref": "WebhookDeadLetterQueue"}


def test_the_api_publishes_to_the_delivery_queue(resources: dict) -> None:
    api = resources["ApiFunction"]["Properties"]
    assert api["Environment"]["Variables"]["AIRIES_WEBHOOK_QUEUE_URL"] == {"Ref": "WebhookQueue"}
