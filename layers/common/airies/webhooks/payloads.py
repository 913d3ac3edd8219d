"""The ``data`` of the conversation events, built from plain values (the conversations capability calls these)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from airies.core.money import format_usd


def _percentile(values: Sequence[float], share: float) -> int | None:
    """Nearest-rank percentile in whole milliseconds; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(share * len(ordered)) - 1)])


def latency_summary(turn_latencies: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """``[{stage: ms}]`` per turn -> ``{"turns": n, stage: {"p50_ms", "p95_ms"}}`` over the turns that measured it."""
    stages = sorted({stage for turn in turn_latencies for stage in turn})
    summary: dict[str, Any] = {"turns": len(turn_latencies)}
    for stage in stages:
        values = [float(turn[stage]) for turn in turn_latencies if turn.get(stage) is not None]
        summary[stage] = {"p50_ms": _percentile(values, 0.5), "p95_ms": _percentile(values, 0.95)}
    return summary


def end_of_call_report(
    *,
    conversation_id: str,
    end_reason: str,
    started_at: datetime,
    ended_at: datetime,
    transcript: Sequence[Mapping[str, Any]],
    cost_by_component: Mapping[str, Decimal],
    turn_latencies: Sequence[Mapping[str, float]] = (),
    recording_urls: Sequence[str] = (),
    analysis: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``data`` of ``conversation.ended``: transcript, end reason, duration, cost (USD decimal strings), latency."""
    total = sum(cost_by_component.values(), Decimal(0))
    return {
        "conversation_id": conversation_id,
        "end_reason": end_reason,
        "started_at": started_at.isoformat(),
        "ended_at": ended_at.isoformat(),
        "duration_seconds": round(max(0.0, (ended_at - started_at).total_seconds()), 3),
        "transcript": [dict(entry) for entry in transcript],
        "cost": {
            "total": format_usd(total),
            "components": {name: format_usd(amount) for name, amount in sorted(cost_by_component.items())},
        },
        "latency": latency_summary(turn_latencies),
        "recording_urls": list(recording_urls),
        "analysis": dict(analysis) if analysis is not None else None,
    }
