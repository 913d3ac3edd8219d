"""Cold init of every function in template.yaml, beside its stack's import floor and ``import boto3``, in one run.

Each sample is a fresh interpreter that times, with ``perf_counter``, the import + module-level init of the
function's handler file (exactly what Lambda's init phase runs before the first invoke; interpreter start-up is
not included, on either side). Environment: the function's template env resolved for local use
(infra/env/local.json) with a PostgreSQL DATABASE_URL (the engine does not connect at init, but the pg8000
dialect loads as in production). The Secrets Manager fetch that production does at init is not included.

The interpreter is the one in AIRIES_BENCH_LAMBDA_PYTHON (``make bench`` builds .venv-lambda with exactly the layers'
requirements and boto3, as on Lambda), else this one: a development environment holds packages Lambda does not
(rich, click, pygments), which some libraries import when present (httpx imports rich for its CLI).

Target: every function within 1.3x of its stack's floor (what FastAPI + Mangum, or a database function's
SQLAlchemy ORM + settings + Powertools cost to import before any of our code runs), measured in the same run.
Bytecode caches are warm (one discarded warm-up run): see docs/benchmarks.md for what that means on Lambda.

For the functions with SnapStart, also: the snapshot's init (a primed function builds its service there, which a
restored container's first invocation then does not) and the after-restore hooks a restored container runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from airies.core.bootstrap import LAMBDA_RUNTIME_API
from airies.local.deploy import snapstart_functions
from benchmarks import harness, importtime

DEFAULT_RUNS = 7
TARGET_RATIO_TO_FLOOR = 1.3
API_FUNCTIONS = {"ApiFunction"}  # measured against the API stack's floor; every other function the database one's
# What the design's fixed stack costs to import before any of our code runs (measured beside the functions): the
# API needs FastAPI + Mangum + the ORM + settings + the Powertools logger; every other function the last three.
FLOORS = {
    "floor: API stack": "import fastapi, mangum, sqlalchemy.orm, pydantic_settings; "
    "from aws_lambda_powertools import Logger",
    "floor: DB function stack": "import sqlalchemy.orm, pydantic_settings; from aws_lambda_powertools import Logger",
}
API_FLOOR, DB_FLOOR = FLOORS
# A handler pauses the garbage collector before its imports (airies.core.bootstrap), the stack's included: the
# floors again with the collector paused, reported beside the target's floors to show what of a function's gain is
# in the stack's own imports.
PAUSED_FLOORS = {f"{name}, collector paused": f"import gc; gc.disable(); {stmt}" for name, stmt in FLOORS.items()}
LAMBDA_PYTHON = os.environ.get("AIRIES_BENCH_LAMBDA_PYTHON") or sys.executable
BENCH_DATABASE_URL = os.environ.get(
    "AIRIES_BENCH_DATABASE_URL", "postgresql+pg8000://postgres@127.0.0.1:5432/airies_bench_cold"
)


def _function_env(spec: Any, ctx: Any) -> dict[str, str]:
    from airies.local.template import function_environment

    env = dict(os.environ)
    for key, value in function_environment(spec, ctx).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env["DATABASE_URL"] = BENCH_DATABASE_URL
    # Set on Lambda for its runtime client. A handler's init ends by freezing what it built out of the garbage
    # collector's sight there (airies.core.bootstrap); elsewhere its first collection would walk all of it later,
    # after the clock stops.
    env[LAMBDA_RUNTIME_API] = "127.0.0.1:9001"
    env.pop("AWS_ENDPOINT_URL", None)
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")  # Lambda sets it
    env.setdefault("AWS_ACCESS_KEY_ID", "testing")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    return env


HANDLER_LOAD = [  # the handler file's import and module-level init, as Lambda's init phase runs them
    "import importlib.util",
    "_spec = importlib.util.spec_from_file_location('_cold_handler', {path!r})",
    "_mod = importlib.util.module_from_spec(_spec)",
    "_spec.loader.exec_module(_mod)",
]


def _load_lines(spec: Any) -> list[str]:
    return [line.format(path=str(spec.module_path)) for line in HANDLER_LOAD]


def _handler_snippet(spec: Any) -> str:
    return harness.timed_snippet([*(str(p) for p in spec.layer_dirs), str(spec.code_uri)], "\n".join(_load_lines(spec)))


# SnapStart: Lambda runs a function's init once per published version, into the snapshot, with
# AWS_LAMBDA_INITIALIZATION_TYPE=snap-start (a primed function builds its service then); a restored container runs
# only the after-restore hooks before its first invocation. Measured beside the same init as an on-demand one, in
# the same environment, interleaved: the difference is what the snapshot holds built. AIRIES_STAGE names a deployed
# stage, as on Lambda (a local stage would create its DynamoDB table while building). A stand-in
# snapshot_restore_py collects the hooks.
SNAPSHOT_INITIALIZATIONS = ("on-demand", "snap-start")
DEPLOYED_STAGE_ENV = {"AIRIES_STAGE": "bench"}


# What a container's first database connection on AWS builds before it reads the database secret (boto3, a session,
# the Secrets Manager client): in the snapshot for a primed function, in the first request otherwise.
FIRST_SECRET_READ = ["from airies.core import aws", "aws.secrets_provider()"]


def _snapshot_snippet(spec: Any) -> str:
    """Child code: the snapshot's init, the restore hooks, then what the first secret read builds; prints the three
    in ms, one per line."""
    return "\n".join(
        [
            "import sys, time, types",
            *(
                f"sys.path.insert(0, {str(p)!r})"
                for p in reversed([*(str(d) for d in spec.layer_dirs), str(spec.code_uri)])
            ),
            "_hooks = []",
            "sys.modules['snapshot_restore_py'] = types.SimpleNamespace(register_after_restore=_hooks.append)",
            "_t0 = time.perf_counter()",
            *_load_lines(spec),
            "_t1 = time.perf_counter()",
            "for _hook in _hooks: _hook()",
            "_t2 = time.perf_counter()",
            *FIRST_SECRET_READ,
            "print((_t1 - _t0) * 1000.0)",
            "print((_t2 - _t1) * 1000.0)",
            "print((time.perf_counter() - _t2) * 1000.0)",
        ]
    )


def _snapshot_ms(spec: Any, env: dict[str, str], initialization: str) -> tuple[float, float, float]:
    completed = subprocess.run(
        [LAMBDA_PYTHON, "-c", _snapshot_snippet(spec)],
        capture_output=True,
        text=True,
        env={**env, **DEPLOYED_STAGE_ENV, "AWS_LAMBDA_INITIALIZATION_TYPE": initialization},
        cwd=harness.ROOT,
        timeout=120,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"snapshot init failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    init_ms, hooks_ms, secret_read_ms = completed.stdout.strip().splitlines()[-3:]
    return float(init_ms), float(hooks_ms), float(secret_read_ms)


def run(args: Any) -> dict[str, Any]:
    from airies.local.template import function_specs, local_context

    runs = getattr(args, "runs", None) or DEFAULT_RUNS
    ctx = local_context()
    specs = function_specs(ctx.template)
    baseline_code = harness.timed_snippet([], "import boto3")
    jobs: dict[str, tuple[str, dict[str, str] | None]] = {"import boto3": (baseline_code, None)}
    for name, statement in {**FLOORS, **PAUSED_FLOORS}.items():  # the fixed stack's own imports, before our code
        jobs[name] = (harness.timed_snippet([], statement), None)
    for logical_id, spec in specs.items():
        jobs[logical_id] = (_handler_snippet(spec), _function_env(spec, ctx))

    # Lambda runs the layer's precompiled .pyc (layers/common/Makefile): compile ours too, since a shell with
    # PYTHONDONTWRITEBYTECODE=1 would otherwise recompile every airies module in every sample.
    for path in (ctx.root / "layers", ctx.root / "functions"):
        subprocess.run([LAMBDA_PYTHON, "-m", "compileall", "-q", str(path)], check=True, capture_output=True)
    print(f"  interpreter: {LAMBDA_PYTHON}")
    for code, env in jobs.values():  # warm-up, discarded
        harness.fresh_process_ms(code, env=env, python=LAMBDA_PYTHON)
    samples: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(runs):  # interleaved, so drift on a shared machine hits every series alike
        for name, (code, env) in jobs.items():
            samples[name].append(harness.fresh_process_ms(code, env=env, python=LAMBDA_PYTHON))

    snapstart = [lid for lid in snapstart_functions(ctx.template) if lid in specs]
    snapshots: dict[tuple[str, str], list[tuple[float, float]]] = {
        (lid, kind): [] for lid in snapstart for kind in SNAPSHOT_INITIALIZATIONS
    }
    for _ in range(runs):
        for logical_id in snapstart:
            for kind in SNAPSHOT_INITIALIZATIONS:
                sample = _snapshot_ms(specs[logical_id], jobs[logical_id][1] or {}, kind)
                snapshots[(logical_id, kind)].append(sample)

    baseline = harness.median(samples["import boto3"])
    print(f"  {'':<28}{'median ms':>10}{'min ms':>9}{'x boto3':>9}{'x floor':>9}")
    print(f"  {'import boto3 (baseline)':<28}{baseline:>10.1f}{min(samples['import boto3']):>9.1f}{1.0:>9.2f}")
    floors: dict[str, Any] = {}
    for name in {**FLOORS, **PAUSED_FLOORS}:
        med = harness.median(samples[name])
        floors[name] = {"median_ms": round(med, 1), "ratio_to_boto3": round(med / baseline, 2)}
        unpaused = floors[name.removesuffix(", collector paused")]["median_ms"]  # the floor itself: 1.00
        print(f"  {name:<28}{med:>10.1f}{min(samples[name]):>9.1f}{med / baseline:>9.2f}{med / unpaused:>9.2f}")
    functions: dict[str, Any] = {}
    targets = []
    for logical_id in specs:
        med = harness.median(samples[logical_id])
        floor_name = API_FLOOR if logical_id in API_FUNCTIONS else DB_FLOOR
        to_floor = med / floors[floor_name]["median_ms"]
        functions[logical_id] = {
            "median_ms": round(med, 1),
            "min_ms": round(min(samples[logical_id]), 1),
            "samples_ms": [round(v, 1) for v in samples[logical_id]],
            "ratio_to_boto3": round(med / baseline, 2),
            "floor": floor_name,
            "ratio_to_floor": round(to_floor, 2),
            "target_ratio": TARGET_RATIO_TO_FLOOR,
        }
        print(f"  {logical_id:<28}{med:>10.1f}{min(samples[logical_id]):>9.1f}{med / baseline:>9.2f}{to_floor:>9.2f}")
        targets.append(
            harness.target(f"{logical_id} cold init / its stack's floor", to_floor, TARGET_RATIO_TO_FLOOR, "x")
        )
    if snapstart:
        print(
            f"  SnapStart: {'':<17}{'on-demand init':>15}{'snapshot init':>15}{'restore hooks':>15}"
            f"{'secret read, on-demand':>24}{'after restore':>15}  (median ms)"
        )
    for logical_id in snapstart:
        on_demand = snapshots[(logical_id, "on-demand")]
        restored = snapshots[(logical_id, "snap-start")]
        on_demand_ms = harness.median([sample[0] for sample in on_demand])
        init_ms = harness.median([sample[0] for sample in restored])
        hooks_ms = harness.median([sample[1] for sample in restored])
        secret_on_demand_ms = harness.median([sample[2] for sample in on_demand])
        secret_restored_ms = harness.median([sample[2] for sample in restored])
        functions[logical_id]["snapstart"] = {
            "on_demand_init_median_ms": round(on_demand_ms, 1),
            "snapshot_init_median_ms": round(init_ms, 1),
            "built_ahead_ms": round(init_ms - on_demand_ms, 1),
            "restore_hooks_median_ms": round(hooks_ms, 1),
            # what the first database connection builds before reading the secret, in the first request
            "first_secret_read_setup_on_demand_median_ms": round(secret_on_demand_ms, 1),
            "first_secret_read_setup_after_restore_median_ms": round(secret_restored_ms, 1),
        }
        print(
            f"  {logical_id:<28}{on_demand_ms:>15.1f}{init_ms:>15.1f}{hooks_ms:>15.1f}"
            f"{secret_on_demand_ms:>24.1f}{secret_restored_ms:>15.1f}"
        )
    for logical_id, spec in specs.items():  # name the causes of every miss (python -X importtime, one process)
        if functions[logical_id]["ratio_to_floor"] <= TARGET_RATIO_TO_FLOOR:
            continue
        local = {p.stem for p in spec.code_uri.glob("*.py")}
        roots = importtime.profile(jobs[logical_id][0], jobs[logical_id][1], python=LAMBDA_PYTHON)
        why = importtime.third_party_entries(roots, local)[:6]
        own = importtime.first_party_costs(roots)[:4]
        functions[logical_id]["heaviest_imports"] = why
        functions[logical_id]["heaviest_own_modules"] = own
        print(f"  {logical_id} misses its target; heaviest imports by our code:")
        for entry in why:
            print(f"      {entry['ms']:>6.1f} ms  {entry['importer']} -> {entry['module']}")
    return {
        "runs": runs,
        "interpreter": LAMBDA_PYTHON,
        "baseline": {
            "name": "import boto3",
            "median_ms": round(baseline, 1),
            "samples_ms": [round(v, 1) for v in samples["import boto3"]],
        },
        "floors": floors,
        "functions": functions,
        "targets": targets,
    }
