"""The document metrics the dashboard reads: one count per document that ended ``ready`` or ``failed``, wherever it
was processed (an S3 upload's worker, the state machine's tasks, an inline upload in the API)."""

from __future__ import annotations

from airies.core.metrics import MonitoringService

DOCUMENTS_INGESTED = "DocumentsIngested"
DOCUMENTS_FAILED = "DocumentsFailed"
OUTCOME_METRICS = {"ready": DOCUMENTS_INGESTED, "failed": DOCUMENTS_FAILED}


class DocumentMetrics:
    def __init__(self, monitoring: MonitoringService) -> None:
        self.monitoring = monitoring

    def outcome(self, status: str) -> None:
        """A document's status after processing: ready and failed are counted, anything else (still processing,
        handed to the state machine, skipped) is not."""
        name = OUTCOME_METRICS.get(status)
        if name is not None:
            self.monitoring.increment_counter(name)
