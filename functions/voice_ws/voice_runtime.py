"""Built once per container and shared by the $connect, $default and $disconnect handlers.

$connect and $default run with SnapStart: the service is built while Lambda takes the snapshot (``prime_for_snapshot``
at the end of this module), so a restored container's first frame does not import boto3 and build the clients, and
``after_restore`` gives the built service fresh clients and connections."""

from __future__ import annotations

import gc
import logging

from airies.conversations import live
from airies.conversations.live import WebSocketService
from airies.conversations.service import build_recorder
from airies.conversations.sessions import build_session_store, dynamodb_client
from airies.conversations.turn_metrics import TurnMetrics
from airies.core.aio import reset_event_loops
from airies.core.bootstrap import PerContainer, after_snapstart_restore
from airies.core.config import get_settings
from airies.core.database import get_database
from airies.core.metrics import MonitoringService
from airies.core.observability import logger, metrics
from airies.telephony.relay import RelayHandshake
from airies.webhooks.queue import build_delivery_queue
from airies.webhooks.service import WebhookPublisher, build_webhook_publisher

log = logging.getLogger(__name__)


def build_service() -> WebSocketService:
    settings = get_settings()
    database = get_database(settings)
    built = WebSocketService(
        settings,
        database,
        build_session_store(settings),
        recorder=build_recorder(settings),
        publisher=build_webhook_publisher(settings, database),
        turn_metrics=TurnMetrics(MonitoringService(metrics=metrics, logger=logger)),  # flushed per invocation
        relay_verifier=RelayHandshake(settings, database),  # phone calls: Twilio ConversationRelay
    )
    settle()
    return built


runtime = PerContainer(build_service)


def service() -> WebSocketService:
    return runtime.get()


def settle() -> None:
    """After the cold start, take what it built (modules, SQLAlchemy/pydantic/botocore models) out of the garbage
    collector's sight: a full collection otherwise walks all of it and pauses a turn for 15-60 ms."""
    gc.freeze()


def set_service(value: WebSocketService | None) -> None:
    """The local gateway and tests hand in a service built with their own doubles; the handlers stay the same."""
    runtime.set(value)


def after_restore() -> None:
    """SnapStart: what the snapshot froze is stale after restore: pooled database connections, the boto3 clients
    (DynamoDB state table, S3 recorder, webhook queue, API Gateway Management API: their HTTPS pools and the
    credentials they resolved) and the per-thread event loops. Drop or rebuild them, so the first invocation opens
    fresh ones (the modules, models and parsed configuration the snapshot saved are kept)."""
    live.reset_after_restore()  # management clients, event loops
    reset_event_loops()
    current = runtime.built
    if current is None:
        return
    current.database.dispose()
    try:
        current.store.client = dynamodb_client(current.settings)
    except Exception:  # keep the old client rather than fail the restore; botocore reconnects on error
        log.exception("could not rebuild the DynamoDB client after restore")
    recorder = current.recorder
    if recorder is not None and hasattr(recorder, "client"):
        try:
            current.recorder = build_recorder(current.settings)
        except Exception:
            log.exception("could not rebuild the S3 recorder after restore")
    publisher = current.publisher
    if isinstance(publisher, WebhookPublisher) and publisher.queue is not None:
        try:
            publisher.queue = build_delivery_queue(current.settings)
        except Exception:
            log.exception("could not rebuild the webhook queue's client after restore")


after_snapstart_restore(after_restore)
runtime.prime_for_snapshot()
