"""Makefile, .ci/run, samconfig.toml and the benchmark harness: the contracts other people rely on."""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import tomllib
from importlib.metadata import metadata

import pytest

from airies.core.config import PROJECT_ROOT
from benchmarks import harness
from benchmarks.__main__ import discover


def _make_dry_run(target: str) -> str:
    result = subprocess.run(
        ["make", "-n", target], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_test_lints_and_runs_pytest() -> None:
    commands = _make_dry_run("test")
    assert "ruff check" in commands and "ruff format --check" in commands
    assert "cfn-lint template.yaml" in commands
    assert "pytest" in commands


def test_make_run_migrates_and_serves() -> None:
    commands = _make_dry_run("run")
    assert "airies.migrations.runner" in commands
    assert "airies.local.server" in commands


@pytest.mark.parametrize("target", ["bench", "lint", "clean", "build", "install", "tools"])
def test_other_targets_exist(target: str) -> None:
    _make_dry_run(target)


def test_ci_script_is_strict_and_runs_make_test() -> None:
    script = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in script
    assert "make test" in script
    assert script.index("make test") < script.index("make build")
    assert "pg_ctlcluster --skip-systemctl-redirect" in script
    assert "pg_isready -h 127.0.0.1" in script
    assert "espeak-ng" in script
    syntax = subprocess.run(["bash", "-n", str(PROJECT_ROOT / ".ci" / "run")], capture_output=True, check=False)
    assert syntax.returncode == 0


def test_samconfig_has_every_stage_of_the_template() -> None:
    config = tomllib.loads((PROJECT_ROOT / "samconfig.toml").read_text())
    for env, stage in (("dev", "dev"), ("staging", "staging"), ("prod", "prod")):
        deploy = config[env]["deploy"]["parameters"]
        assert f'Stage="{stage}"' in deploy["parameter_overrides"]
        assert deploy["stack_name"] == f"airies-{stage}"
        assert "CAPABILITY_IAM" in deploy["capabilities"]


def test_benchmark_modules_are_discovered() -> None:
    assert {"cold_start", "api_warm"} <= set(discover())


def test_percentiles_use_nearest_rank() -> None:
    values = list(range(1, 101))
    assert harness.percentile(values, 50) == 50
    assert harness.percentile(values, 95) == 95
    assert harness.percentile(values, 100) == 100
    assert harness.percentile([7.0], 95) == 7.0
    assert harness.median([3, 1, 2]) == 2
    with pytest.raises(ValueError):
        harness.percentile([], 50)


def test_targets_and_results(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert harness.target("x", 2.9, 3.0, "x")["ok"] is True
    assert harness.target("x", 3.1, 3.0, "x")["ok"] is False
    monkeypatch.setattr(harness, "RESULTS_DIR", tmp_path)
    path = harness.write_result("demo", {"value": 1})
    text = path.read_text()
    assert '"benchmark": "demo"' in text and '"nproc"' in text


def test_fresh_process_timing_runs_a_real_child() -> None:
    code = harness.timed_snippet([], "import json")
    assert harness.fresh_process_ms(code) >= 0.0
    with pytest.raises(RuntimeError):
        harness.fresh_process_ms("raise SystemExit(3)")


def test_cold_start_benchmark_runs_end_to_end() -> None:
    from benchmarks import bench_cold_start

    result = bench_cold_start.run(argparse.Namespace(runs=1))
    assert result["baseline"]["median_ms"] > 0
    assert "ApiFunction" in result["functions"]
    assert {t["name"] for t in result["targets"]} >= {"ApiFunction cold init / its stack's floor"}
    api = result["functions"]["ApiFunction"]
    assert api["floor"] == bench_cold_start.API_FLOOR
    assert result["functions"]["VoiceConnectFunction"]["floor"] == bench_cold_start.DB_FLOOR
    assert api["ratio_to_floor"] == round(api["median_ms"] / result["floors"][api["floor"]]["median_ms"], 2)


IMPORTTIME = """\
import time: self [us] | cumulative | imported package
import time:       100 |        100 |       numpy.core
import time:       200 |       5300 |     numpy
import time:      3000 |       8300 |   airies.voice.audio.codecs
import time:        50 |         50 |   json
import time:      2500 |      10850 | airies.api.app
import time:      4000 |       4000 | fastapi
"""


def test_importtime_attributes_third_party_cost_to_our_importers() -> None:
    from benchmarks import importtime

    roots = importtime.parse(IMPORTTIME)
    assert [r.name for r in roots] == ["airies.api.app", "fastapi"]
    assert [c.name for c in roots[0].children] == ["airies.voice.audio.codecs", "json"]
    entries = importtime.third_party_entries(roots)
    assert entries == [
        {"importer": "airies.voice.audio.codecs", "module": "numpy", "ms": 5.3},
        {"importer": "<handler>", "module": "fastapi", "ms": 4.0},
    ]
    assert importtime.first_party_costs(roots) == [
        {"module": "airies.voice.audio.codecs", "self_ms": 3.0},
        {"module": "airies.api.app", "self_ms": 2.5},
    ]


def test_every_pinned_extra_exists_in_its_package() -> None:
    """pip only warns about an extra a package does not provide ("moto 5.2.5 does not provide the extra
    'apigatewaymanagementapi'") and installs nothing for it: every extra we ask for must be a real one."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    pinned = list(project["dependencies"])
    for group in project["optional-dependencies"].values():
        pinned.extend(group)
    checked = 0
    for line in pinned:
        name, extras = re.match(r"^([A-Za-z0-9_.-]+)(?:\[([^\]]*)\])?", line).groups()  # type: ignore[union-attr]
        if not extras or name == "airies":
            continue
        wanted = {extra.strip().lower() for extra in extras.split(",")}
        provided = {extra.lower() for extra in metadata(name).get_all("Provides-Extra") or []}
        assert wanted <= provided, (name, sorted(wanted - provided))
        checked += 1
    assert checked >= 1  # moto's service extras at least


def test_moto_serves_every_aws_api_the_local_stack_uses() -> None:
    """The API Gateway management API (WebSocket post_to_connection) has no extra: it is in moto's core."""
    for service in ("s3", "sqs", "dynamodb", "stepfunctions", "apigatewaymanagementapi"):
        importlib.import_module(f"moto.{service}")
