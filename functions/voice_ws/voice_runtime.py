"""Built once per container and shared by the $connect, $default and $disconnect handlers."""

from __future__ import annotations

import gc

from airies.services.websocket import WebSocketService

_service: WebSocketService | None = None


def service() -> WebSocketService:
    global _service
    if _service is None:
        from airies.config import get_settings
        from airies.db.engine import get_database
        from airies.services.conversations import build_recorder
        from airies.services.sessions import build_session_store

        settings = get_settings()
        _service = WebSocketService(
            settings, get_database(settings), build_session_store(settings), recorder=build_recorder(settings)
        )
        settle()
    return _service


def settle() -> None:
    """After the cold start, take what it built (modules, SQLAlchemy/pydantic/botocore models) out of the garbage
    collector's sight: a full collection otherwise walks all of it and pauses a turn for 15-60 ms."""
    gc.freeze()


def set_service(value: WebSocketService | None) -> None:
    """The local gateway and tests hand in a service built with their own doubles; the handlers stay the same."""
    global _service
    _service = value
