"""What ``make deploy`` / ``make migrate`` run around the SAM CLI (no AWS call happens in ``check``).

    python -m airies.local.deploy check STAGE      # samconfig.toml has a filled-in deploy environment for STAGE
    python -m airies.local.deploy migrate STAGE    # invoke the stack's MigrateFunction (alembic upgrade head)

``migrate`` needs AWS credentials for the stage's account; it reads the function's name from the stack's outputs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tomllib
from pathlib import Path
from typing import Any

from airies.core.config import PROJECT_ROOT

SAMCONFIG = PROJECT_ROOT / "samconfig.toml"
PLACEHOLDER = "REPLACE_ME"


class DeployConfigError(Exception):
    """samconfig.toml cannot deploy this stage as it stands."""


def deploy_parameters(stage: str, path: Path = SAMCONFIG) -> dict[str, Any]:
    config = tomllib.loads(path.read_text(encoding="utf-8"))
    try:
        return dict(config[stage]["deploy"]["parameters"])
    except KeyError:
        raise DeployConfigError(f"{path.name} has no [{stage}.deploy.parameters]") from None


def parameter_overrides(parameters: dict[str, Any]) -> dict[str, str]:
    """``Key="value" Key2="value2"`` as a dict (shell-style quoting, as the SAM CLI reads it)."""
    pairs = shlex.split(str(parameters.get("parameter_overrides", "")))
    return dict(pair.split("=", 1) for pair in pairs)


def check(stage: str, path: Path = SAMCONFIG) -> dict[str, str]:
    """The stage's template parameters; raises when one is still a placeholder or the stage does not match."""
    parameters = deploy_parameters(stage, path)
    overrides = parameter_overrides(parameters)
    missing = sorted(key for key, value in overrides.items() if PLACEHOLDER in value)
    if missing:
        raise DeployConfigError(
            f"[{stage}.deploy.parameters] in {path.name} still has {PLACEHOLDER} for {', '.join(missing)} "
            "(docs/deployment.md, 'First deploy of a stage')"
        )
    if overrides.get("Stage") != stage:
        raise DeployConfigError(f"[{stage}.deploy.parameters] deploys Stage={overrides.get('Stage')!r}")
    if parameters.get("confirm_changeset") is not False:
        raise DeployConfigError(f"[{stage}.deploy.parameters] must set confirm_changeset = false (no prompt)")
    return overrides


def migrate(stage: str, path: Path = SAMCONFIG, session: Any = None) -> dict[str, Any]:
    import boto3

    parameters = deploy_parameters(stage, path)
    region = tomllib.loads(path.read_text(encoding="utf-8"))[stage]["global"]["parameters"]["region"]
    session = session or boto3.session.Session(region_name=region)
    stack = session.client("cloudformation").describe_stacks(StackName=parameters["stack_name"])["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    response = session.client("lambda").invoke(
        FunctionName=outputs["MigrateFunctionName"], Payload=json.dumps({"action": "upgrade"}).encode()
    )
    result = json.loads(response["Payload"].read() or b"null")
    if response.get("FunctionError"):
        raise RuntimeError(f"MigrateFunction failed: {result}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["check", "migrate"])
    parser.add_argument("stage")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            check(args.stage)
            print(f"samconfig.toml: {args.stage} is ready to deploy")
        else:
            print(json.dumps(migrate(args.stage)))
    except DeployConfigError as exc:
        print(f"cannot deploy: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
