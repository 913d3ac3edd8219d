"""Per-turn overhead of both systems from the drivers' rows and the fake LLM server's timelines.

All timestamps are CLOCK_MONOTONIC nanoseconds taken in three processes on one host. A turn's overhead is
(t1 - t0) minus what was injected on the way to the first audio: 250 ms to the first token, 11 x 15 ms to the token
that closes the first sentence, 100 ms to the TTS's first chunk (515 ms). Both sentence segmenters wait for the
token after the full stop (+15 ms): that wait is inside the overhead of both. End of reply: the last audio, against
250 + 39 x 15 + 100 ms. Percentiles: nearest rank, as in the other benchmarks (``harness.percentile``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from benchmarks.harness import percentile
from benchmarks.vs_pipecat.reply import FIRST_SENTENCE_END, REPLY_TOKENS, TOKEN_MS, TTFT_MS, TTS_MS

INJECTED_FIRST_AUDIO_MS = TTFT_MS + FIRST_SENTENCE_END * TOKEN_MS + TTS_MS  # 515
INJECTED_LAST_AUDIO_MS = TTFT_MS + (len(REPLY_TOKENS) - 1) * TOKEN_MS + TTS_MS  # 935
SYSTEMS = {"A": "Airies", "B": "Airies baseline", "P": "Pipecat"}  # B: another checkout (``--baseline``)


def turn_metrics(row: dict[str, Any], server: dict[str, Any]) -> dict[str, Any]:
    """One measured turn's figures (ms); ``server``: the fake LLM server's line for this turn's request."""
    t0 = row["t0_ns"]

    def since_t0(ns: int | None) -> float | None:
        return None if ns is None else (ns - t0) / 1e6

    first, last = since_t0(row["first_audio_ns"]), since_t0(row["last_audio_ns"])
    assert first is not None and last is not None
    metrics: dict[str, Any] = {
        "n_messages": server["n_messages"],
        "first_audio_ms": first,
        "overhead_ms": first - INJECTED_FIRST_AUDIO_MS,
        "end_overhead_ms": last - INJECTED_LAST_AUDIO_MS,
        "cpu_ms": row["cpu_ms"],
        "to_llm_call_ms": since_t0(row.get("llm_call_ns")),
        "to_llm_request_ms": since_t0(server["t_arrival_ns"]),
        "first_audio_before_llm_done": row["first_audio_ns"] < server["t_done_ns"],
    }
    critical = row.get("critical_aws")
    if critical:  # Airies: AWS round trips the first audio waited for, and the projection at AWS's latencies
        metrics["aws_round_trips"] = critical["round_trips"]
        metrics["aws_waited_ms"] = critical["waited_ms"]
        metrics["projected_overhead_ms"] = metrics["overhead_ms"] - critical["waited_ms"] + critical["assumed_ms"]
    return metrics


