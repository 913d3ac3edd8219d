"""Run every ``benchmarks/bench_*.py`` (or the ones named): ``python -m benchmarks [cold_start api_warm] [--runs N]``.

Exit status: 1 when a benchmark crashed; with ``--strict`` also when a target was missed (figures on a shared
2-core machine are noisy, so a miss is reported, not failed, by default).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
import traceback

from benchmarks import harness


def discover() -> list[str]:
    import benchmarks

    return sorted(
        info.name.removeprefix("bench_")
        for info in pkgutil.iter_modules(benchmarks.__path__)
        if info.name.startswith("bench_")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {discover()})")
    parser.add_argument(
        "--runs", type=int, default=None, help="fresh-process repetitions (cold-start style benchmarks)"
    )
    parser.add_argument("--requests", type=int, default=None, help="measured requests (warm latency benchmarks)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)

    names = args.names or discover()
    unknown = set(names) - set(discover())
    if unknown:
        parser.error(f"unknown benchmarks {sorted(unknown)}; have {discover()}")

    info = harness.machine_info()
    print(f"machine: {info['nproc']} CPU(s), {info['cpu_model']}, Python {info['python']}, load {info['loadavg_1m']}")
    crashed, missed = [], []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        started = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.bench_{name}")
            result = module.run(args)
        except Exception:
            traceback.print_exc()
            crashed.append(name)
            continue
        result["duration_s"] = round(time.perf_counter() - started, 1)
        path = harness.write_result(name, result)
        for item in result.get("targets", []):
            mark = "ok  " if item["ok"] else "MISS"
            print(f"  [{mark}] {item['name']}: {item['value']} {item['unit']} (target <= {item['limit']})")
            if not item["ok"]:
                missed.append(f"{name}: {item['name']}")
        print(f"  -> {path.relative_to(harness.ROOT)}")

    if crashed:
        print(f"\ncrashed: {crashed}")
    if missed:
        print(f"\nmissed targets: {missed}")
    return 1 if crashed or (missed and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
