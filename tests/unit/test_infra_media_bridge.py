"""template.yaml's media bridge: off by default, and when on, a Fargate service of at least two small arm64 tasks
behind an HTTPS load balancer with a health check, tight security groups, alarms, and roles that hold only what the
tasks need. The container's Dockerfile runs the module the tests drive."""

from __future__ import annotations

import ast
import re
from pathlib import Path, PurePosixPath

import pytest

from airies.core.config import PROJECT_ROOT
from airies.local.template import load_template
from airies.media_bridge.config import BridgeConfig
from benchmarks.cost_media_streams import Bridge, Call

TEMPLATE = PROJECT_ROOT / "template.yaml"
DOCKERFILE = PROJECT_ROOT / "infra" / "media-bridge" / "Dockerfile"
BRIDGE_TYPES = {
    "AWS::ECS::Cluster",
    "AWS::ECS::TaskDefinition",
    "AWS::ECS::Service",
    "AWS::ElasticLoadBalancingV2::LoadBalancer",
    "AWS::ElasticLoadBalancingV2::TargetGroup",
    "AWS::ElasticLoadBalancingV2::Listener",
}


@pytest.fixture(scope="module")
def template() -> dict:
    return load_template(TEMPLATE)


def bridge(template: dict) -> dict[str, dict]:
    return {name: r for name, r in template["Resources"].items() if name.startswith("MediaBridge")}


def test_the_bridge_is_off_by_default_and_every_resource_of_it_is_conditional(template: dict) -> None:
    assert template["Parameters"]["EnableMediaBridge"]["Default"] == "false"
    resources = bridge(template)
    assert {r["Type"] for r in resources.values()} >= BRIDGE_TYPES
    for name, resource in resources.items():
        assert resource.get("Condition") == "MediaBridge", name
    for name, resource in template["Resources"].items():  # nothing else is an ECS or load balancer resource
        if resource["Type"] in BRIDGE_TYPES:
            assert name in resources, name
    condition = template["Conditions"]["MediaBridge"]["Fn::And"]
    assert {"Fn::Equals": [{"Ref": "EnableMediaBridge"}, "true"]} in condition
    assert {"Condition": "HasVpcId"} in condition
    # Asked for without its settings, the deploy fails with a message instead of silently skipping the bridge.
    rule = template["Rules"]["MediaBridgeNeedsItsSettings"]
    asserted = {str(a["Assert"]) for a in rule["Assertions"]}
    for parameter in ("VpcId", "MediaBridgeCertificateArn", "MediaBridgeDomainName", "MediaBridgeImageUri"):
        assert any(parameter in text for text in asserted), parameter