def collect(
    rows: Iterable[dict[str, Any]], server_lines: Iterable[dict[str, Any]]
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Measured turns per cell ``<system>.<route>.<messages>`` and the tags of turns that did not complete.

    A row names its request by the user's text (unique per turn); warm-up turns (``discard``) are left out.
    """
    by_user = {line["user"]: line for line in server_lines}
    cells: dict[str, list[dict[str, Any]]] = {}
    incomplete: list[str] = []
    for row in rows:
        if row.get("discard"):
            continue
        server = by_user.get(row["user_text"])
        if server is None or row.get("first_audio_ns") is None or row.get("last_audio_ns") is None or row.get("error"):
            incomplete.append(row["tag"])
            continue
        key = f"{row['system']}.{row['route']}.{server['n_messages']}"
        cells.setdefault(key, []).append(turn_metrics(row, server))
    return cells, incomplete


def stats(values: Sequence[float | None]) -> dict[str, float] | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return {
        "n": len(present),
        "p50": round(percentile(present, 50), 2),
        "p95": round(percentile(present, 95), 2),
        "max": round(max(present), 2),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``; None when the baseline is missing or not positive (no meaningful ratio)."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return round(numerator / denominator, 2)


METRICS = (
    "overhead_ms",
    "end_overhead_ms",
    "cpu_ms",
    "to_llm_call_ms",
    "to_llm_request_ms",
    "aws_round_trips",
    "aws_waited_ms",
    "projected_overhead_ms",
)


def summarize(cells: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Stats per cell, and per Airies cell its ratios against Pipecat's cell of the same context size."""
    summary: dict[str, Any] = {}
    for key, turns in sorted(cells.items()):
        cell: dict[str, Any] = {"turns": len(turns)}
        for metric in METRICS:
            figures = stats([t.get(metric) for t in turns])
            if figures is not None:
                cell[metric] = figures
        cell["first_audio_before_llm_done"] = f"{sum(t['first_audio_before_llm_done'] for t in turns)}/{len(turns)}"
        summary[key] = cell
    for key, cell in summary.items():
        system, _route, messages = key.split(".")
        baseline = next((c for k, c in summary.items() if k.startswith("P.") and k.endswith(f".{messages}")), None)
        if system not in ("A", "B") or baseline is None:
            continue
        cell["ratio_to_pipecat"] = {
            f"overhead_{q}": ratio(cell["overhead_ms"][q], baseline["overhead_ms"][q]) for q in ("p50", "p95")
        } | {
            "end_overhead_p50": ratio(cell["end_overhead_ms"]["p50"], baseline["end_overhead_ms"]["p50"]),
            "cpu_p50": ratio(cell["cpu_ms"]["p50"], baseline["cpu_ms"]["p50"]),
        }
    return summary


def _triple(figures: dict[str, float] | None) -> str:
    return "–" if figures is None else f"{figures['p50']:.1f} / {figures['p95']:.1f} / {figures['max']:.1f}"


def _num(value: float | None, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.2f}{suffix}"


def _pair(figures: dict[str, float]) -> str:
    return f"{figures['p50']:.1f} / {figures['p95']:.1f}"


def _p50(cell: dict[str, Any], metric: str) -> str:
    return _num(cell[metric]["p50"]) if metric in cell else "–"


def table(summary: dict[str, Any]) -> str:
    """The side-by-side as a Markdown table: one row per Airies cell, next to Pipecat's of the same context size."""
    lines = [
        "| messages | Airies route | Airies overhead p50 / p95 / max (ms) | Pipecat p50 / p95 / max (ms) | ratio p50 | "
        "ratio p95 | end of reply p50, Airies / Pipecat (ms) | CPU per turn p50, Airies / Pipecat (ms) | turns |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    airies = sorted(
        (k for k in summary if k.startswith(("A.", "B."))), key=lambda k: (int(k.split(".")[2]), k.split(".")[1], k)
    )
    for key in airies:
        system, route, messages = key.split(".")
        route = route if system == "A" else f"{route} (baseline)"
        cell = summary[key]
        base = next((c for k, c in summary.items() if k.startswith("P.") and k.endswith(f".{messages}")), {})
        ratios = cell.get("ratio_to_pipecat", {})

        lines.append(
            f"| {messages} | {route} | {_triple(cell.get('overhead_ms'))} | {_triple(base.get('overhead_ms'))} | "
            f"{_num(ratios.get('overhead_p50'), '×')} | {_num(ratios.get('overhead_p95'), '×')} | "
            f"{_p50(cell, 'end_overhead_ms')} / {_p50(base, 'end_overhead_ms')} | "
            f"{_p50(cell, 'cpu_ms')} / {_p50(base, 'cpu_ms')} | {cell['turns']} / {base.get('turns', 0)} |"
        )
    return "\n".join(lines)


def breakdown(summary: dict[str, Any]) -> str:
    """Where each cell's time goes (p50 unless said): until the LLM is called and its request reaches the server;
    for Airies, the AWS round trips the first audio waited for and the overhead projected at AWS's usual latencies."""
    lines = [
        "| cell | frame → LLM called (ms) | frame → request at the server (ms) | AWS round trips on the path | "
        "waited on them (ms) | projected overhead p50 / p95 (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for key in sorted(summary, key=lambda k: (int(k.split(".")[2]), k)):
        cell = summary[key]
        system, route, messages = key.split(".")
        projected = cell.get("projected_overhead_ms")
        lines.append(
            f"| {SYSTEMS[system]} {route} {messages} | {_p50(cell, 'to_llm_call_ms')} | "
            f"{_p50(cell, 'to_llm_request_ms')} | {_p50(cell, 'aws_round_trips')} | {_p50(cell, 'aws_waited_ms')} | "
            f"{'–' if projected is None else _pair(projected)} |"
        )
    return "\n".join(lines)
