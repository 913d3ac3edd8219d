"""VoiceConnectFunction ($connect): checks the conversation token; a non-200 refuses the WebSocket handshake.

A caller waits for this function when a call starts, so it runs with SnapStart: ``voice_runtime`` builds the service
into the snapshot."""

from __future__ import annotations

from airies.core import bootstrap

bootstrap.pause_collector_for_init()  # before the imports (airies.core.bootstrap says why)

from typing import Any

from aws_lambda_powertools.utilities.parser.models import APIGatewayWebSocketConnectEventModel
from voice_runtime import service, start

from airies.core.events import MalformedEvent, parse_event
from airies.core.observability import lambda_handler, logger
from airies.telephony.relay import RelayHandshake

start(relay_handshake=RelayHandshake)  # phone calls: Twilio ConversationRelay's handshake


@lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        request = parse_event(APIGatewayWebSocketConnectEventModel, event, source="WebSocket $connect")
    except MalformedEvent:
        return {"statusCode": 400}
    logger.append_keys(connection_id=request.request_context.connection_id)
    return service().handle_connection(event)


bootstrap.init_done()  # the module's last statement: its init is over
