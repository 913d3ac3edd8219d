"""Shared helpers: fresh-process timing, percentiles, machine facts, JSON results under benchmarks/results/.

A benchmark module is ``benchmarks/bench_<name>.py`` with ``run(args) -> dict``. The dict holds its figures and a
``targets`` list of ``{"name", "value", "limit", "unit", "ok"}``; the harness prints and saves it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100.0 * len(ordered) + 0.4999999)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def fresh_process_ms(code: str, *, env: dict[str, str] | None = None, python: str = sys.executable) -> float:
    """Run ``code`` in a new interpreter; it must print the milliseconds it measured as its last stdout line."""
    completed = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    return float(completed.stdout.strip().splitlines()[-1])


def timed_snippet(setup_paths: Sequence[str], body: str) -> str:
    """Child code: put ``setup_paths`` first on sys.path, time ``body`` (statements), print ms."""
    lines = ["import sys, time"]
    lines += [f"sys.path.insert(0, {path!r})" for path in reversed(list(setup_paths))]
    lines += ["_t0 = time.perf_counter()", body, "print((time.perf_counter() - _t0) * 1000.0)"]
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        **payload,
    }
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def latency_stats(values: Sequence[float]) -> dict[str, float]:
    """p50, p95 and mean of latencies in milliseconds, to 3 decimals."""
    return {
        "p50_ms": round(percentile(values, 50), 3),
        "p95_ms": round(percentile(values, 95), 3),
        "mean_ms": round(statistics.fmean(values), 3),
    }


def target(name: str, value: float, limit: float, unit: str, *, digits: int = 3) -> dict[str, Any]:
    """One target for the results: ``value`` (rounded to ``digits``) is ok when at most ``limit``."""
    return {"name": name, "value": round(value, digits), "limit": limit, "unit": unit, "ok": value <= limit}


# --- DynamoDB item sizes (what a read or write unit is billed on) ------------------------------------------------
def _number_bytes(text: str) -> int:
    digits = text.lstrip("-").replace(".", "").strip("0") or "0"
    return math.ceil(len(digits) / 2) + 1


def value_bytes(value: dict[str, Any]) -> int:
    """Size of one attribute value as DynamoDB bills it (wire format, e.g. ``{"S": "x"}``)."""
    kind, inner = next(iter(value.items()))
    if kind == "S":
        return len(inner.encode())
    if kind == "N":
        return _number_bytes(inner)
    if kind == "B":
        return len(inner)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode()) for s in inner)
    if kind == "NS":
        return sum(_number_bytes(n) for n in inner)
    if kind == "BS":
        return sum(len(b) for b in inner)
    if kind == "L":
        return 3 + sum(1 + value_bytes(v) for v in inner)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + value_bytes(v) for k, v in inner.items())
    raise ValueError(f"unknown DynamoDB type {kind}")


def item_bytes(item: dict[str, Any]) -> int:
    """Size of an item: attribute names plus values."""
    return sum(len(name.encode()) + value_bytes(value) for name, value in item.items())
