"""template.yaml: structure that the platform relies on, the local reader of it, and cfn-lint 1.53.3."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from airies.core.config import PROJECT_ROOT
from airies.local.template import (
    LocalContext,
    function_environment,
    function_specs,
    kebab,
    load_template,
    local_context,
)

TEMPLATE = PROJECT_ROOT / "template.yaml"
CFN_LINT = PROJECT_ROOT / ".venv-tools" / "bin" / "cfn-lint"


@pytest.fixture(scope="module")
def template() -> dict:
    return load_template(TEMPLATE)


def test_short_form_tags_become_long_form(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        "A: !Ref X\nB: !GetAtt Res.Arn\nC: !Sub 'a-${X}'\nD: !Join ['-', [!Ref X, b]]\nE: !If [Cond, 1, 2]\n"
        "F: !GetAtt [Res, Name]\nG: !Condition Cond\n"
    )
    data = load_template(path)
    assert data["A"] == {"Ref": "X"}
    assert data["B"] == {"Fn::GetAtt": ["Res", "Arn"]}
    assert data["C"] == {"Fn::Sub": "a-${X}"}
    assert data["D"] == {"Fn::Join": ["-", [{"Ref": "X"}, "b"]]}
    assert data["E"] == {"Fn::If": ["Cond", 1, 2]}
    assert data["F"] == {"Fn::GetAtt": ["Res", "Name"]}
    assert data["G"] == {"Condition": "Cond"}


def test_globals_match_the_design(template: dict) -> None:
    fn = template["Globals"]["Function"]
    assert fn["Runtime"] == "python3.12"
    assert fn["Architectures"] == ["arm64"]
    assert fn["Tracing"] == "Active"
    env = fn["Environment"]["Variables"]
    for key in ("POWERTOOLS_SERVICE_NAME", "POWERTOOLS_LOG_LEVEL", "POWERTOOLS_METRICS_NAMESPACE"):
        assert key in env
    assert env["AIRIES_DATABASE_SECRET_ARN"] == {"Ref": "DatabaseSecretArn"}
    params = template["Parameters"]
    assert {"Stage", "DatabaseSecretArn", "SubnetIds", "SecurityGroupIds"} <= set(params)
    assert params["SubnetIds"]["Type"] == "CommaDelimitedList"


def test_every_function_exists_on_disk_and_uses_the_layer(template: dict) -> None:
    specs = function_specs(template)
    assert "ApiFunction" in specs
    for logical_id, spec in specs.items():
        assert spec.code_uri.is_dir(), f"{logical_id}: CodeUri {spec.code_uri} missing"
        assert spec.module_path.is_file(), f"{logical_id}: handler file {spec.module_path} missing"
        assert f"def {spec.function_name}(" in spec.module_path.read_text(), f"{logical_id}: no {spec.function_name}"
        assert spec.layer_dirs[0] == (PROJECT_ROOT / "layers" / "common").resolve(), f"{logical_id}: CommonLayer first"
        assert spec.code_uri.is_relative_to(PROJECT_ROOT / "functions"), "handlers live under functions/"


def test_api_function_snapstart_and_default_stage(template: dict) -> None:
    api = template["Resources"]["ApiFunction"]["Properties"]
    assert api["SnapStart"] == {"ApplyOn": "PublishedVersions"}
    assert api["AutoPublishAlias"]
    http_api = template["Resources"]["HttpApi"]["Properties"]
    # A named stage puts /<stage> in front of rawPath (payload v2) and no /api/v1 route would match.
    assert "StageName" not in http_api or http_api["StageName"] == "$default"
    assert "HttpApiUrl" in template["Outputs"]


def test_the_calls_latency_critical_voice_functions_restore_from_a_snapshot(template: dict) -> None:
    """$connect (a caller waits for it when a call starts) and the frames' function run with SnapStart, and the
    WebSocket API invokes their published alias: an unqualified ARN would run $LATEST, which SnapStart never
    snapshots. $disconnect keeps no caller waiting."""
    resources = template["Resources"]
    for function, integration, permission in (
        ("VoiceConnectFunction", "VoiceConnectIntegration", "VoiceConnectPermission"),
        ("VoiceMessageFunction", "VoiceMessageIntegration", "VoiceMessagePermission"),
    ):
        properties = resources[function]["Properties"]
        assert properties["SnapStart"] == {"ApplyOn": "PublishedVersions"}, function
        alias = f"{function}Alias{properties['AutoPublishAlias']}"
        assert "${" + alias + "}" in resources[integration]["Properties"]["IntegrationUri"]["Fn::Sub"], integration
        assert resources[permission]["Properties"]["FunctionName"] == {"Ref": alias}, permission
    assert "SnapStart" not in resources["VoiceDisconnectFunction"]["Properties"]


def test_layer_build_is_the_makefile(template: dict) -> None:
    layer = template["Resources"]["CommonLayer"]
    assert layer["Metadata"]["BuildMethod"] == "makefile"
    makefile = (PROJECT_ROOT / layer["Properties"]["ContentUri"] / "Makefile").read_text()
    assert "build-CommonLayer:" in makefile
    assert "compileall" in makefile
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] == "AWS::Serverless::LayerVersion":
            assert resource["Metadata"]["BuildMethod"] == "makefile"
            makefile = (PROJECT_ROOT / resource["Properties"]["ContentUri"] / "Makefile").read_text()
            assert f"build-{logical_id}:" in makefile, f"{logical_id}: no build target"


def test_intrinsics_resolve_to_local_values(template: dict) -> None:
    ctx = LocalContext(template=template, env_file={"Resources": {"StorageBucket": "my-bucket"}}, region="eu-west-1")
    assert ctx.resolve({"Ref": "StorageBucket"}) == "my-bucket"
    assert ctx.resolve({"Fn::GetAtt": ["StorageBucket", "Arn"]}) == "arn:aws:s3:::my-bucket"
    assert ctx.resolve({"Fn::Sub": "x-${AWS::Region}-${Stage}"}) == "x-eu-west-1-dev"
    assert ctx.resolve({"Fn::Sub": ["${A}/${!Literal}", {"A": {"Ref": "Stage"}}]}) == "dev/${Literal}"
    assert ctx.resolve({"Fn::Join": [",", [{"Ref": "AWS::AccountId"}, "b"]]}) == "123456789012,b"
    assert ctx.resolve({"Ref": "SubnetIds"}) == []
    assert kebab("StorageBucket") == "storage-bucket"
    with pytest.raises(KeyError):
        ctx.resolve({"Ref": "NoSuchThing"})


def test_function_environment_applies_env_file_over_template(template: dict) -> None:
    ctx = LocalContext(
        template=template,
        env_file={
            "Parameters": {"AIRIES_STAGE": "local", "AIRIES_DATABASE_SECRET_ARN": None},
            "ApiFunction": {"EXTRA": 1},
            "Resources": {"StorageBucket": "b1"},
        },
    )
    env = function_environment(function_specs(template)["ApiFunction"], ctx)
    assert env["AIRIES_STAGE"] == "local"
    assert env["AIRIES_DATABASE_SECRET_ARN"] is None  # unset: no secret lookup locally
    assert env["AIRIES_STORAGE_BUCKET"] == "b1"
    assert env["EXTRA"] == "1"
    assert env["POWERTOOLS_SERVICE_NAME"] == "airies"


def _cfn_lint(path: Path) -> subprocess.CompletedProcess[str]:
    if not CFN_LINT.exists():
        pytest.fail(f"{CFN_LINT} missing: run `make tools` (make test installs cfn-lint 1.53.3 there)")
    return subprocess.run([str(CFN_LINT), str(path)], capture_output=True, text=True, timeout=300, check=False)


def test_cfn_lint_is_the_sam_transform_version() -> None:
    if not CFN_LINT.exists():
        pytest.fail(f"{CFN_LINT} missing: run `make tools`")
    out = subprocess.run([str(CFN_LINT), "--version"], capture_output=True, text=True, check=True).stdout
    assert "1.53.3" in out


def test_cfn_lint_catches_a_bad_runtime_through_the_sam_transform(tmp_path: Path) -> None:
    # Proves the linter really expands AWS::Serverless::* (1.54+ silently passes this).
    shutil.copytree(
        PROJECT_ROOT / "layers", tmp_path / "layers", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
    )
    shutil.copytree(PROJECT_ROOT / "functions", tmp_path / "functions", ignore=shutil.ignore_patterns("__pycache__"))
    broken = TEMPLATE.read_text().replace("Runtime: python3.12", "Runtime: python2.1", 1)
    (tmp_path / "template.yaml").write_text(broken)
    result = _cfn_lint(tmp_path / "template.yaml")
    assert result.returncode != 0, result.stdout
    assert "python2.1" in result.stdout


# What each function's code reads at run time, and so what its IAM statements and env must grant on AWS.
WS_TOKEN, PROVIDER_KEYS, BILLING_KEYS = "WsTokenSecret", "ProviderKeysSecret", "BillingSecret"
RUNTIME_NEEDS: dict[str, dict[str, set[str]]] = {
    # function: {"secrets": secret resources, "send": queues it publishes to, "kms": {"decrypt"} if it opens
    # accounts' own sealed keys}. Every function that builds the conversation or WebSocket service reads the token key.
    "ApiFunction": {
        "secrets": {WS_TOKEN, PROVIDER_KEYS, BILLING_KEYS},
        "send": {"UsageQueue", "ScrapeQueue", "WebhookQueue"},
        "kms": {"decrypt"},
    },
    # a phone relay's handshake is signed with the number's Twilio auth token: sealed, or the platform's
    "VoiceConnectFunction": {"secrets": {WS_TOKEN, PROVIDER_KEYS}, "send": set(), "kms": {"decrypt"}},
    "VoiceDisconnectFunction": {"secrets": {WS_TOKEN}, "send": set(), "kms": set()},
    "VoiceMessageFunction": {
        "secrets": {WS_TOKEN, PROVIDER_KEYS},
        "send": {"UsageQueue", "WebhookQueue"},  # usage, and the conversation events
        "kms": {"decrypt"},
    },
    "SessionSweeperFunction": {
        "secrets": {WS_TOKEN, PROVIDER_KEYS},
        "send": {"UsageQueue", "WebhookQueue"},  # usage, and the conversation events
        "kms": {"decrypt"},
    },
    "IngestionFunction": {"secrets": {PROVIDER_KEYS}, "send": {"UsageQueue"}, "kms": {"decrypt"}},
    "IngestionTaskFunction": {"secrets": {PROVIDER_KEYS}, "send": {"UsageQueue"}, "kms": {"decrypt"}},
    # the account's LLM keys; usage, and conversation.ended with the analysis
    "AnalysisFunction": {"secrets": {PROVIDER_KEYS}, "send": {"UsageQueue", "WebhookQueue"}, "kms": {"decrypt"}},
    "ScrapeWorkerFunction": {"secrets": {PROVIDER_KEYS}, "send": {"UsageQueue"}, "kms": {"decrypt"}},
    "StripeWebhookFunction": {"secrets": {BILLING_KEYS}, "send": set(), "kms": set()},
    "BillingInvoiceFunction": {"secrets": {BILLING_KEYS}, "send": set(), "kms": set()},
    # opens endpoints' sealed signing secrets; enqueues its own next attempt and the dead letter
    "WebhookFunction": {"secrets": set(), "send": {"WebhookQueue", "WebhookDeadLetterQueue"}, "kms": {"decrypt"}},
}


def statements(properties: dict) -> list[dict]:
    return [statement for policy in properties.get("Policies") or [] for statement in policy.get("Statement", [])]


def grants(properties: dict, action: str) -> list:
    """The resources of every statement that allows ``action``."""
    found = []
    for statement in statements(properties):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if statement.get("Effect") == "Allow" and action in actions:
            resource = statement["Resource"]
            found.extend(resource if isinstance(resource, list) else [resource])
    return found


@pytest.mark.parametrize("function", sorted(RUNTIME_NEEDS))
def test_functions_may_read_what_their_code_reads(template: dict, function: str) -> None:
    properties = template["Resources"][function]["Properties"]
    needs = RUNTIME_NEEDS[function]
    secrets = {r["Ref"] for r in grants(properties, "secretsmanager:GetSecretValue") if "Ref" in r}
    assert {"DatabaseSecretArn", *needs["secrets"]} <= secrets, f"{function}: no GetSecretValue on some secrets"
    assert not secrets - {"DatabaseSecretArn", *needs["secrets"]}, f"{function}: reads secrets its code never reads"
    queues = {r["Fn::GetAtt"][0] for r in grants(properties, "sqs:SendMessage")}
    assert needs["send"] == queues, f"{function}: SendMessage on {queues}, needs {needs['send']}"
    kms = grants(properties, "kms:Decrypt")
    assert bool(kms) == bool(needs["kms"]), f"{function}: kms:Decrypt granted {kms}, needed {needs['kms']}"
    env = {
        **template["Globals"]["Function"]["Environment"]["Variables"],
        **(properties.get("Environment") or {}).get("Variables", {}),
    }
    if "UsageQueue" in needs["send"]:
        assert env.get("AIRIES_USAGE_QUEUE_URL") == {"Ref": "UsageQueue"}, f"{function}: usage would bypass SQS"
    sources = str(env["AIRIES_PROVIDER_KEYS_SECRET_NAME"])
    for name in needs["secrets"]:
        assert name in sources, f"{function}: AIRIES_PROVIDER_KEYS_SECRET_NAME does not list {name}"
    if WS_TOKEN in needs["secrets"] and len(needs["secrets"]) > 1:
        # first hit wins: the token key comes from its own secret, whatever else a vendor-key secret holds
        assert sources.index(WS_TOKEN) < min(sources.index(n) for n in needs["secrets"] - {WS_TOKEN})


# What each function does to the live-session table (services/sessions.py), and so its DynamoDB actions.
LIVE_CALL_ACTIONS = {
    "ApiFunction": {"dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"},
    "VoiceConnectFunction": {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"},
    "VoiceDisconnectFunction": {"dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"},
    "VoiceMessageFunction": {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:Query",
        "dynamodb:BatchWriteItem",
    },
    "SessionSweeperFunction": {
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:Query",
        "dynamodb:BatchWriteItem",
    },
}


@pytest.mark.parametrize("function", sorted(LIVE_CALL_ACTIONS))
def test_functions_that_touch_live_calls_may_do_so(template: dict, function: str) -> None:
    properties = template["Resources"][function]["Properties"]
    for action in LIVE_CALL_ACTIONS[function]:
        assert {"Fn::GetAtt": ["VoiceStateTable", "Arn"]} in grants(properties, action), f"{function}: no {action}"
    if function not in ("VoiceConnectFunction", "VoiceDisconnectFunction"):  # those answer by return value
        assert grants(properties, "execute-api:ManageConnections"), f"{function}: cannot post to or close connections"


def test_offline_engines_are_off_on_aws_and_on_locally(template: dict) -> None:
    assert template["Globals"]["Function"]["Environment"]["Variables"]["AIRIES_VOICE_OFFLINE_FALLBACK"] == "false"
    ctx = local_context(template)
    spec = function_specs(template)["ApiFunction"]
    assert function_environment(spec, ctx)["AIRIES_VOICE_OFFLINE_FALLBACK"] == "true"
