"""Local stack (``make run``) wiring of the knowledge capability: the documents bucket's ObjectCreated ->
IngestionQueue notification (on AWS: ``DocumentsBucket.NotificationConfiguration`` in template.yaml). moto delivers
it synchronously, S3 asynchronously; the queue's consumer is the generic SQS poller in ``event_sources.py``.
"""

from __future__ import annotations

from airies.local.server import LocalStack, on_startup


@on_startup
def notify_ingestion_queue(stack: LocalStack) -> None:
    import boto3

    ctx = stack.context
    if "IngestionQueue" not in ctx.resources:
        return
    session = boto3.session.Session(region_name=ctx.region)
    sqs = session.client("sqs", endpoint_url=stack.aws_endpoint_url)
    url = sqs.get_queue_url(QueueName=ctx.local_name("IngestionQueue"))["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    session.client("s3", endpoint_url=stack.aws_endpoint_url).put_bucket_notification_configuration(
        Bucket=ctx.local_name("DocumentsBucket"),
        NotificationConfiguration={"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]},
    )
