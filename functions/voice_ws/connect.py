"""VoiceConnectFunction ($connect): checks the conversation token; a non-200 refuses the WebSocket handshake."""

from __future__ import annotations

from typing import Any

from voice_runtime import service

from airies.core.observability import lambda_handler, logger


@lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    logger.append_keys(connection_id=event.get("requestContext", {}).get("connectionId"))
    return service().handle_connection(event)
