"""The Docker-less invoker: handler loading, isolation between functions, env, sidecars, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airies.core.config import PROJECT_ROOT
from airies.local import invoke
from airies.local.invoke import EventMeta, check_result, invoke_function, sample_events

TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  Stage:
    Type: String
    Default: dev
Globals:
  Function:
    Runtime: python3.12
    Timeout: 7
    MemorySize: 256
    Environment:
      Variables:
        SHARED: !Sub "shared-${Stage}"
        QUEUE_URL: !Ref Jobs
Resources:
  Jobs:
    Type: AWS::SQS::Queue
  FirstFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: one/
      Handler: handler.handler
      Environment:
        Variables:
          OWN: first
  SecondFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: two/
      Handler: pkg.entry.main
"""

HANDLER = """\
import os
import helper  # a sibling module with the same name in both CodeUris
COLD = helper.NAME
def {name}(event, context):
    return {{"who": COLD, "shared": os.environ.get("SHARED"), "own": os.environ.get("OWN"),
             "queue": os.environ.get("QUEUE_URL"), "event": event, "fn": context.function_name,
             "memory": context.memory_limit_in_mb, "remaining": context.get_remaining_time_in_millis()}}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "template.yaml").write_text(TEMPLATE)
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "handler.py").write_text(HANDLER.format(name="handler"))
    (tmp_path / "one" / "helper.py").write_text("NAME = 'one'\n")
    (tmp_path / "two" / "pkg").mkdir(parents=True)
    (tmp_path / "two" / "pkg" / "__init__.py").write_text("")
    (tmp_path / "two" / "pkg" / "entry.py").write_text(HANDLER.format(name="main"))
    (tmp_path / "two" / "helper.py").write_text("NAME = 'two'\n")
    (tmp_path / "env.json").write_text(json.dumps({"SecondFunction": {"OWN": "from-env-file"}}))
    return tmp_path


def test_invokes_each_function_with_its_own_code_env_and_context(project: Path) -> None:
    kwargs = {"template_path": project / "template.yaml", "env_file": project / "env.json"}
    first = invoke_function("FirstFunction", {"n": 1}, **kwargs)
    second = invoke_function("SecondFunction", {"n": 2}, **kwargs)
    again = invoke_function("FirstFunction", {"n": 3}, env={"OWN": "override"}, **kwargs)
    assert (first["who"], second["who"], again["who"]) == ("one", "two", "one")  # siblings never shadow
    assert first["shared"] == "shared-dev"
    assert first["own"] == "first" and second["own"] == "from-env-file" and again["own"] == "override"
    assert first["queue"].endswith("/123456789012/airies-local-jobs")
    assert first["event"] == {"n": 1}
    assert first["fn"] == "airies-local-FirstFunction"
    assert first["memory"] == 256
    assert 0 < first["remaining"] <= 7000
    assert "SHARED" not in os.environ  # the process env is restored


def test_unknown_function_and_missing_handler_are_clear_errors(project: Path) -> None:
    with pytest.raises(KeyError, match="NoSuch"):
        invoke_function("NoSuch", {}, template_path=project / "template.yaml", env_file=None)
    (project / "one" / "handler.py").unlink()
    with pytest.raises(FileNotFoundError, match="FirstFunction"):
        invoke_function("FirstFunction", {}, template_path=project / "template.yaml", env_file=None)


def test_sample_event_discovery_skips_sidecars_and_other_prefixes(tmp_path: Path) -> None:
    for name in ("Fn.a.json", "Fn.a.meta.json", "Fn-b.json", "Fn.json", "FnOther.json", "Other.json"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in sample_events("Fn", tmp_path)] == ["Fn-b.json", "Fn.a.json", "Fn.json"]


def test_sidecar_parsing_and_expectations(tmp_path: Path) -> None:
    event = tmp_path / "Fn.x.json"
    event.write_text("{}")
    assert EventMeta.for_event(event) == EventMeta()
    (tmp_path / "Fn.x.meta.json").write_text(json.dumps({"needs": ["database"], "expect": {"statusCode": 201}}))
    meta = EventMeta.for_event(event)
    assert meta.needs == ["database"] and meta.expect == {"statusCode": 201}
    check_result({"statusCode": 201}, meta)
    with pytest.raises(AssertionError):
        check_result({"statusCode": 200}, meta)
    with pytest.raises(AssertionError):
        check_result({"statusCode": 502, "body": "x"}, EventMeta())
    check_result({"batchItemFailures": []}, EventMeta())
    (tmp_path / "Fn.x.meta.json").write_text(json.dumps({"needz": []}))
    with pytest.raises(ValueError, match="needz"):
        EventMeta.for_event(event)


def test_placeholders_are_substituted_recursively() -> None:
    event = {"headers": {"authorization": "Bearer {{api_key}}"}, "list": ["{{x}}", 3]}
    assert invoke._substitute(event, {"api_key": "k", "x": "y"}) == {
        "headers": {"authorization": "Bearer k"},
        "list": ["y", 3],
    }


def test_cli_prints_the_handler_result(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "airies.local.invoke", "ApiFunction",
            "--event", str(PROJECT_ROOT / "infra" / "events" / "ApiFunction.health.json"),
        ],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False,
        env={**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout[result.stdout.index("{\n") :])
    assert output["statusCode"] == 200
    assert json.loads(output["body"])["status"] == "ok"


def test_every_local_extension_module_is_loaded_and_registers_into_the_server() -> None:
    from airies.local import server

    expected = sorted(
        path.stem
        for path in (PROJECT_ROOT / "layers" / "common" / "airies" / "local").glob("*.py")
        if path.stem not in server.CORE_MODULES and not path.stem.startswith("_")
    )
    assert server.load_extensions() == expected
    hooks_before = list(server.STARTUP_HOOKS)
    assert server.load_extensions() == expected  # idempotent: modules import once, hooks register once
    assert len(server.STARTUP_HOOKS) == len(hooks_before)


def test_api_logs_under_the_local_stack_carry_the_api_functions_name() -> None:
    """``make run`` serves every function from one process, and Powertools loggers of one service share their
    keys: after a poller invoked UsageFunction, API error logs said ``airies-local-UsageFunction``. Every HTTP
    request now logs as an invocation of ApiFunction, whatever another function appended meanwhile."""
    import io

    from aws_lambda_powertools import Logger
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from airies.api.errors import install_error_handlers
    from airies.local.template import function_specs, load_template

    specs = function_specs(load_template())
    stream = io.StringIO()
    api_logger = Logger(service="airies-log-test", stream=stream, level="INFO")
    usage_logger = Logger(service="airies-log-test", level="INFO")  # the UsageFunction module's logger: same service

    @usage_logger.inject_lambda_context(clear_state=True)
    def usage_handler(event: dict, context: object) -> None:
        usage_logger.info("usage batch")

    app = FastAPI()
    app.state.logger = api_logger
    install_error_handlers(app)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("boom")

    invoke.log_as_function(app, specs["ApiFunction"], "us-east-1")
    usage_handler({}, invoke.LambdaContext(specs["UsageFunction"]))  # a poller thread's invocation
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/boom").status_code == 500
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    usage, error = records[0], records[-1]
    assert usage["message"] == "usage batch" and usage["function_name"] == "airies-local-UsageFunction"
    assert error["message"] == "unhandled error" and error["function_name"] == "airies-local-ApiFunction"
    assert error["function_memory_size"] == specs["ApiFunction"].memory_size
    assert error["function_request_id"] != usage["function_request_id"]
    usage_logger.info("after the request")  # the poller's own logs keep their function
    assert json.loads(stream.getvalue().splitlines()[-1])["function_name"] == "airies-local-UsageFunction"


EVENTS = PROJECT_ROOT / "infra" / "events"


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = invoke.main(list(argv))
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_unknown_function_names_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(capsys, "NoSuchFunction")
    assert code == 2 and out == ""
    assert "unknown function 'NoSuchFunction'" in err and "ApiFunction" in err and "UsageFunction" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_missing_or_broken_event_file_is_one_clear_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _cli(capsys, "ApiFunction", "--event", str(tmp_path / "missing.json"))
    assert code == 2 and "missing.json" in err and "does not exist" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    code, _, err = _cli(capsys, "ApiFunction", "--event", str(broken))
    assert code == 2 and "broken.json is not valid JSON" in err and len(err.strip().splitlines()) == 1


def test_cli_no_meta_refuses_an_event_with_placeholders(capsys: pytest.CaptureFixture[str]) -> None:
    """Without its sidecar nobody fills ``{{api_key}}``: the invoke would only answer 401 without saying why."""
    code, out, err = _cli(capsys, "ApiFunction", "--event", str(EVENTS / "ApiFunction.list-agents.json"), "--no-meta")
    assert code == 2 and out == ""
    assert "{{api_key}}" in err and "setup" in err and "without --no-meta" in err


def test_cli_lists_functions_and_their_sample_events(capsys: pytest.CaptureFixture[str]) -> None:
    from airies.local.template import function_specs, load_template

    code, out, _ = _cli(capsys, "--list")
    assert code == 0
    for logical_id in function_specs(load_template()):
        assert f"\n{logical_id} " in f"\n{out}", logical_id
    assert "ApiFunction.list-agents.json" in out and "GET /api/v1/agents with the sample account's key" in out
    assert "needs: database" in out and "placeholders: api_key" in out
    code, only, _ = _cli(capsys, "--list", "UsageFunction")
    assert code == 0 and "UsageFunction.sqs-batch.json" in only and "ApiFunction" not in only
