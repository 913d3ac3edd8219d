"""What ``make deploy`` / ``make migrate`` run around the SAM CLI (no AWS call happens in ``check``).

    python -m airies.local.deploy check STAGE      # samconfig.toml has a filled-in deploy environment for STAGE
    python -m airies.local.deploy migrate STAGE    # invoke the stack's MigrateFunction (alembic upgrade head)
    python -m airies.local.deploy prune STAGE      # delete the SnapStart functions' superseded versions

``migrate`` and ``prune`` need AWS credentials for the stage's account; they read the stack's outputs and resources.
``prune`` runs after every ``make deploy``: each deploy publishes a new version of every function with SnapStart
(``AutoPublishAlias``), and AWS bills each published version's snapshot cache for as long as it is kept.
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
from airies.local.template import load_template

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


def _stack_session(stage: str, path: Path, session: Any) -> tuple[Any, str]:
    """A boto3 session in the stage's region (unless one is given) and the stage's stack name, from samconfig."""
    import boto3

    parameters = deploy_parameters(stage, path)
    region = tomllib.loads(path.read_text(encoding="utf-8"))[stage]["global"]["parameters"]["region"]
    return session or boto3.session.Session(region_name=region), str(parameters["stack_name"])


def migrate(stage: str, path: Path = SAMCONFIG, session: Any = None) -> dict[str, Any]:
    session, stack_name = _stack_session(stage, path, session)
    stack = session.client("cloudformation").describe_stacks(StackName=stack_name)["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    response = session.client("lambda").invoke(
        FunctionName=outputs["MigrateFunctionName"], Payload=json.dumps({"action": "upgrade"}).encode()
    )
    result = json.loads(response["Payload"].read() or b"null")
    if response.get("FunctionError"):
        raise RuntimeError(f"MigrateFunction failed: {result}")
    return result


# Versions kept besides the ones an alias points at: the newest, so that moving the alias back is a rollback.
KEEP_NEWEST_VERSIONS = 2


def snapstart_functions(template: dict[str, Any]) -> list[str]:
    """The logical ids of the template's functions that run with SnapStart."""
    return sorted(
        logical_id
        for logical_id, resource in template.get("Resources", {}).items()
        if resource.get("Type") == "AWS::Serverless::Function" and resource.get("Properties", {}).get("SnapStart")
    )


def prune_versions(client: Any, function_name: str, keep_newest: int = KEEP_NEWEST_VERSIONS) -> list[str]:
    """Delete the function's published versions that no alias points at, but the ``keep_newest`` newest; returns
    the deleted version numbers, oldest first."""
    versions: list[int] = []
    for page in client.get_paginator("list_versions_by_function").paginate(FunctionName=function_name):
        versions += [int(v["Version"]) for v in page["Versions"] if v["Version"] != "$LATEST"]
    aliased: set[int] = set()
    for page in client.get_paginator("list_aliases").paginate(FunctionName=function_name):
        for alias in page["Aliases"]:
            if alias["FunctionVersion"].isdigit():
                aliased.add(int(alias["FunctionVersion"]))
            for weighted in alias.get("RoutingConfig", {}).get("AdditionalVersionWeights", {}):
                aliased.add(int(weighted))
    kept = aliased | set(sorted(versions)[-keep_newest:] if keep_newest > 0 else [])
    deleted = [str(v) for v in sorted(versions) if v not in kept]
    for version in deleted:
        client.delete_function(FunctionName=function_name, Qualifier=version)
    return deleted


def prune(stage: str, path: Path = SAMCONFIG, session: Any = None) -> dict[str, list[str]]:
    session, stack_name = _stack_session(stage, path, session)
    template = load_template()
    resources = session.client("cloudformation").describe_stack_resources(StackName=stack_name)
    physical = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in resources["StackResources"]}
    client = session.client("lambda")
    return {name: prune_versions(client, physical[name]) for name in snapstart_functions(template) if name in physical}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["check", "migrate", "prune"])
    parser.add_argument("stage")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            check(args.stage)
            print(f"samconfig.toml: {args.stage} is ready to deploy")
        elif args.command == "prune":
            print(json.dumps({"deleted_versions": prune(args.stage)}))
        else:
            print(json.dumps(migrate(args.stage)))
    except DeployConfigError as exc:
        print(f"cannot deploy: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
