"""benchmarks/vs_pipecat/analysis.py on synthetic turns: what a turn's overhead is, percentiles, ratios, the table."""

from __future__ import annotations

import subprocess
from typing import Any

from airies.core.config import PROJECT_ROOT
from benchmarks.vs_pipecat import analysis
from benchmarks.vs_pipecat.reply import FIRST_SENTENCE_END, REPLY, REPLY_TOKENS

MS = 1_000_000  # ns


def turn(system: str, route: str, tag: str, *, overhead: float, end: float = 10.0, cpu: float = 50.0) -> dict[str, Any]:
    t0 = 10_000 * MS
    return {
        "system": system,
        "route": route,
        "tag": tag,
        "user_text": f"Turn {tag}: where is my order?",
        "discard": False,
        "t0_ns": t0,
        "first_audio_ns": t0 + int((515 + overhead) * MS),
        "last_audio_ns": t0 + int((935 + end) * MS),
        "llm_call_ns": t0 + 2 * MS,
        "cpu_ms": cpu,
    }


def server(row: dict[str, Any], messages: int) -> dict[str, Any]:
    return {
        "user": row["user_text"],
        "n_messages": messages,
        "t_arrival_ns": row["t0_ns"] + 5 * MS,
        "t_done_ns": row["t0_ns"] + 950 * MS,
    }


def test_the_injected_latencies_follow_the_reply() -> None:
    assert len(REPLY_TOKENS) == 40 and REPLY_TOKENS[FIRST_SENTENCE_END] == "."
    assert REPLY.startswith("Sure, I can definitely help you with that order today. It shipped")
    assert analysis.INJECTED_FIRST_AUDIO_MS == 250 + 11 * 15 + 100
    assert analysis.INJECTED_LAST_AUDIO_MS == 250 + 39 * 15 + 100


def test_a_turns_overhead_is_what_came_on_top_of_the_injected_latencies() -> None:
    row = turn("A", "text", "x", overhead=42.5, end=300.0, cpu=120.0)
    row["critical_aws"] = {"round_trips": 4, "waited_ms": 30.0, "assumed_ms": 35.0}
    metrics = analysis.turn_metrics(row, server(row, 42))
    assert metrics["overhead_ms"] == 42.5
    assert metrics["end_overhead_ms"] == 300.0
    assert metrics["to_llm_call_ms"] == 2.0 and metrics["to_llm_request_ms"] == 5.0
    assert metrics["first_audio_before_llm_done"] is True
    assert metrics["projected_overhead_ms"] == 42.5 - 30.0 + 35.0
    assert metrics["n_messages"] == 42


def test_collect_groups_by_system_route_and_request_size_and_leaves_out_warm_up_and_broken_turns() -> None:
    rows = [turn("A", "text", f"a{i}", overhead=50) for i in range(3)] + [turn("P", "text", "p0", overhead=20)]
    lines = [server(r, 4) for r in rows]
    rows[0]["discard"] = True  # a block's first turn
    rows[1]["first_audio_ns"] = None  # no audio came back
    broken = turn("A", "audio", "e0", overhead=50) | {"error": "internal_error"}
    lost = turn("P", "text", "p1", overhead=20)  # the server never saw its request
    cells, incomplete = analysis.collect([*rows, broken, lost], [*lines, server(broken, 4)])
    assert sorted(cells) == ["A.text.4", "P.text.4"]
    assert len(cells["A.text.4"]) == 1 and len(cells["P.text.4"]) == 1
    assert sorted(incomplete) == ["a1", "e0", "p1"]


def test_stats_are_nearest_rank_percentiles_and_the_maximum() -> None:
    figures = analysis.stats([float(v) for v in range(100, 0, -1)] + [None])
    assert figures == {"n": 100, "p50": 50.0, "p95": 95.0, "max": 100.0}
    assert analysis.stats([None]) is None


def test_ratio_needs_a_positive_baseline() -> None:
    assert analysis.ratio(60.0, 30.0) == 2.0
    assert analysis.ratio(10.0, 30.0) == 0.33
    assert (
        analysis.ratio(10.0, 0.0) is None and analysis.ratio(10.0, -2.0) is None and analysis.ratio(None, 1.0) is None
    )


