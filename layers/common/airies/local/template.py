"""Read template.yaml the way the local stack needs it: functions, their env, and local stand-ins for resources.

Nothing here talks to AWS. ``!Ref``/``!Sub``/``!GetAtt`` are resolved to *local* values: template parameters
come from the env file (or their defaults), resources get deterministic local names
(``airies-local-<kebab-logical-id>`` unless the env file's ``Resources`` map names them), pseudo parameters
get moto's account and the configured region.

Extending: a capability that declares a new resource type registers how it is named and created locally with
``@local_resource("AWS::X::Y")`` (see the S3/SQS/DynamoDB/StateMachine creators at the bottom). The local server
and the invoke tests call :func:`create_local_resources`, so every declared resource exists under moto.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from airies.core.config import PROJECT_ROOT

LOCAL_ACCOUNT_ID = "123456789012"  # moto's default account
DEFAULT_TEMPLATE = PROJECT_ROOT / "template.yaml"
DEFAULT_ENV_FILE = PROJECT_ROOT / "infra" / "env" / "local.json"

# --------------------------------------------------------------------------------------------------------------------
# YAML with CloudFormation short-form tags
# --------------------------------------------------------------------------------------------------------------------


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns ``!Tag value`` into the long form ``{"Fn::Tag": value}`` (``!Ref`` -> ``{"Ref": ...}``)."""


