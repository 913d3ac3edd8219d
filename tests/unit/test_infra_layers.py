"""The layer split: every runtime dependency in exactly one layer, and each function runs with only its layers.

A function is checked in a fresh interpreter in which every package of a layer it does not carry raises
ImportError: its module init and each of its sample events (infra/events/) must run there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from airies.core.config import PROJECT_ROOT
from airies.local.build_report import function_layers
from airies.local.template import load_template

TEMPLATE = load_template(PROJECT_ROOT / "template.yaml")
RUNTIME_PROVIDED = {"boto3"}  # the Lambda python3.12 runtime ships boto3/botocore


def requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.split(r"[=<>\[ ]", line, maxsplit=1)[0].lower())
    return names


def layer_requirements() -> dict[str, set[str]]:
    out = {}
    for logical_id, resource in TEMPLATE["Resources"].items():
        if resource["Type"] == "AWS::Serverless::LayerVersion":
            folder = PROJECT_ROOT / resource["Properties"]["ContentUri"]
            if logical_id == "CommonLayer":
                out[logical_id] = requirement_names(folder / "requirements.txt")
            else:
                makefile = (folder / "Makefile").read_text()
                (file,) = re.findall(rf"build-{logical_id}:\n\t\$\(call install_layer,([\w.]+),", makefile)
                out[logical_id] = requirement_names(folder / file)
    return out


def test_every_runtime_dependency_is_in_exactly_one_layer() -> None:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {re.split(r"[=<>\[ ]", dep, maxsplit=1)[0].lower() for dep in project} - RUNTIME_PROVIDED
    layers = layer_requirements()
    assert set(layers) == {"CommonLayer", "AiLayer", "VoiceLayer", "DocumentsLayer", "BillingLayer"}
    seen: dict[str, str] = {}
    for layer, names in layers.items():
        for name in names:
            assert name not in seen, f"{name} is in {seen[name]} and {layer}: Lambda would count it twice"
            seen[name] = layer
    assert set(seen) == wanted, f"missing from layers: {wanted - set(seen)}; not in pyproject: {set(seen) - wanted}"


def closure(names: set[str]) -> set[str]:
    """The distributions installed for these requirements (their dependencies, recursively), normalised."""
    todo, done = [n.replace("_", "-") for n in names], set()
    while todo:
        name = todo.pop()
        if name in done:
            continue
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        done.add(name)
        for requirement in requires:
            if "extra ==" in requirement:
                continue
            todo.append(re.split(r"[=<>\[ ;!~(]", requirement, maxsplit=1)[0].lower().replace("_", "-"))
    return done


def blocked_modules(function: str) -> list[str]:
    """Top-level modules that only the layers this function does not carry provide."""
    layers = layer_requirements()
    carried = closure(set().union(*(layers[layer] for layer in function_layers(TEMPLATE)[function])))
    others = closure(set().union(*layers.values())) - carried - closure(RUNTIME_PROVIDED)
    modules = metadata.packages_distributions()
    return sorted(
        module
        for module, dists in modules.items()
        if all(d.lower().replace("_", "-") in others for d in dists) and not module.startswith("_")
    )


FIREWALL = """
import importlib.abc, json, sys
blocked = set(json.loads(sys.argv[1]))
class Firewall(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            # what Python raises for a module that is not installed (libraries catch it for optional imports)
            raise ModuleNotFoundError(f"{name} is not in this function's layers", name=name)
        return None
sys.meta_path.insert(0, Firewall())
from pathlib import Path
from airies.local.invoke import run_sample_event, resolve_function, load_handler, patched_environ, sample_events
from airies.local.template import function_environment
database_url = sys.argv[2]
for function in json.loads(sys.argv[3]):  # functions with the same layers: the same modules are blocked
    spec, ctx = resolve_function(function)
    with patched_environ({**function_environment(spec, ctx), "DATABASE_URL": database_url}):
        load_handler(spec)  # module init (a cold start)
    for event in sample_events(function):
        run_sample_event(function, event, database_url=database_url)
print("ok")
"""


def run_with_firewall(functions: list[str], blocked: list[str], folder: Path) -> subprocess.CompletedProcess:
    database = f"sqlite:///{folder / 'f.db'}"  # which database does not change what a function imports
    return subprocess.run(
        [sys.executable, "-c", FIREWALL, json.dumps(blocked), database, json.dumps(functions)],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},  # sample events' setup callables live in tests/
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def functions_by_layers() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for function, layers in sorted(function_layers(TEMPLATE).items()):
        groups.setdefault("+".join(layers), []).append(function)
    return groups


@pytest.mark.parametrize("layers", sorted(functions_by_layers()))
def test_functions_run_with_only_their_layers(layers: str, tmp_path: Path) -> None:
    functions = functions_by_layers()[layers]
    blocked = blocked_modules(functions[0])
    if "ApiFunction" not in functions:
        assert blocked, f"{functions} carry every layer"
    run = run_with_firewall(functions, blocked, tmp_path)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]


def test_the_firewall_catches_a_missing_layer(tmp_path: Path) -> None:
    """Without the billing layer, the Stripe webhook's signed sample event cannot verify its signature."""
    blocked = blocked_modules("UsageFunction")
    assert "stripe" in blocked and "numpy" in blocked and "pypdf" in blocked and "sqlalchemy" not in blocked
    assert "openai" not in blocked_modules("VoiceMessageFunction")
    assert {"pypdf", "stripe"} <= set(blocked_modules("VoiceMessageFunction"))
    run = run_with_firewall(["StripeWebhookFunction"], blocked, tmp_path)
    assert run.returncode != 0 and "stripe is not in this function's layers" in run.stderr, run.stderr[-2000:]
