"""The live side of a conversation, as the Lambda handlers build it: one :class:`WebSocketService` per container.

It wires the live modules together and keeps the entry points the handlers, the local gateway and the sweeper
call: ``handle_connection`` ($connect and $disconnect, from ``connections.ConnectionService``), ``handle_message``
($default) and ``sweep`` (scheduled).
What each step does lives in its own module (see ``live_runtime`` for the reading order); REST routes reach a
live call through the smaller ``live_sessions.LiveSessions``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from airies.conversations.connections import ConnectionService, HandshakeVerifier
from airies.conversations.endpointing import Endpointing
from airies.conversations.lifecycle import ended_summary
from airies.conversations.live_runtime import (
    ApiGatewayPoster,
    EngineFactory,
    HeardFrames,
    Poster,
    Recorder,
    management_poster,
    reset_after_restore,
)
from airies.conversations.live_sessions import LiveSessions
from airies.conversations.relay import RelayEdge
from airies.conversations.service import ConversationService, build_recorder
from airies.conversations.sessions import LiveSession, SessionStore
from airies.conversations.socket_edge import SocketEdge
from airies.conversations.turn_metrics import TurnMetrics
from airies.core.config import Settings
from airies.core.database import Database
from airies.core.metrics import MonitoringService
from airies.core.observability import logger, metrics
from airies.webhooks.service import build_webhook_publisher

__all__ = [
    "ApiGatewayPoster",
    "Poster",
    "WebSocketService",
    "ended_summary",
    "management_poster",
    "reset_after_restore",
]


class WebSocketService(LiveSessions, ConnectionService):
    """The live-sessions facade plus the socket edge: the connection events, endpointing, a carrier's relay and
    the frames.

    ``relay_verifier`` checks a carrier relay's signed handshake at ``$connect`` (the telephony capability's,
    composed by the edge that builds the service); without one, relay connections are refused (501
    ``relay_not_available``)."""

    def __init__(self, *args: Any, relay_verifier: HandshakeVerifier | None = None, **kwargs: Any) -> None:
        self.relay_verifier = relay_verifier
        LiveSessions.__init__(self, *args, **kwargs)

    def _wire(self) -> None:
        ConnectionService.__init__(self, self.runtime, self.relay_verifier)
        self.endpointing = Endpointing(self.runtime, self.orchestrator, self.barge_in, self.sweeper)
        self.relay = RelayEdge(self.runtime, self.lifecycle, self.barge_in, self.orchestrator)
        self.edge = SocketEdge(
            self.runtime, self.lifecycle, self.barge_in, self.orchestrator, self.sweeper, self.endpointing, self.relay
        )

    @classmethod
    def for_lambda(
        cls, settings: Settings, database: Database, store: SessionStore, relay_verifier: HandshakeVerifier | None
    ) -> WebSocketService:
        """As a voice function's container builds it: recordings in S3, events on the webhook queue, each turn's
        metrics through the handlers' Powertools Metrics (flushed per invocation)."""
        return cls(
            settings,
            database,
            store,
            recorder=build_recorder(settings),
            publisher=build_webhook_publisher(settings, database),
            turn_metrics=TurnMetrics(MonitoringService(metrics=metrics, logger=logger)),
            relay_verifier=relay_verifier,
        )

    # -- what the handlers and the restore hook reach ------------------------------------------------------------
    @property
    def recorder(self) -> Recorder | None:
        return self.runtime.recorder

    @recorder.setter
    def recorder(self, value: Recorder | None) -> None:
        self.runtime.recorder = value

    @property
    def engines(self) -> EngineFactory:
        return self.runtime.engines

    @engines.setter
    def engines(self, value: EngineFactory) -> None:
        self.runtime.engines = value

    @property
    def _heard(self) -> HeardFrames:
        return self.runtime.heard

    def conversations(self, session: Session) -> ConversationService:
        return self.runtime.conversations(session)

    # -- entry points --------------------------------------------------------------------------------------------
    def handle_message(self, event: dict[str, Any]) -> dict[str, Any]:
        return self.edge.handle_message(event)

    def check_timers(self, session: LiveSession, poster: Poster | None = None) -> str | None:
        return self.sweeper.check_timers(session, poster)

    def end(
        self, conversation_id: str, reason: str, poster: Poster | None, *, active_until: float | None = None
    ) -> bool:
        return self.lifecycle.end(conversation_id, reason, poster, active_until=active_until)

    def broadcast_to_conversation(
        self, conversation_id: str, message: dict[str, Any], poster: Poster | None = None
    ) -> int:
        return self.lifecycle.broadcast(conversation_id, message, poster)
