"""Built once per container and shared by the $connect, $default and $disconnect handlers.

$connect and $default run with SnapStart: the service is built while Lambda takes the snapshot (in :func:`start`,
which ends each handler's imports), so a restored container does not import boto3 and build the clients in a call's
handshake or first frame. ``after_restore`` drops what a restored container must open afresh.

Each handler names in :func:`start` the parts only it needs: a phone relay's handshake
is checked in $connect alone, so only VoiceConnectFunction loads the telephony capability (~45 ms of its init)."""

from __future__ import annotations

import gc
from collections.abc import Callable

from airies.conversations import live
from airies.conversations.live import WebSocketService
from airies.conversations.relay import HandshakeVerifier
from airies.conversations.service import build_recorder
from airies.conversations.sessions import build_session_store
from airies.conversations.turn_metrics import TurnMetrics
from airies.core import aws
from airies.core.aio import reset_event_loops
from airies.core.bootstrap import PerContainer, after_snapstart_restore
from airies.core.config import Settings, get_settings
from airies.core.database import Database, get_database
from airies.core.metrics import MonitoringService
from airies.core.observability import logger, metrics
from airies.webhooks.service import build_webhook_publisher

RelayHandshakeFactory = Callable[[Settings, Database], HandshakeVerifier]
# Set by $connect's start(); never unset, so the local gateway, which loads the three handlers into one process,
# keeps it whatever their order.
_relay_handshake: RelayHandshakeFactory | None = None


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
        relay_verifier=_relay_handshake(settings, database) if _relay_handshake else None,  # phone calls' relay
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
    """SnapStart: pooled database connections, the API Gateway Management API clients and the per-thread event
    loops are stale after a restore: drop them, so the first invocation opens fresh ones. The service built into
    the snapshot is kept: its AWS clients sent no request before the snapshot (no pooled connection to go stale),
    and the execution role's credentials they resolved refresh themselves."""
    live.reset_after_restore()  # management clients, event loops
    reset_event_loops()
    current = runtime.built
    if current is not None:
        current.database.dispose()


def start(*, relay_handshake: RelayHandshakeFactory | None = None) -> None:
    """A handler's init: the parts its service holds, then, in a SnapStart init, the service built into the
    snapshot. ``relay_handshake`` checks a carrier relay's signed handshake ($connect's Twilio ConversationRelay)."""
    global _relay_handshake
    if relay_handshake is not None:
        _relay_handshake = relay_handshake
    runtime.prime_for_snapshot()
    aws.prime_for_snapshot()  # the database secret's reader: a restored container's first connection reads it


after_snapstart_restore(after_restore)
