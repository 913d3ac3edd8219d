"""What a SnapStart function's init builds into the snapshot, against an on-demand init of the same handler: each
in a fresh interpreter, with the function's template environment (the first-use state of a process is the point)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from airies.api.app import CAPABILITIES
from airies.core.config import PROJECT_ROOT
from airies.local.invoke import DEFAULT_TEMPLATE, resolve_function
from airies.local.template import function_environment, function_specs, load_template

PROBE = """
import importlib.util, json, sys
for entry in reversed(PATHS):
    sys.path.insert(0, entry)
spec = importlib.util.spec_from_file_location("_handler", HANDLER)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
from airies.api.lazy_routes import placeholders
from airies.core import aws
app = getattr(module, "app", None)
voice = sys.modules.get("voice_runtime")
voice_service = None if voice is None else voice.runtime.built
print(json.dumps({
    "capabilities_built": None if app is None else sum(p.routes is not None for p in placeholders(app)),
    "secret_reader_built": aws.SECRETS.built is not None and aws.PARAMETERS.built is not None,
    "boto3_imported": "boto3" in sys.modules,
    "turn_engines_loaded": "airies.llm.service" in sys.modules and "airies.voice.factory" in sys.modules,
    "telephony_loaded": "airies.telephony.service" in sys.modules,
    "turn_pipeline_loaded": "airies.conversations.turns" in sys.modules,
    "relay_verifier_built": None if voice_service is None else voice_service.relay_verifier is not None,
    "unused_at_init": sorted(m for m in UNUSED_AT_INIT if m in sys.modules),
}))
"""


# What no function's init has a use for: Powertools' batch utility (every event source's data classes; SQS batches
# are airies.core.sqs_batch), SQLite's dialect on PostgreSQL, the agents API's request and response bodies.
UNUSED_AT_INIT = ("aws_lambda_powertools.utilities.batch", "sqlalchemy.dialects.sqlite", "airies.agents.schemas")
POSTGRESQL_URL = "postgresql+pg8000://postgres@127.0.0.1:5432/postgres"  # an init creates the engine, connects not


def _init(function: str, initialization: str, database_url: str = "sqlite:///:memory:") -> dict[str, object]:
    spec, ctx = resolve_function(function)
    env = {key: value for key, value in function_environment(spec, ctx).items() if value is not None}
    env.update(
        {
            "PATH": "/usr/bin:/bin",
            "AWS_LAMBDA_INITIALIZATION_TYPE": initialization,
            "AIRIES_STAGE": "snapshot-test",  # a deployed stage: the local one would create its table while building
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "DATABASE_URL": database_url,
        }
    )
    paths = [str(path) for path in (*spec.layer_dirs, spec.code_uri)]
    code = f"PATHS = {paths!r}\nHANDLER = {str(spec.module_path)!r}\nUNUSED_AT_INIT = {UNUSED_AT_INIT!r}\n{PROBE}"
    completed = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return dict(json.loads(completed.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("function", ["ApiFunction", "VoiceConnectFunction", "VoiceMessageFunction"])
def test_a_snapshot_holds_what_an_on_demand_init_leaves_to_first_use(function: str) -> None:
    on_demand = _init(function, "on-demand")
    snapshot = _init(function, "snap-start")
    assert on_demand["secret_reader_built"] is False and snapshot["secret_reader_built"] is True
    assert snapshot["boto3_imported"] is True
    if function == "ApiFunction":
        assert on_demand["capabilities_built"] == 0 and on_demand["boto3_imported"] is False
        assert snapshot["capabilities_built"] == len(CAPABILITIES)
    if function == "VoiceMessageFunction":  # a turn's engines: at the first turn, or in the snapshot
        assert on_demand["turn_engines_loaded"] is False and snapshot["turn_engines_loaded"] is True
    if function == "VoiceConnectFunction":  # the service in the snapshot checks a phone relay's handshake
        assert on_demand["relay_verifier_built"] is None and snapshot["relay_verifier_built"] is True
    if function == "VoiceMessageFunction":
        assert snapshot["relay_verifier_built"] is False


@pytest.mark.parametrize(
    ("function", "loads_telephony"),
    [("VoiceConnectFunction", True), ("VoiceMessageFunction", False), ("VoiceDisconnectFunction", False)],
)
def test_only_the_connect_function_loads_the_telephony_capability(function: str, loads_telephony: bool) -> None:
    """A phone relay's handshake is checked in $connect alone; the other voice functions' inits go without it."""
    assert _init(function, "on-demand")["telephony_loaded"] is loads_telephony


@pytest.mark.parametrize(
    ("function", "runs_turns"),
    [("VoiceConnectFunction", False), ("VoiceMessageFunction", True), ("VoiceDisconnectFunction", False)],
)
@pytest.mark.parametrize("initialization", ["on-demand", "snap-start"])
def test_only_the_message_function_loads_the_turn_pipeline(
    function: str, runs_turns: bool, initialization: str
) -> None:
    """$connect and $disconnect run no turn: neither their init nor the service built into a snapshot loads it."""
    assert _init(function, initialization)["turn_pipeline_loaded"] is runs_turns


@pytest.mark.parametrize("function", sorted(function_specs(load_template(DEFAULT_TEMPLATE))))
def test_no_init_loads_what_no_function_uses(function: str) -> None:
    assert _init(function, "on-demand", POSTGRESQL_URL)["unused_at_init"] == []
