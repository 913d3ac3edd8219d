"""Orchestrator: ``python -m benchmarks.vs_pipecat --pipecat-python .venv-pipecat/bin/python [--turns N ...]``.

Per round, per context size, one block per system and route (the order rotates every block, so neither system
always runs first); a block = 1 discarded turn + ``--turns`` measured ones, and starts only once the 1-minute load
average is under ``--max-load``. Warm-up blocks (discarded) first; the Airies long conversation is filled with real
turns before them. Raw rows, the server's timelines and the run log go to ``--out``; the summary to
``benchmarks/results/vs_pipecat.json`` (``harness.write_result``) and, as a table, to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

from benchmarks import harness
from benchmarks.vs_pipecat import analysis

CONTEXTS = (4, 42, 202)  # messages in the LLM request: system + prior messages + the user's turn
ROUTES = ("text", "audio")


class Driver:
    """A worker process speaking one JSON object per line on stdin/stdout; its stderr goes to a log file."""

    def __init__(self, name: str, argv: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env
        )

    def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} driver exited ({self.proc.poll()}); see {self.log.name}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        answer = self.receive()
        if not answer.get("ok"):
            raise RuntimeError(f"{self.name}: {answer.get('error')}; see {self.log.name}")
        return answer

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                stop_child(self.proc)
        self.log.close()


def stop_child(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()  # our own child, by its PID
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_quiet(max_load: float, max_wait_s: float, log: Any) -> float:
    """Wait until the 1-minute load average is under ``max_load``; returns it."""
    started = time.monotonic()
    while (load := os.getloadavg()[0]) >= max_load:
        if time.monotonic() - started > max_wait_s:
            raise SystemExit(f"the load average stayed at or above {max_load} for {max_wait_s:.0f} s ({load})")
        log(f"  waiting: load {load:.2f} >= {max_load}")
        time.sleep(10)
    return load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vs_pipecat")
    parser.add_argument("--pipecat-python", required=True, help="python of a venv with pipecat-ai[openai]==1.14.0")
    parser.add_argument("--turns", type=int, default=16, help="measured turns per block")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-load", type=float, default=1.0, help="a block starts under this 1-min load average")
    parser.add_argument("--max-wait-s", type=float, default=3600)
    parser.add_argument("--contexts", default=",".join(map(str, CONTEXTS)), help="messages per LLM request")
    parser.add_argument("--routes", default=",".join(ROUTES), help="Airies routes: text, audio")
    parser.add_argument("--prefill", type=int, default=None, help="turns of the long conversation (default: enough)")
    parser.add_argument("--warmup", type=int, default=3, help="discarded turns per system, route and context")
    parser.add_argument("--gap-s", type=float, default=0.3, help="pause after each turn")
    parser.add_argument("--out", type=Path, default=harness.RESULTS_DIR / "vs_pipecat")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another Airies checkout (e.g. git worktree add ../airies-base main), measured beside this one",
    )
    args = parser.parse_args(argv)
    contexts = [int(c) for c in args.contexts.split(",")]
    routes = args.routes.split(",")
    pipecat_python = os.path.abspath(args.pipecat_python)  # the drivers run elsewhere; a venv's python is a symlink
    if not set(routes) <= set(ROUTES) or any(c < 4 or c % 2 for c in contexts):
        parser.error("routes are text and audio; contexts are even message counts of at least 4")
    prefill = args.prefill if args.prefill is not None else max(0, (max(contexts) - 2) // 2)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for name in ("rows.jsonl", "server.jsonl", "run.log"):
        (out / name).unlink(missing_ok=True)
    run_log: IO[str] = (out / "run.log").open("a", buffering=1)

    def log(message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        print(line, flush=True)
        run_log.write(line + "\n")

    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    server_log = out / "server.jsonl"
    server_out = (out / "server.out").open("w")
    server = subprocess.Popen(
        [pipecat_python, "-m", "benchmarks.vs_pipecat.fake_llm", "--port", str(port), "--log", str(server_log)],
        stdout=server_out,
        stderr=subprocess.STDOUT,
        cwd=harness.ROOT,
    )
    drivers: list[Driver] = []
    blocks: list[dict[str, Any]] = []
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{base_url}/models", timeout=1).read()
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(f"the fake LLM server exited; see {out / 'server.out'}") from None
                time.sleep(0.1)
        else:
            raise RuntimeError(f"the fake LLM server did not answer in 30 s; see {out / 'server.out'}")
        pipecat = Driver(
            "pipecat",
            [pipecat_python, "-m", "benchmarks.vs_pipecat.pipecat_driver", base_url],
            harness.ROOT,
            out / "pipecat.log",
        )
        drivers.append(pipecat)
        log(f"pipecat ready: {pipecat.receive()}")
        airies = Driver(
            "airies",
            [sys.executable, "-m", "benchmarks.vs_pipecat.airies_driver", base_url],
            harness.ROOT,
            out / "airies.log",
        )
        drivers.append(airies)
        log(f"airies ready: {airies.receive()}")
        airies_drivers = {"A": airies}
        units = [("P", "text")] + [("A", route) for route in routes]
        if args.baseline is not None:
            checkout = args.baseline.resolve()
            env = {**os.environ, "PYTHONPATH": f"{checkout / 'layers' / 'common'}{os.pathsep}{checkout}"}
            baseline = Driver(
                "airies baseline",
                [sys.executable, "-m", "benchmarks.vs_pipecat.airies_driver", base_url],
                checkout,
                out / "airies-baseline.log",
                env,
            )
            drivers.append(baseline)
            log(f"airies baseline ({checkout}) ready: {baseline.receive()}")
            airies_drivers["B"] = baseline
            units += [("B", route) for route in routes]

        def block(system: str, route: str, messages: int, tags: list[str]) -> list[dict[str, Any]]:
            if system == "P":
                command = {"cmd": "block", "tags": tags, "n_prior": messages - 2, "gap_s": args.gap_s}
                rows: list[dict[str, Any]] = pipecat.call(command)["rows"]
                for row in rows:
                    row["route"] = "text"
                return rows
            command = {"cmd": "block", "messages": messages, "route": route, "tags": tags, "gap_s": args.gap_s}
            return list(airies_drivers[system].call(command)["rows"])

        if any(c > 4 for c in contexts):
            for driver in airies_drivers.values():
                started = time.monotonic()
                driver.call({"cmd": "prefill", "turns": prefill})
                log(
                    f"{driver.name}: long conversation filled with {prefill} turns in {time.monotonic() - started:.0f} s"
                )
        for messages in contexts:
            for system, route in units:
                block(system, route, messages, [f"w.{system}.{route}.{messages}.{i}" for i in range(args.warmup)])
        log("warm-up done")

        with (out / "rows.jsonl").open("a") as rows_file:
            for r in range(args.rounds):
                for ci, messages in enumerate(contexts):
                    shift = (r + ci) % len(units)
                    for system, route in units[shift:] + units[:shift]:
                        load = wait_quiet(args.max_load, args.max_wait_s, log)
                        tags = [f"{system}.{route}.{messages}.{r}.{i:02d}" for i in range(args.turns + 1)]
                        started = time.monotonic()
                        rows = block(system, route, messages, tags)
                        info = {
                            "system": system,
                            "route": route,
                            "messages": messages,
                            "round": r,
                            "load_start": round(load, 2),
                            "load_end": round(os.getloadavg()[0], 2),
                            "wall_s": round(time.monotonic() - started, 1),
                        }
                        blocks.append(info)
                        for i, row in enumerate(rows):
                            row.update(system=system, round=r, discard=i == 0)
                            rows_file.write(json.dumps(row) + "\n")
                        rows_file.flush()
                        log(
                            f"block {system} {route} {messages}: load {info['load_start']} -> {info['load_end']}, "
                            f"{info['wall_s']} s"
                        )
    finally:
        for driver in drivers:
            driver.stop()
        stop_child(server)
        server_out.close()
        run_log.close()

    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    server_lines = [json.loads(line) for line in server_log.read_text().splitlines()]
    cells, incomplete = analysis.collect(rows, server_lines)
    summary = analysis.summarize(cells)
    loads = [b["load_start"] for b in blocks] or [0.0]
    info = harness.machine_info()
    print(
        f"\nmachine: {info['nproc']} CPU(s), {info['cpu_model']}, Python {info['python']}; load average at block "
        f"starts {min(loads):.2f}-{max(loads):.2f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
    )
    print(analysis.table(summary))
    print()
    print(analysis.breakdown(summary))
    if incomplete:
        print(f"\nincomplete turns (left out): {incomplete}")
    result = {
        "method": {
            "injected_first_audio_ms": analysis.INJECTED_FIRST_AUDIO_MS,
            "injected_last_audio_ms": analysis.INJECTED_LAST_AUDIO_MS,
            "turns_per_block": args.turns,
            "rounds": args.rounds,
            "max_load": args.max_load,
        },
        "cells": summary,
        "incomplete": incomplete,
        "blocks": blocks,
        "raw": str(out),
    }
    path = harness.write_result("vs_pipecat", result)
    print(f"  -> {path.relative_to(harness.ROOT)} (raw rows in {out})")
    return 1 if incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
