"""VoiceDisconnectFunction ($disconnect): forgets the connection; the conversation waits for a reconnect."""

from __future__ import annotations

from airies.core import bootstrap

bootstrap.pause_collector_for_init()  # before the imports (airies.core.bootstrap says why)

from typing import Any

from aws_lambda_powertools.utilities.parser.models import APIGatewayWebSocketDisconnectEventModel
from voice_runtime import service, start

from airies.core.events import MalformedEvent, parse_event
from airies.core.observability import lambda_handler, logger

start()  # no relay handshake: only $connect checks one


@lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        request = parse_event(APIGatewayWebSocketDisconnectEventModel, event, source="WebSocket $disconnect")
    except MalformedEvent:
        return {"statusCode": 400}
    logger.append_keys(connection_id=request.request_context.connection_id)
    return service().handle_connection(event)


bootstrap.init_done()  # the module's last statement: its init is over
