"""Built once per container and shared by the $connect, $default and $disconnect handlers.

$connect and $default run with SnapStart: the service is built while Lambda takes the snapshot (in :func:`start`,
which ends each handler's imports), so a restored container does not import boto3 and build the clients in a call's
handshake or first frame. ``after_restore`` drops what a restored container must open afresh.

Each handler names in :func:`start` the parts only it needs: $default runs turns (it passes the service that runs
them, so only VoiceMessageFunction loads the turn pipeline); a phone relay's handshake is checked in $connect alone
(so only VoiceConnectFunction loads the telephony capability). $connect and $disconnect build a
:class:`ConnectionService`."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import TYPE_CHECKING

from airies.conversations.connections import ConnectionService, HandshakeVerifier
from airies.conversations.live_runtime import LiveRuntime, reset_after_restore
from airies.conversations.sessions import build_session_store
from airies.core import aws
from airies.core.aio import reset_event_loops
from airies.core.bootstrap import PerContainer, after_snapstart_restore
from airies.core.config import Settings, get_settings
from airies.core.database import Database, get_database

if TYPE_CHECKING:  # $default passes the class in start(): the connection handlers never import it
    from airies.conversations.live import WebSocketService

RelayHandshakeFactory = Callable[[Settings, Database], HandshakeVerifier]
# Set by the handlers' start(); never unset, so the local gateway, which loads the three handlers into one process,
# builds one service with every part whatever their order.
_relay_handshake: RelayHandshakeFactory | None = None
_turns: type[WebSocketService] | None = None


def build_service() -> ConnectionService:
    settings = get_settings()
    database = get_database(settings)
    store = build_session_store(settings)
    verifier = _relay_handshake(settings, database) if _relay_handshake else None  # phone calls' relay
    built = (
        ConnectionService(LiveRuntime(settings, database, store), verifier)
        if _turns is None
        else _turns.for_lambda(settings, database, store, verifier)
    )
    settle()
    return built


runtime = PerContainer(build_service)


def service() -> ConnectionService:
    return runtime.get()


def turn_service() -> WebSocketService:
    """The service of a handler that started with ``turns``."""
    built = runtime.get()
    if _turns is None or not isinstance(built, _turns):
        raise RuntimeError("the voice runtime was started without the turn pipeline")
    return built


def settle() -> None:
    """After the cold start, take what it built (modules, SQLAlchemy/pydantic/botocore models) out of the garbage
    collector's sight: a full collection otherwise walks all of it and pauses a turn for 15-60 ms."""
    gc.freeze()


def set_service(value: ConnectionService | None) -> None:
    """The local gateway and tests hand in a service built with their own doubles; the handlers stay the same."""
    runtime.set(value)


def after_restore() -> None:
    """SnapStart: pooled database connections, the API Gateway Management API clients and the per-thread event
    loops are stale after a restore: drop them, so the first invocation opens fresh ones. The service built into
    the snapshot is kept: its AWS clients sent no request before the snapshot (no pooled connection to go stale),
    and the execution role's credentials they resolved refresh themselves."""
    reset_after_restore()  # management clients, event loops
    reset_event_loops()
    current = runtime.built
    if current is not None:
        current.database.dispose()


def start(*, turns: type[WebSocketService] | None = None, relay_handshake: RelayHandshakeFactory | None = None) -> None:
    """A handler's init: the parts its service holds, then, in a SnapStart init, the service built into the
    snapshot. ``turns``: the service that runs turns ($default's). ``relay_handshake`` checks a carrier relay's
    signed handshake ($connect's Twilio ConversationRelay)."""
    global _relay_handshake, _turns
    if turns is not None:
        _turns = turns
    if relay_handshake is not None:
        _relay_handshake = relay_handshake
    runtime.prime_for_snapshot()
    aws.prime_for_snapshot()  # the database secret's reader: a restored container's first connection reads it


after_snapstart_restore(after_restore)
