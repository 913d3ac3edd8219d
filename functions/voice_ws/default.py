"""VoiceMessageFunction ($default and the named routes): one client frame per invocation."""

from __future__ import annotations

from airies.core import bootstrap

bootstrap.pause_collector_for_init()  # before the imports (airies.core.bootstrap says why)

from typing import Any

from aws_lambda_powertools.utilities.parser.models import APIGatewayWebSocketMessageEventModel
from voice_runtime import start, turn_service

from airies.conversations.live import WebSocketService
from airies.conversations.live_runtime import turn_deadline
from airies.core.events import MalformedEvent, parse_event
from airies.core.observability import lambda_handler, logger

start(turns=WebSocketService)  # no relay handshake: only $connect checks one

if bootstrap.initializing_snapshot():
    # The modules a turn's engines are built from (``conversations.engines.build_engines`` imports them at a
    # container's first turn) load into the SnapStart snapshot, not in a caller's first turn after a restore.
    from airies.llm import service as llm_service  # noqa: F401
    from airies.voice import factory as voice_factory  # noqa: F401


@lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        request = parse_event(APIGatewayWebSocketMessageEventModel, event, source="WebSocket message")
    except MalformedEvent:
        return {"statusCode": 400}
    logger.append_keys(connection_id=request.request_context.connection_id)
    ws = turn_service()
    with turn_deadline(context, ws.settings.turn_deadline_margin_ms):
        return ws.handle_message(event)


bootstrap.init_done()  # the module's last statement: its init is over