def synthetic_summary() -> dict[str, Any]:
    rows = [turn("A", "text", f"a{i}", overhead=40 + i, end=300, cpu=200) for i in range(20)]
    rows += [turn("A", "audio", f"b{i}", overhead=60 + i, end=300, cpu=200) for i in range(20)]
    rows += [turn("P", "text", f"p{i}", overhead=20 + i / 2, end=10, cpu=100) for i in range(20)]
    rows += [turn("P", "text", f"q{i}", overhead=30, end=10, cpu=100) for i in range(5)]
    lines = [server(r, 202 if r["tag"].startswith("q") else 4) for r in rows]
    cells, incomplete = analysis.collect(rows, lines)
    assert not incomplete
    return analysis.summarize(cells)


def test_summary_compares_each_airies_cell_with_pipecat_at_the_same_request_size() -> None:
    summary = synthetic_summary()
    assert summary["A.text.4"]["overhead_ms"] == {"n": 20, "p50": 49.0, "p95": 58.0, "max": 59.0}
    assert summary["P.text.4"]["overhead_ms"] == {"n": 20, "p50": 24.5, "p95": 29.0, "max": 29.5}
    assert summary["A.text.4"]["ratio_to_pipecat"] == {
        "overhead_p50": 2.0,
        "overhead_p95": 2.0,
        "end_overhead_p50": 30.0,
        "cpu_p50": 2.0,
    }
    assert summary["A.audio.4"]["ratio_to_pipecat"]["overhead_p50"] == round(69 / 24.5, 2)
    assert "ratio_to_pipecat" not in summary["P.text.202"]  # Pipecat is the baseline, and no Airies cell has 202
    assert summary["A.text.4"]["first_audio_before_llm_done"] == "20/20"


def test_table_has_one_row_per_airies_cell_beside_pipecat() -> None:
    lines = analysis.table(synthetic_summary()).splitlines()
    assert len(lines) == 4  # header, rule, text and audio at 4 messages (202 has no Airies cell)
    assert lines[2] == (
        "| 4 | audio | 69.0 / 78.0 / 79.0 | 24.5 / 29.0 / 29.5 | 2.82× | 2.69× | 300.00 / 10.00 | 200.00 / 100.00 "
        "| 20 / 20 |"
    )
    assert lines[3].startswith("| 4 | text | 49.0 / 58.0 / 59.0 | 24.5 / 29.0 / 29.5 | 2.00× | 2.00× |")


def test_a_baseline_checkout_is_compared_with_pipecat_and_listed_beside_airies() -> None:
    rows = [turn("B", "text", f"c{i}", overhead=80 + i, end=600, cpu=300) for i in range(20)]
    rows += [turn("A", "text", "a", overhead=40)]
    rows += [turn("P", "text", f"p{i}", overhead=20 + i / 2, end=10, cpu=100) for i in range(20)]
    cells, _ = analysis.collect(rows, [server(r, 4) for r in rows])
    summary = analysis.summarize(cells)
    assert summary["B.text.4"]["ratio_to_pipecat"]["overhead_p95"] == round(98 / 29, 2)  # nearest-rank p95s
    lines = analysis.table(summary).splitlines()
    assert [line.split(" | ")[1] for line in lines[2:]] == ["text", "text (baseline)"]
    assert analysis.breakdown(summary).splitlines()[3].startswith("| Airies baseline text 4 |")


def test_breakdown_lists_every_cell_with_airies_aws_figures() -> None:
    lines = analysis.breakdown(synthetic_summary()).splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == [
        "| Airies audio 4",
        "| Airies text 4",
        "| Pipecat text 4",
        "| Pipecat text 202",
    ]
    assert lines[4] == "| Pipecat text 4 | 2.00 | 5.00 | – | – | – |"


def test_make_bench_pipecat_passes_the_knobs_and_keeps_pipecat_in_its_own_environment() -> None:
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert "PIPECAT_VERSION := 1.14.0" in makefile and "'pipecat-ai[openai]==$(PIPECAT_VERSION)'" in makefile
    assert ".venv-pipecat/" in (PROJECT_ROOT / ".gitignore").read_text().splitlines()
    dry = subprocess.run(
        ["make", "-n", "bench-pipecat", "TURNS=2", "ROUNDS=1", "MAX_LOAD=100"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert dry.returncode == 0, dry.stderr
    commands = " ".join(dry.stdout.replace("\\\n", " ").split())
    assert "-m benchmarks.vs_pipecat --pipecat-python .venv-pipecat/bin/python --turns 2 --rounds 1 --max-load 100" in (
        commands
    )
    assert "pipecat" not in (PROJECT_ROOT / "pyproject.toml").read_text().lower()
