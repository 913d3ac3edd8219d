"""`make deploy` / `make build` helpers: the per-stage samconfig check and the per-function size report."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from airies.core.config import PROJECT_ROOT
from airies.local import build_report
from airies.local.deploy import (
    SAMCONFIG,
    DeployConfigError,
    check,
    parameter_overrides,
    prune_versions,
    snapstart_functions,
)
from airies.local.template import load_template

FILLED = """
[{stage}.global.parameters]
region = "eu-west-1"

[{stage}.deploy.parameters]
stack_name = "airies-{stage}"
confirm_changeset = {confirm}
parameter_overrides = "Stage=\\"{param_stage}\\" DatabaseSecretArn=\\"arn:aws:secretsmanager:eu-west-1:1:secret:db-AbCdEf\\" SubnetIds=\\"subnet-1,subnet-2\\""
"""


def samconfig(tmp_path: Path, stage: str = "prod", *, confirm: str = "false", param_stage: str | None = None) -> Path:
    path = tmp_path / "samconfig.toml"
    path.write_text(FILLED.format(stage=stage, confirm=confirm, param_stage=param_stage or stage))
    return path


def test_the_repository_samconfig_refuses_to_deploy_until_filled_in() -> None:
    for stage in ("dev", "staging", "prod"):
        with pytest.raises(DeployConfigError, match=r"REPLACE_ME for .*DatabaseSecretArn.*SubnetIds"):
            check(stage, SAMCONFIG)
    with pytest.raises(DeployConfigError, match=r"no \[qa.deploy.parameters\]"):
        check("qa", SAMCONFIG)


def test_a_filled_in_stage_passes_and_its_values_are_read_as_the_sam_cli_reads_them(tmp_path: Path) -> None:
    overrides = check("prod", samconfig(tmp_path))
    assert overrides["Stage"] == "prod"
    assert overrides["SubnetIds"] == "subnet-1,subnet-2"
    assert parameter_overrides({"parameter_overrides": 'A="x y" B=""'}) == {"A": "x y", "B": ""}


def test_a_prompting_or_mismatched_stage_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DeployConfigError, match="confirm_changeset = false"):
        check("prod", samconfig(tmp_path, confirm="true"))
    with pytest.raises(DeployConfigError, match="deploys Stage='dev'"):
        check("prod", samconfig(tmp_path, param_stage="dev"))


def test_make_deploy_stops_before_any_aws_call_without_a_terminal() -> None:
    env = {**os.environ, "MAKEFLAGS": ""}
    run = subprocess.run(
        ["make", "--no-print-directory", "deploy"], cwd=PROJECT_ROOT, capture_output=True, text=True, env=env,
        stdin=subprocess.DEVNULL, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode != 0 and "usage: make deploy STAGE=" in run.stdout + run.stderr
    run = subprocess.run(
        ["make", "--no-print-directory", "deploy", "STAGE=prod"], cwd=PROJECT_ROOT, capture_output=True, text=True,
        env=env, stdin=subprocess.DEVNULL, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode != 0
    assert "still has REPLACE_ME" in run.stderr
    assert "sam deploy" not in run.stdout, "the check runs before the SAM CLI"


def build_tree(root: Path, sizes: dict[str, int]) -> Path:
    """A fake .aws-sam/build: one sparse file of the given size per function or layer directory."""
    for name, size in sizes.items():
        (root / name).mkdir(parents=True)
        with open(root / name / "payload.bin", "wb") as handle:
            handle.truncate(size)
    return root


def test_build_report_adds_each_functions_layers_and_fails_over_the_limit(tmp_path: Path, capsys) -> None:
    template = load_template(PROJECT_ROOT / "template.yaml")
    layers_of = build_report.function_layers(template)
    assert layers_of["ApiFunction"][0] == "CommonLayer" and len(layers_of["ApiFunction"]) <= 5
    assert layers_of["MigrateFunction"] == ["CommonLayer"]
    mb = 1024 * 1024
    sizes = {fn: mb for fn in layers_of}
    sizes |= {"CommonLayer": 60 * mb, "AiLayer": 100 * mb, "VoiceLayer": 40 * mb, "DocumentsLayer": 20 * mb}
    sizes["BillingLayer"] = 20 * mb
    build = build_tree(tmp_path / "ok", sizes)
    assert build_report.main(["--build-dir", str(build)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"ApiFunction +241\.0 MB", out)  # 1 + 60 + 100 + 40 + 20 + 20
    assert re.search(r"MigrateFunction +61\.0 MB", out)

    sizes["AiLayer"] = 120 * mb  # the API now carries 261 MB
    over = build_tree(tmp_path / "over", sizes)
    assert build_report.main(["--build-dir", str(over)]) == 1
    captured = capsys.readouterr()
    assert "ApiFunction" in captured.err and "OVER THE LIMIT" in captured.out
    assert "VoiceMessageFunction" not in captured.err  # 1 + 60 + 120 + 40 = 221 MB

    missing = build_tree(tmp_path / "partial", {"CommonLayer": mb})
    assert build_report.main(["--build-dir", str(missing)]) == 1


def _function_with_versions(client: Any, name: str, versions: int) -> None:
    import io
    import zipfile

    import boto3

    role = boto3.client("iam", region_name="us-east-1").create_role(
        RoleName=f"{name}-role", AssumeRolePolicyDocument="{}"
    )["Role"]["Arn"]
    package = io.BytesIO()
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("handler.py", "def handler(event, context):\n    return event\n")
    client.create_function(
        FunctionName=name,
        Runtime="python3.12",
        Role=role,
        Handler="handler.handler",
        Code={"ZipFile": package.getvalue()},
    )
    for n in range(versions):
        client.update_function_configuration(FunctionName=name, Description=f"deploy {n}")
        client.publish_version(FunctionName=name)


def _versions(client: Any, name: str) -> list[str]:
    return [v["Version"] for v in client.list_versions_by_function(FunctionName=name)["Versions"]]


def test_prune_deletes_the_superseded_snapstart_versions_but_the_aliased_and_newest() -> None:
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("lambda", region_name="us-east-1")
        _function_with_versions(client, "voice-connect", 6)
        client.create_alias(FunctionName="voice-connect", Name="live", FunctionVersion="4")  # rolled back to 4
        assert prune_versions(client, "voice-connect") == ["1", "2", "3"]
        assert _versions(client, "voice-connect") == ["$LATEST", "4", "5", "6"]
        assert prune_versions(client, "voice-connect") == []  # nothing left to prune: idempotent


def test_prune_keeps_every_version_a_weighted_alias_routes_to() -> None:
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("lambda", region_name="us-east-1")
        _function_with_versions(client, "api", 5)
        client.create_alias(
            FunctionName="api", Name="live", FunctionVersion="5", RoutingConfig={"AdditionalVersionWeights": {"1": 0.1}}
        )
        assert prune_versions(client, "api", keep_newest=1) == ["2", "3", "4"]
        assert _versions(client, "api") == ["$LATEST", "1", "5"]


def test_the_functions_pruned_are_the_templates_snapstart_ones() -> None:
    functions = snapstart_functions(load_template())
    assert {"ApiFunction", "VoiceConnectFunction", "VoiceMessageFunction"} <= set(functions)
    assert "VoiceDisconnectFunction" not in functions and "MigrateFunction" not in functions
    assert "-m airies.local.deploy prune $(STAGE)" in (PROJECT_ROOT / "Makefile").read_text(encoding="utf-8")
