"""An SQS batch handled record by record, answered as Lambda's partial batch response (``ReportBatchItemFailures``).

Each record is validated as the function's Parser model (a subclass of Powertools' ``SqsRecordModel``) and handed
to its record handler. A record that does not validate (logged by :func:`airies.core.events.parse_event`, without
its values) or whose handler raises is reported in ``batchItemFailures``: SQS redelivers it alone and, after
``maxReceiveCount``, moves it to the dead-letter queue; the others are deleted. A batch of which every record failed
raises :class:`BatchFailed`, so the invocation counts as an error for the function's alarm, and SQS retries it all.

This is the contract of Powertools' batch utility for SQS. The utility is not used because importing it loads the
data classes of every event source and the Parser models of DynamoDB, Kinesis and Kafka records: about 50 ms of each
consumer's cold start, for none of which an SQS consumer has any use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypedDict, TypeVar

from aws_lambda_powertools.utilities.parser.models import SqsRecordModel

from airies.core.events import MalformedEvent, parse_event
from airies.core.observability import logger

RecordModel = TypeVar("RecordModel", bound=SqsRecordModel)


class BatchItemFailure(TypedDict):
    itemIdentifier: str


class PartialBatchResponse(TypedDict):
    batchItemFailures: list[BatchItemFailure]


class BatchFailed(RuntimeError):
    """Every record of the batch failed, or a failed record has no message id to report it by."""


def process_sqs_batch(
    event: Mapping[str, Any], model: type[RecordModel], record_handler: Callable[[RecordModel], object]
) -> PartialBatchResponse:
    """Each record of the SQS ``event`` parsed as ``model`` and passed to ``record_handler``, in order; the
    message ids of the records that failed."""
    records = event.get("Records") if isinstance(event, Mapping) else None
    if not isinstance(records, list):
        raise MalformedEvent("SQS batch", [{"loc": ["Records"], "msg": "Field required: a list", "type": "missing"}])
    failures: list[BatchItemFailure] = []
    for raw in records:
        message_id = raw.get("messageId") if isinstance(raw, Mapping) else None
        try:
            record_handler(parse_event(model, raw, source=f"SQS record ({model.__name__})"))
        except Exception as exc:  # one record's failure is that record's alone
            # A malformed record was logged by parse_event (where, without its values): no traceback to add.
            logger.warning(
                "SQS record failed", extra={"message_id": message_id}, exc_info=not isinstance(exc, MalformedEvent)
            )
            if not isinstance(message_id, str) or not message_id:
                raise BatchFailed("a failed SQS record has no messageId: the whole batch is retried") from None
            failures.append({"itemIdentifier": message_id})
    if records and len(failures) == len(records):
        raise BatchFailed(f"all {len(records)} records of the batch failed")
    return {"batchItemFailures": failures}
