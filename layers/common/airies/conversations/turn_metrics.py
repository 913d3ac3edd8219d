"""The per-turn metrics the alarms and the dashboard read (docs/deployment.md, "Metrics the code emits").

Emitted through an injected :class:`~airies.core.metrics.MonitoringService` without extra dimensions: Powertools
buffers them and the handler's ``log_metrics`` flushes them as one EMF document per invocation, in the namespace
``Airies/<stage>`` with the only dimension ``service=airies`` (the alarms match exactly that).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airies.core.metrics import MonitoringService

if TYPE_CHECKING:  # only annotations: the API's init (which builds the metrics) does not load the turn pipeline
    from airies.conversations.turns import TurnResult

# latency stage of a turn (TurnResult.latency) -> metric name (milliseconds)
LATENCY_METRICS = {
    "first_audio_ms": "FirstAudioLatency",
    "total_ms": "TurnDuration",
    "stt_ms": "SttLatency",
    "llm_first_token_ms": "LlmFirstTokenLatency",
    "tts_first_byte_ms": "TtsFirstByteLatency",
}
TURNS_COMPLETED = "TurnsCompleted"
TURNS_FAILED = "TurnsFailed"
BARGE_INS = "BargeIns"
PROVIDER_FAILOVERS = "ProviderFailovers"  # LLM requests the router moved to a fallback provider
# statuses of a turn that did not deliver its reply
FAILED_STATUSES = frozenset({"failed"})


class TurnMetrics:
    def __init__(self, monitoring: MonitoringService) -> None:
        self.monitoring = monitoring

    def turn(self, result: TurnResult, *, out_of_time: bool = False) -> None:
        """One finished turn: its latency stages, then whether it completed, failed (a turn cut at the invocation's
        deadline included: it is stored as interrupted, but nobody barged in) or was barged in on."""
        if result.status in ("no_speech", "gone"):
            return  # nothing was answered: no turn to measure
        for stage, name in LATENCY_METRICS.items():
            value = result.latency.get(stage)
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.monitoring.track_histogram(name, float(value))
        if result.status in FAILED_STATUSES or out_of_time:
            self.monitoring.increment_counter(TURNS_FAILED)
        else:
            self.monitoring.increment_counter(TURNS_COMPLETED)
        if result.interrupted and not out_of_time:
            self.monitoring.increment_counter(BARGE_INS)
        failovers = result.usage.get("llm_failovers") or 0
        if failovers:
            self.monitoring.increment_counter(PROVIDER_FAILOVERS, by=failovers)

    def failed(self) -> None:
        """A turn that raised before it had a result (a failed read, engine or config)."""
        self.monitoring.increment_counter(TURNS_FAILED)