def test_small_arm64_fargate_tasks_at_least_two(template: dict) -> None:
    resources = bridge(template)
    task = resources["MediaBridgeTaskDefinition"]["Properties"]
    assert task["RequiresCompatibilities"] == ["FARGATE"] and task["NetworkMode"] == "awsvpc"
    assert (task["Cpu"], task["Memory"]) == ("256", "512")
    assert task["RuntimePlatform"]["CpuArchitecture"] == "ARM64"
    (container,) = task["ContainerDefinitions"]
    assert container["ReadonlyRootFilesystem"] is True and container["User"] != "0"
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert "VoiceWebSocketApi" in env["AIRIES_BRIDGE_API_WS_URL"]["Fn::Sub"]
    assert container["LogConfiguration"]["Options"]["awslogs-group"] == {"Ref": "MediaBridgeLogGroup"}
    assert container["PortMappings"] == [{"ContainerPort": BridgeConfig(api_ws_url="ws://x").port, "Protocol": "tcp"}]

    service = resources["MediaBridgeService"]["Properties"]
    assert service["DesiredCount"] == {"Ref": "MediaBridgeMinTasks"}
    assert template["Parameters"]["MediaBridgeMinTasks"]["MinValue"] >= 2
    assert service["DeploymentConfiguration"]["MinimumHealthyPercent"] == 100
    network = service["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["AssignPublicIp"] == "DISABLED" and network["Subnets"] == {"Ref": "SubnetIds"}

    log_group = resources["MediaBridgeLogGroup"]["Properties"]
    assert log_group["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_https_load_balancer_checks_the_bridge_s_health_endpoint(template: dict) -> None:
    resources = bridge(template)
    listener = resources["MediaBridgeHttpsListener"]["Properties"]
    assert (listener["Protocol"], listener["Port"]) == ("HTTPS", 443)
    assert listener["Certificates"] == [{"CertificateArn": {"Ref": "MediaBridgeCertificateArn"}}]
    assert "TLS13" in listener["SslPolicy"]
    assert not [r for r in resources.values() if r["Type"].endswith("Listener") and r["Properties"]["Port"] == 80]
    group = resources["MediaBridgeTargetGroup"]["Properties"]
    assert group["HealthCheckPath"] == BridgeConfig(api_ws_url="ws://x").health_path
    assert group["TargetType"] == "ip" and group["Port"] == 8080
    balancer = resources["MediaBridgeLoadBalancer"]["Properties"]
    assert balancer["Scheme"] == "internet-facing" and balancer["Subnets"] == {"Ref": "MediaBridgePublicSubnetIds"}
    env = template["Globals"]["Function"]["Environment"]["Variables"]["AIRIES_MEDIA_BRIDGE_URL"]["Fn::If"]
    assert env[0] == "MediaBridge" and env[1]["Fn::Sub"].endswith("/twilio")


def test_security_groups_open_only_443_to_the_world_and_8080_from_the_balancer(template: dict) -> None:
    resources = bridge(template)
    (public,) = resources["MediaBridgeLoadBalancerSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert (public["FromPort"], public["ToPort"], public["CidrIp"]) == (443, 443, "0.0.0.0/0")
    ingress = resources["MediaBridgeTaskIngress"]["Properties"]
    assert ingress["SourceSecurityGroupId"] == {"Ref": "MediaBridgeLoadBalancerSecurityGroup"}
    assert (ingress["FromPort"], ingress["ToPort"]) == (8080, 8080)
    assert "SecurityGroupIngress" not in resources["MediaBridgeTaskSecurityGroup"]["Properties"]
    (egress,) = resources["MediaBridgeTaskSecurityGroup"]["Properties"]["SecurityGroupEgress"]
    assert (egress["FromPort"], egress["ToPort"]) == (443, 443)


def test_roles_hold_only_what_the_tasks_need(template: dict) -> None:
    resources = bridge(template)
    task_role = resources["MediaBridgeTaskRole"]["Properties"]
    assert "Policies" not in task_role and "ManagedPolicyArns" not in task_role  # the bridge calls no AWS API
    execution = resources["MediaBridgeExecutionRole"]["Properties"]
    assert "ManagedPolicyArns" not in execution
    (policy,) = execution["Policies"]
    for statement in policy["PolicyDocument"]["Statement"]:
        for action in statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]:
            assert "*" not in action
        if statement["Resource"] == "*":
            assert statement["Action"] == "ecr:GetAuthorizationToken"  # no resource-level permission exists
        else:
            assert "*" not in str(statement["Resource"])
    for role in (task_role, execution):
        (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
        assert trust["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
        assert trust["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}


def test_unhealthy_hosts_and_cpu_raise_alarms(template: dict) -> None:
    alarms = {
        r["Properties"]["MetricName"]: r["Properties"]
        for r in bridge(template).values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
    }
    assert alarms["UnHealthyHostCount"]["Namespace"] == "AWS/ApplicationELB"
    assert alarms["CPUUtilization"]["Namespace"] == "AWS/ECS"
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]


def test_the_dockerfile_runs_the_bridge_as_an_unprivileged_arm64_image() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM --platform=linux/arm64 python:3\.1[1-3]", text, re.M)
    assert "python -m airies.media_bridge" in text or '"-m", "airies.media_bridge"' in text
    assert re.search(r"^USER 10001", text, re.M)
    assert "HEALTHCHECK" in text and "/health" in text
    requirements = (DOCKERFILE.parent / "requirements.txt").read_text().split()
    assert any(line.startswith("websockets==") for line in requirements)


def test_the_image_holds_every_airies_module_the_bridge_imports() -> None:
    """The Dockerfile copies modules one by one: each one the bridge reaches through its imports must be there."""
    package = PROJECT_ROOT / "layers" / "common"
    copied = [
        PurePosixPath(src)
        for line in DOCKERFILE.read_text().splitlines()
        if line.startswith("COPY layers/common/")
        for src in line.split()[1:-1]
    ]

    def is_copied(path: Path) -> bool:
        relative = PurePosixPath(path.relative_to(PROJECT_ROOT).as_posix())
        return any(relative == src or src in relative.parents for src in copied)

    def module_file(name: str) -> Path:
        base = package.joinpath(*name.split("."))
        return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")

    seen: set[str] = set()
    todo = [f"airies.media_bridge.{p.stem}" for p in (package / "airies" / "media_bridge").glob("*.py")]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        assert is_copied(path), f"{name} is imported by the bridge but not copied into its image"
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(2, len(parts))]  # the packages' __init__ run too
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("airies"):
                todo.append(node.module)
                todo += [
                    f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}").exists()
                ]
            elif isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith("airies.")]
    assert "airies.core.limits" in seen and "airies.conversations.protocol" in seen


def test_the_cost_model_prices_the_bridge_that_is_deployed(template: dict) -> None:
    resources = bridge(template)
    task = resources["MediaBridgeTaskDefinition"]["Properties"]
    (container,) = task["ContainerDefinitions"]
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    priced = Bridge()
    assert (priced.vcpu, priced.memory_gb) == (int(task["Cpu"]) / 1024, int(task["Memory"]) / 1024)
    assert priced.calls_per_task == int(env["AIRIES_BRIDGE_MAX_CALLS"])
    assert priced.min_tasks == template["Parameters"]["MediaBridgeMinTasks"]["Default"]
    assert Call().chunk_ms == BridgeConfig(api_ws_url="ws://x").chunk_ms
