"""Local stand-ins for template resources (moto), and sample events that declare ``needs: aws``."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
from moto import mock_aws

from airies.local.invoke import run_sample_event
from airies.local.template import LocalContext, create_local_resources, load_template

TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Runtime: python3.12
    Environment:
      Variables:
        BUCKET: !Ref Uploads
        QUEUE_URL: !Ref Jobs
        TABLE: !Ref State
Resources:
  Uploads:
    Type: AWS::S3::Bucket
    Properties:
      CorsConfiguration:
        CorsRules:
          - AllowedMethods: [GET, POST]
            AllowedOrigins: ["*"]
            MaxAge: 60
  Jobs:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: 120
  State:
    Type: AWS::DynamoDB::Table
    Properties:
      BillingMode: PAY_PER_REQUEST
      AttributeDefinitions:
        - {AttributeName: pk, AttributeType: S}
      KeySchema:
        - {AttributeName: pk, KeyType: HASH}
      TimeToLiveSpecification: {AttributeName: expires_at, Enabled: true}
  Flow:
    Type: AWS::Serverless::StateMachine
    Properties:
      DefinitionUri: flow.asl.json
      DefinitionSubstitutions:
        QueueUrl: !Ref Jobs
  Worker:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: worker/
      Handler: handler.handler
"""

WORKER = """\
import os
import boto3

s3 = boto3.client("s3")  # module level, like a real handler

def handler(event, context):
    s3.put_object(Bucket=os.environ["BUCKET"], Key="k", Body=event["body"].encode())
    boto3.client("sqs").send_message(QueueUrl=os.environ["QUEUE_URL"], MessageBody="hi")
    boto3.client("dynamodb").put_item(TableName=os.environ["TABLE"], Item={"pk": {"S": "x"}})
    return {"stored": s3.get_object(Bucket=os.environ["BUCKET"], Key="k")["Body"].read().decode()}
"""


def _project(tmp_path: Path) -> Path:
    (tmp_path / "template.yaml").write_text(TEMPLATE)
    (tmp_path / "flow.asl.json").write_text(
        json.dumps({"StartAt": "P", "States": {"P": {"Type": "Pass", "Result": "${QueueUrl}", "End": True}}})
    )
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "handler.py").write_text(WORKER)
    return tmp_path


def test_create_local_resources_makes_every_declared_resource(tmp_path: Path) -> None:
    project = _project(tmp_path)
    ctx = LocalContext(template=load_template(project / "template.yaml"), region="us-east-1", root=project)
    with mock_aws():
        created = create_local_resources(ctx, boto3.session.Session(region_name="us-east-1"))
        created_again = create_local_resources(ctx, boto3.session.Session(region_name="us-east-1"))
        assert sorted(created) == ["Flow", "Jobs", "State", "Uploads"] == sorted(created_again)  # idempotent
        s3 = boto3.client("s3", region_name="us-east-1")
        assert s3.get_bucket_cors(Bucket="airies-local-uploads")["CORSRules"][0]["MaxAgeSeconds"] == 60
        sqs = boto3.client("sqs", region_name="us-east-1")
        attrs = sqs.get_queue_attributes(QueueUrl=ctx.resolve({"Ref": "Jobs"}), AttributeNames=["All"])
        assert attrs["Attributes"]["VisibilityTimeout"] == "120"
        table = boto3.client("dynamodb", region_name="us-east-1").describe_table(TableName="airies-local-state")
        assert table["Table"]["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        machine = sfn.describe_state_machine(stateMachineArn=ctx.resolve({"Ref": "Flow"}))
        assert ctx.resolve({"Ref": "Jobs"}) in machine["definition"]


def test_sample_event_with_aws_needs_runs_under_moto(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    project = _project(tmp_path)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    events = project / "events"
    events.mkdir()
    (events / "Worker.put.json").write_text(json.dumps({"body": "payload"}))
    (events / "Worker.put.meta.json").write_text(json.dumps({"needs": ["aws"], "expect": {"stored": "payload"}}))
    result = run_sample_event(
        "Worker", events / "Worker.put.json", template_path=project / "template.yaml", env_file=None
    )
    assert result == {"stored": "payload"}
