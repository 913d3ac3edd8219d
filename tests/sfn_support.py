"""A state machine of template.yaml executed by moto, its Lambda tasks run by the real handler in this process.

moto runs the ASL itself (``execute_state_machine``) but cannot run the project's Python inside a Lambda task
without Docker: ``StateMachineHarness`` routes moto's Lambda invocations to the function's handler (loaded by the
local invoker with the function's template environment plus ``env``) by replacing ``LambdaSimpleBackend.invoke``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Self
from unittest.mock import patch

import boto3
from moto import mock_aws
from moto.awslambda_simple.models import LambdaSimpleBackend

from airies.local.invoke import LambdaContext, _clear_container_caches, load_handler, patched_environ, resolve_function
from airies.local.template import function_environment, state_machine_definition


class StateMachineHarness:
    """``with StateMachineHarness("XFunction", "XStateMachine", env) as h: h.run(payload)``; ``h.invocations`` holds
    every task's event. ``definition(text)`` may change the ASL before it is created (e.g. shorter retry waits)."""

    def __init__(self, function: str, machine: str, env: dict[str, str]) -> None:
        self.spec, self.ctx = resolve_function(function)
        self.machine = machine
        self.env = {**function_environment(self.spec, self.ctx), **env}
        self.invocations: list[dict[str, Any]] = []

    def definition(self, text: str) -> str:
        return text

    def routed_invoke(self, function_name, qualifier, body, headers, response_headers) -> bytes:  # type: ignore[no-untyped-def]
        event = json.loads(body)
        self.invocations.append(event)
        try:
            result = self.handler(event, LambdaContext(self.spec))
        except Exception as exc:  # what the Lambda runtime reports for an unhandled error
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)}).encode()
        return json.dumps(result, default=str).encode()

    def __enter__(self) -> Self:
        self._env = patched_environ(self.env)
        self._env.__enter__()
        _clear_container_caches()  # a cold start: settings and database come from this test's environment
        self.handler, self.module = load_handler(self.spec)
        self._aws = mock_aws(config={"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}})
        self._aws.__enter__()
        self._patch = patch.object(LambdaSimpleBackend, "invoke", self.routed_invoke)
        self._patch.__enter__()
        self.sfn = boto3.client("stepfunctions", region_name="us-east-1")
        definition = state_machine_definition(self.ctx, self.ctx.resources[self.machine])
        assert "${" not in definition
        self.arn = self.sfn.create_state_machine(
            name=self.machine, definition=self.definition(definition), roleArn="arn:aws:iam::123456789012:role/sfn"
        )["stateMachineArn"]
        return self

    def __exit__(self, *exc: Any) -> None:
        self._patch.__exit__(*exc)
        self._aws.__exit__(*exc)
        database = getattr(self.module, "database", None)
        if database is not None:
            database.dispose()
        self._env.__exit__(*exc)
        _clear_container_caches()

    def run(self, payload: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
        execution = self.sfn.start_execution(
            stateMachineArn=self.arn, name=f"run-{uuid.uuid4().hex[:12]}", input=json.dumps(payload)
        )["executionArn"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            described = self.sfn.describe_execution(executionArn=execution)
            if described["status"] != "RUNNING":
                return described
            time.sleep(0.2)
        raise AssertionError("state machine did not finish")
