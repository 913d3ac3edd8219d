"""VoiceDisconnectFunction ($disconnect): forgets the connection; the conversation waits for a reconnect."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from voice_runtime import service

logger = Logger()


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    logger.append_keys(connection_id=event.get("requestContext", {}).get("connectionId"))
    return service().handle_connection(event)