def _cfn_tag(loader: _CfnLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "Condition":
        return {"Condition": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template(path: Path | str = DEFAULT_TEMPLATE) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return yaml.load(handle, Loader=_CfnLoader)


def load_env_file(path: Path | str | None = DEFAULT_ENV_FILE) -> dict[str, Any]:
    """The env file: SAM ``--env-vars`` format plus two local-only maps.

    ``{"Parameters": {VAR: value}}`` applies to every function, ``{"<LogicalId>": {VAR: value}}`` to one;
    ``TemplateParameters`` overrides template parameters, ``Resources`` names local resources.
    A ``null`` value removes the variable.
    """
    if path is None or not Path(path).exists():
        return {}
    return json.loads(Path(path).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------------------------
# Local values for intrinsic functions
# --------------------------------------------------------------------------------------------------------------------


def kebab(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", name).lower()


@dataclass
class LocalContext:
    """Everything needed to resolve intrinsics to local values."""

    template: dict[str, Any]
    env_file: dict[str, Any] = field(default_factory=dict)
    region: str = "us-east-1"
    endpoint_url: str | None = None  # moto server, when one runs
    root: Path = PROJECT_ROOT  # the template's folder: relative paths (DefinitionUri, CodeUri) start here

    @property
    def resources(self) -> dict[str, Any]:
        return self.template.get("Resources") or {}

    def parameter(self, name: str) -> Any:
        overrides = self.env_file.get("TemplateParameters") or {}
        if name in overrides:
            return overrides[name]
        spec = (self.template.get("Parameters") or {}).get(name)
        if spec is None:
            raise KeyError(f"unknown parameter {name}")
        default = spec.get("Default", "")
        if spec.get("Type") == "CommaDelimitedList" and isinstance(default, str):
            return [part for part in default.split(",") if part]
        return default

    def local_name(self, logical_id: str) -> str:
        names = self.env_file.get("Resources") or {}
        return names.get(logical_id) or f"airies-local-{kebab(logical_id)}"

    def ref(self, name: str) -> Any:
        pseudo = {
            "AWS::Region": self.region,
            "AWS::AccountId": LOCAL_ACCOUNT_ID,
            "AWS::StackName": "airies-local",
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": None,
            "AWS::StackId": f"arn:aws:cloudformation:{self.region}:{LOCAL_ACCOUNT_ID}:stack/airies-local/local",
        }
        if name in pseudo:
            return pseudo[name]
        if name in (self.template.get("Parameters") or {}):
            return self.parameter(name)
        resource = self.resources.get(name)
        if resource is None:
            raise KeyError(f"!Ref to unknown parameter or resource {name}")
        kind = RESOURCE_KINDS.get(resource.get("Type", ""))
        if kind is not None and kind.ref is not None:
            return kind.ref(self, name, resource)
        return self.local_name(name)

    def get_att(self, logical_id: str, attribute: str) -> Any:
        resource = self.resources.get(logical_id)
        if resource is None:
            raise KeyError(f"!GetAtt to unknown resource {logical_id}")
        kind = RESOURCE_KINDS.get(resource.get("Type", ""))
        if kind is not None and kind.get_att is not None:
            value = kind.get_att(self, logical_id, resource, attribute)
            if value is not None:
                return value
        if attribute == "Arn":
            return self.arn(_service_of(resource.get("Type", "")), self.local_name(logical_id))
        return f"{self.local_name(logical_id)}-{attribute.lower()}"

    def arn(self, service: str, resource: str) -> str:
        return f"arn:aws:{service}:{self.region}:{LOCAL_ACCOUNT_ID}:{resource}"

    def resolve(self, value: Any) -> Any:
        """Resolve intrinsic functions recursively (Ref, Sub, GetAtt, Join, Select, Split, If, Equals...)."""
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                logical_id, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.get_att(logical_id, attribute)
            if key == "Fn::Sub":
                return self._sub(arg)
            if key == "Fn::Join":
                sep, items = arg
                return sep.join(str(self.resolve(item)) for item in self.resolve(items))
            if key == "Fn::Select":
                index, items = arg
                return self.resolve(items)[int(self.resolve(index))]
            if key == "Fn::Split":
                sep, text = arg
                return str(self.resolve(text)).split(sep)
            if key == "Fn::If":
                condition, when_true, when_false = arg
                return self.resolve(when_true if self.condition(condition) else when_false)
            if key == "Fn::Equals":
                left, right = self.resolve(arg)
                return left == right
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Fn::And":
                return all(self.resolve(item) for item in arg)
            if key == "Fn::Or":
                return any(self.resolve(item) for item in arg)
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::ImportValue":
                return f"local-import-{self.resolve(arg)}"
            if key == "Fn::GetAZs":
                return [f"{self.region}a", f"{self.region}b"]
        return {key: self.resolve(item) for key, item in value.items()}

    def condition(self, name: str) -> bool:
        spec = (self.template.get("Conditions") or {}).get(name)
        if spec is None:
            raise KeyError(f"unknown condition {name}")
        return bool(self.resolve(spec))

    def _sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
        variables = {key: self.resolve(item) for key, item in variables.items()}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):  # ${!Literal} escapes
                return "${" + name[1:] + "}"
            if name in variables:
                return str(variables[name])
            if "." in name and not name.startswith("AWS::"):
                logical_id, attribute = name.split(".", 1)
                return str(self.get_att(logical_id, attribute))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", replace, text)


def _service_of(resource_type: str) -> str:
    parts = resource_type.split("::")
    service = parts[1].lower() if len(parts) > 1 else "local"
    return {"serverless": "lambda", "dynamodb": "dynamodb", "stepfunctions": "states"}.get(service, service)


# --------------------------------------------------------------------------------------------------------------------
# Functions
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    code_uri: Path
    handler: str  # "module.function" (module may be dotted: "pkg.mod.fn")
    runtime: str
    timeout: int
    memory_size: int
    layer_dirs: tuple[Path, ...]
    environment: dict[str, Any]  # unresolved Globals + function variables
    events: dict[str, Any]

    @property
    def module_path(self) -> Path:
        module, _, _ = self.handler.rpartition(".")
        return self.code_uri / (module.replace(".", "/") + ".py")

    @property
    def function_name(self) -> str:
        _, _, name = self.handler.rpartition(".")
        return name


def _merged(globals_fn: dict[str, Any], props: dict[str, Any], key: str, default: Any = None) -> Any:
    return props.get(key, globals_fn.get(key, default))


def function_specs(template: dict[str, Any], root: Path = PROJECT_ROOT) -> dict[str, FunctionSpec]:
    """Every ``AWS::Serverless::Function`` with Globals applied (SAM merge rules for env vars and layers)."""
    globals_fn = (template.get("Globals") or {}).get("Function") or {}
    resources = template.get("Resources") or {}
    specs: dict[str, FunctionSpec] = {}
    for logical_id, resource in resources.items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        props = resource.get("Properties") or {}
        code_uri = _merged(globals_fn, props, "CodeUri")
        handler = _merged(globals_fn, props, "Handler")
        if not isinstance(code_uri, str) or not isinstance(handler, str):
            raise ValueError(f"{logical_id}: CodeUri and Handler must be plain strings for local invoke")
        environment = dict(((globals_fn.get("Environment") or {}).get("Variables")) or {})
        environment.update(((props.get("Environment") or {}).get("Variables")) or {})
        layers = list(globals_fn.get("Layers") or []) + list(props.get("Layers") or [])
        layer_dirs = []
        for layer in layers:
            if isinstance(layer, dict) and "Ref" in layer:
                layer_resource = resources.get(layer["Ref"]) or {}
                content_uri = (layer_resource.get("Properties") or {}).get("ContentUri")
                if isinstance(content_uri, str):
                    layer_dirs.append((root / content_uri).resolve())
        specs[logical_id] = FunctionSpec(
            logical_id=logical_id,
            code_uri=(root / code_uri).resolve(),
            handler=handler,
            runtime=str(_merged(globals_fn, props, "Runtime", "python3.12")),
            timeout=int(_merged(globals_fn, props, "Timeout", 3)),
            memory_size=int(_merged(globals_fn, props, "MemorySize", 128)),
            layer_dirs=tuple(layer_dirs),
            environment=environment,
            events=props.get("Events") or {},
        )
    return specs


def function_environment(spec: FunctionSpec, ctx: LocalContext) -> dict[str, str | None]:
    """The function's env as Lambda would see it, resolved locally; env-file values override (None = unset)."""
    env: dict[str, str | None] = {}
    for key, value in spec.environment.items():
        resolved = ctx.resolve(value)
        env[key] = None if resolved is None else _as_env(resolved)
    for scope in ("Parameters", spec.logical_id):
        for key, value in (ctx.env_file.get(scope) or {}).items():
            env[key] = None if value is None else _as_env(value)
    env.setdefault("AWS_REGION", ctx.region)
    env.setdefault("AWS_LAMBDA_FUNCTION_NAME", f"airies-local-{spec.logical_id}")
    env.setdefault("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", str(spec.memory_size))
    return env


def _as_env(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --------------------------------------------------------------------------------------------------------------------
# Local resources (moto): how each declared resource type is named, referenced and created
# --------------------------------------------------------------------------------------------------------------------

RefFn = Callable[[LocalContext, str, dict[str, Any]], Any]
GetAttFn = Callable[[LocalContext, str, dict[str, Any], str], Any]
CreateFn = Callable[[LocalContext, str, dict[str, Any], Any], None]  # (ctx, logical_id, resource, boto3 session)


@dataclass
class ResourceKind:
    ref: RefFn | None = None
    get_att: GetAttFn | None = None
    create: CreateFn | None = None


RESOURCE_KINDS: dict[str, ResourceKind] = {}


def local_resource(resource_type: str, *, ref: RefFn | None = None, get_att: GetAttFn | None = None):  # type: ignore[no-untyped-def]
    """Decorator registering how a resource type is created under moto (and optionally referenced)."""

    def register(create: CreateFn) -> CreateFn:
        RESOURCE_KINDS[resource_type] = ResourceKind(ref=ref, get_att=get_att, create=create)
        return create

    return register


def create_local_resources(ctx: LocalContext, session: Any = None) -> list[str]:
    """Create every declared resource that has a local creator; returns the logical ids created.

    ``session`` is a boto3 Session (defaults to one using the environment, i.e. AWS_ENDPOINT_URL / mock_aws).
    """
    if session is None:
        import boto3

        session = boto3.session.Session(region_name=ctx.region)
    created = []
    # Queues and tables before buckets and state machines, which may point at them.
    order = {"AWS::SQS::Queue": 0, "AWS::DynamoDB::Table": 1, "AWS::S3::Bucket": 2}
    items = sorted(ctx.resources.items(), key=lambda item: order.get(item[1].get("Type", ""), 9))
    for logical_id, resource in items:
        kind = RESOURCE_KINDS.get(resource.get("Type", ""))
        if kind is None or kind.create is None:
            continue
        kind.create(ctx, logical_id, resource, session)
        created.append(logical_id)
    return created


def _client(session: Any, service: str, ctx: LocalContext) -> Any:
    kwargs: dict[str, Any] = {"region_name": ctx.region}
    if ctx.endpoint_url:
        kwargs["endpoint_url"] = ctx.endpoint_url
    return session.client(service, **kwargs)


def _props(ctx: LocalContext, resource: dict[str, Any]) -> dict[str, Any]:
    return ctx.resolve(resource.get("Properties") or {})


# S3 ---------------------------------------------------------------------------------------------------------------


def _bucket_att(ctx: LocalContext, logical_id: str, _resource: dict[str, Any], attribute: str) -> Any:
    name = ctx.local_name(logical_id)
    return {
        "Arn": f"arn:aws:s3:::{name}",
        "DomainName": f"{name}.s3.amazonaws.com",
        "RegionalDomainName": f"{name}.s3.{ctx.region}.amazonaws.com",
    }.get(attribute)


@local_resource("AWS::S3::Bucket", get_att=_bucket_att)
def _create_bucket(ctx: LocalContext, logical_id: str, resource: dict[str, Any], session: Any) -> None:
    s3 = _client(session, "s3", ctx)
    name = ctx.local_name(logical_id)
    existing = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
    if name not in existing:
        if ctx.region == "us-east-1":
            s3.create_bucket(Bucket=name)
        else:
            s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": ctx.region})
    rules = (_props(ctx, resource).get("CorsConfiguration") or {}).get("CorsRules")
    if rules:  # CloudFormation's property names differ from the S3 API's
        renamed = {"Id": "ID", "MaxAge": "MaxAgeSeconds", "ExposedHeaders": "ExposeHeaders"}
        cors = [{renamed.get(key, key): value for key, value in rule.items()} for rule in rules]
        s3.put_bucket_cors(Bucket=name, CORSConfiguration={"CORSRules": cors})


# SQS --------------------------------------------------------------------------------------------------------------


def _queue_name(ctx: LocalContext, logical_id: str, resource: dict[str, Any]) -> str:
    name = ctx.local_name(logical_id)
    fifo = (resource.get("Properties") or {}).get("FifoQueue") in (True, "true")
    return f"{name}.fifo" if fifo and not name.endswith(".fifo") else name


def _queue_url(ctx: LocalContext, logical_id: str, resource: dict[str, Any]) -> str:
    base = ctx.endpoint_url or f"https://sqs.{ctx.region}.amazonaws.com"
    return f"{base.rstrip('/')}/{LOCAL_ACCOUNT_ID}/{_queue_name(ctx, logical_id, resource)}"


def _queue_att(ctx: LocalContext, logical_id: str, resource: dict[str, Any], attribute: str) -> Any:
    name = _queue_name(ctx, logical_id, resource)
    return {
        "Arn": ctx.arn("sqs", name),
        "QueueName": name,
        "QueueUrl": _queue_url(ctx, logical_id, resource),
    }.get(attribute)


@local_resource("AWS::SQS::Queue", ref=_queue_url, get_att=_queue_att)
def _create_queue(ctx: LocalContext, logical_id: str, resource: dict[str, Any], session: Any) -> None:
    props = _props(ctx, resource)
    attributes: dict[str, str] = {}
    for key in ("VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds", "ReceiveMessageWaitTimeSeconds"):
        if key in props:
            attributes[key] = str(props[key])
    if props.get("FifoQueue") in (True, "true"):
        attributes["FifoQueue"] = "true"
        if props.get("ContentBasedDeduplication") in (True, "true"):
            attributes["ContentBasedDeduplication"] = "true"
    if "RedrivePolicy" in props:
        attributes["RedrivePolicy"] = json.dumps(props["RedrivePolicy"])
    _client(session, "sqs", ctx).create_queue(QueueName=_queue_name(ctx, logical_id, resource), Attributes=attributes)


# DynamoDB ---------------------------------------------------------------------------------------------------------


def _table_att(ctx: LocalContext, logical_id: str, _resource: dict[str, Any], attribute: str) -> Any:
    name = ctx.local_name(logical_id)
    return {
        "Arn": ctx.arn("dynamodb", f"table/{name}"),
        "StreamArn": ctx.arn("dynamodb", f"table/{name}/stream/local"),
    }.get(attribute)


@local_resource("AWS::DynamoDB::Table", get_att=_table_att)
def _create_table(ctx: LocalContext, logical_id: str, resource: dict[str, Any], session: Any) -> None:
    props = _props(ctx, resource)
    dynamodb = _client(session, "dynamodb", ctx)
    name = ctx.local_name(logical_id)
    if name in dynamodb.list_tables().get("TableNames", []):
        return
    kwargs: dict[str, Any] = {
        "TableName": name,
        "KeySchema": props["KeySchema"],
        "AttributeDefinitions": props["AttributeDefinitions"],
        "BillingMode": "PAY_PER_REQUEST",
    }
    if props.get("GlobalSecondaryIndexes"):
        kwargs["GlobalSecondaryIndexes"] = [
            {key: index[key] for key in ("IndexName", "KeySchema", "Projection")}
            for index in props["GlobalSecondaryIndexes"]
        ]
    dynamodb.create_table(**kwargs)
    ttl = props.get("TimeToLiveSpecification")
    if ttl and ttl.get("Enabled") in (True, "true"):
        dynamodb.update_time_to_live(
            TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]}
        )


# Step Functions ---------------------------------------------------------------------------------------------------


def _state_machine_arn(ctx: LocalContext, logical_id: str, _resource: dict[str, Any]) -> str:
    return ctx.arn("states", f"stateMachine:{ctx.local_name(logical_id)}")


def _state_machine_att(ctx: LocalContext, logical_id: str, resource: dict[str, Any], attribute: str) -> Any:
    return {"Arn": _state_machine_arn(ctx, logical_id, resource), "Name": ctx.local_name(logical_id)}.get(attribute)


def state_machine_definition(ctx: LocalContext, resource: dict[str, Any]) -> str:
    """The ASL of a Serverless::StateMachine with DefinitionSubstitutions applied (local values)."""
    props = resource.get("Properties") or {}
    if "Definition" in props:
        text = json.dumps(ctx.resolve(props["Definition"]))
    else:
        text = (ctx.root / props["DefinitionUri"]).read_text(encoding="utf-8")
    for key, value in (ctx.resolve(props.get("DefinitionSubstitutions") or {})).items():
        text = text.replace("${" + key + "}", str(value))
    return text


@local_resource("AWS::Serverless::StateMachine", ref=_state_machine_arn, get_att=_state_machine_att)
def _create_state_machine(ctx: LocalContext, logical_id: str, resource: dict[str, Any], session: Any) -> None:
    sfn = _client(session, "stepfunctions", ctx)
    name = ctx.local_name(logical_id)
    if any(machine["name"] == name for machine in sfn.list_state_machines().get("stateMachines", [])):
        return
    sfn.create_state_machine(
        name=name,
        definition=state_machine_definition(ctx, resource),
        roleArn=f"arn:aws:iam::{LOCAL_ACCOUNT_ID}:role/airies-local-states",
        type=(resource.get("Properties") or {}).get("Type", "STANDARD"),
    )


# Lambda functions: a Ref is the function name, GetAtt Arn its ARN (no creation: the invoker runs them in-process).


def _function_ref(ctx: LocalContext, logical_id: str, _resource: dict[str, Any]) -> str:
    return f"airies-local-{logical_id}"


def _function_att(ctx: LocalContext, logical_id: str, _resource: dict[str, Any], attribute: str) -> Any:
    if attribute == "Arn":
        return ctx.arn("lambda", f"function:airies-local-{logical_id}")
    return None


RESOURCE_KINDS["AWS::Serverless::Function"] = ResourceKind(ref=_function_ref, get_att=_function_att)


def local_context(
    template: dict[str, Any] | None = None, env_file: Path | str | None = DEFAULT_ENV_FILE
) -> LocalContext:
    return LocalContext(
        template=template if template is not None else load_template(),
        env_file=load_env_file(env_file),
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL"),
    )
