"""A live call's connections: ``$connect`` (the signed token, a carrier relay's signed handshake, the session opened
in DynamoDB) and ``$disconnect`` (the connection forgotten; the conversation waits for a reconnect).

Neither runs a turn, so nothing here imports the turn pipeline: :class:`ConnectionService` is what the
VoiceConnectFunction and VoiceDisconnectFunction containers build, and
:class:`~airies.conversations.live.WebSocketService` (every frame) is one too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from airies.conversations import protocol as wp
from airies.conversations import relay_protocol as rp
from airies.conversations.live_runtime import LiveRuntime, endpoint_from_event
from airies.conversations.sessions import SessionEnded, SessionStore
from airies.core.config import Settings
from airies.core.database import Database
from airies.core.errors import AiriesError, NotFoundError, UnauthorizedError


class HandshakeVerifier(Protocol):
    def __call__(self, conversation_id: str, account_id: str, url: str, headers: Mapping[str, str]) -> None:
        """Raise an ``AiriesError`` (403 for a forged or missing signature) unless the handshake's ``headers``
        (names in lower case) carry a signature of ``url`` with the carrier credentials of the conversation's phone
        call. The carrier's capability knows which header that is."""
        ...


def _refused(status: int, code: str, message: str) -> dict[str, Any]:
    """A refused ``$connect`` handshake, with the reason as an ``error`` frame body."""
    return {"statusCode": status, "body": wp.encode(wp.error(code, message)).decode()}


class ConnectionEdge:
    """``$connect`` and ``$disconnect``. ``verifier`` checks a carrier relay's signed handshake (the telephony
    capability's, composed by the edge that builds the service); without one, relay connections are refused (501
    ``relay_not_available``)."""

    def __init__(self, runtime: LiveRuntime, verifier: HandshakeVerifier | None) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.verifier = verifier

    def handle_connection(self, event: dict[str, Any]) -> dict[str, Any]:
        ctx = event.get("requestContext", {})
        connection_id = ctx.get("connectionId", "")
        if ctx.get("eventType") == "DISCONNECT" or ctx.get("routeKey") == "$disconnect":
            self.runtime.connections.pop(connection_id, None)
            known = self.store.connection(connection_id)
            self.store.drop_connection(connection_id, known["conversation_id"] if known else None)
            return {"statusCode": 200}
        params = event.get("queryStringParameters") or {}
        try:
            claims = self.runtime.tokens.verify(params.get("token"), params.get("conversation_id"))
        except UnauthorizedError as exc:
            return _refused(401, exc.code, exc.message)
        conversation_id, account_id = claims["c"], claims["a"]
        protocol = params.get("relay") or None  # a carrier's text relay (Twilio ConversationRelay)
        if protocol is not None:
            refused = self.check_handshake(event, claims, protocol)
            if refused is not None:
                return _refused(*refused)
        with self.runtime.database.session() as db:
            service = self.runtime.conversations(db)
            try:
                conversation = service.get(account_id, conversation_id)
            except NotFoundError:
                return _refused(403, "invalid_token", "unknown conversation")
            if conversation.status == "ended":
                return _refused(410, "conversation_ended", "conversation has ended")
            try:
                config = service.config_for(conversation)  # the agent may have been deleted since the start
            except AiriesError as exc:
                return _refused(exc.status_code, exc.code, exc.message)
            try:
                self.store.open_session(
                    conversation_id,
                    account_id=account_id,
                    agent_id=conversation.agent_id,
                    agent_version=conversation.agent_version,
                    config=config.compact_json(),
                    connection_id=connection_id,
                    endpoint=endpoint_from_event(self.runtime.settings, event),
                    first_deadline=self.runtime.clock()
                    + min(config.silence_timeout_seconds, config.max_duration_seconds),
                    protocol=protocol,
                )
            except SessionEnded:
                return _refused(410, "conversation_ended", "conversation has ended")
            service.mark_active(conversation)
        return {"statusCode": 200}

    def check_handshake(
        self, event: dict[str, Any], claims: dict[str, Any], protocol: str
    ) -> tuple[int, str, str] | None:
        """Why a relay handshake (its token already checked) is refused, as (status, code, message); None opens it.
        The carrier signs the URL the TwiML named, rebuilt here from the public WebSocket URL (never the Host)."""
        if self.verifier is None:
            return 501, "relay_not_available", "the phone relay is not configured here"
        if protocol not in rp.RELAY_PROTOCOLS:
            return 400, "unknown_relay", f"unknown relay {protocol!r}"
        params = event.get("queryStringParameters") or {}
        url = rp.relay_url(self.runtime.settings.public_ws_url, claims["c"], str(params.get("token")))
        try:
            headers = {str(name).lower(): str(value) for name, value in (event.get("headers") or {}).items()}
            self.verifier(claims["c"], claims["a"], url, headers)
        except AiriesError as exc:
            return exc.status_code, exc.code, exc.message
        return None


class ConnectionService:
    """What the connection handlers reach: the live runtime and the connection edge (no turns)."""

    def __init__(self, runtime: LiveRuntime, relay_verifier: HandshakeVerifier | None = None) -> None:
        self.runtime = runtime
        self.relay_verifier = relay_verifier
        self.connection_edge = ConnectionEdge(runtime, relay_verifier)

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def database(self) -> Database:
        return self.runtime.database

    @property
    def store(self) -> SessionStore:
        return self.runtime.store

    def handle_connection(self, event: dict[str, Any]) -> dict[str, Any]:
        return self.connection_edge.handle_connection(event)
