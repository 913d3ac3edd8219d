"""Pure ASGI middleware (cheaper than BaseHTTPMiddleware): body-size cap, NUL characters, request ids."""

from __future__ import annotations

import json
import uuid
from typing import Any

from starlette.exceptions import HTTPException

Scope = dict[str, Any]


def _json_error(status: int, code: str, message: str) -> tuple[dict[str, Any], dict[str, Any]]:
    body = json.dumps({"error": {"code": code, "message": message, "details": None}}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    return start, {"type": "http.response.body", "body": body}


JSON_NUL = b"\\u0000"  # the JSON escape of U+0000


def _has_nul(scope: Scope) -> bool:
    return (
        "\x00" in scope.get("path", "")
        or b"%00" in scope.get("query_string", b"")
        or b"\x00" in scope.get("query_string", b"")
    )


class BodyRejected(HTTPException):
    """A body refused while it is read. An HTTPException because FastAPI re-raises those from its body parsing (any
    other exception there becomes its own 400 "error parsing the body"); the error handler answers ``code``.
    Where a route reads the body itself, it reaches the same handler."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(status_code=status_code, detail=message)
        self.code = code


def body_too_large(limit: int) -> BodyRejected:
    return BodyRejected(413, "payload_too_large", f"request body exceeds {limit} bytes")


def nul_in_body() -> BodyRejected:
    return BodyRejected(400, "invalid_characters", "the JSON body contains a NUL character (\\u0000)")


class RequestGuardMiddleware:
    """Rejects bodies over ``max_bytes`` with 413 (declared or streamed), NUL characters in the path, query or a JSON
    body with 400 (PostgreSQL cannot store them in text, SQLite would: the API must answer the same on both), and
    tags every request with an id."""

    def __init__(self, app: Any, *, max_bytes: int, logger: Any = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.logger = logger

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = (headers.get(b"x-request-id") or b"").decode()[:100] or self._aws_request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        if self.logger is not None:
            self.logger.remove_keys(["account_id"])
            self.logger.append_keys(request_id=request_id)
        limit = self._limit_for(scope)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            start, body = _json_error(413, "payload_too_large", f"request body exceeds {limit} bytes")
            await send(start)
            await send(body)
            return

        if _has_nul(scope):
            start, body = _json_error(400, "invalid_characters", "the path or query contains a NUL character")
            await send(start)
            await send(body)
            return

        received = 0
        is_json = b"json" in (headers.get(b"content-type") or b"")
        tail = b""  # the previous chunk's end, so an escape split across chunks is still seen

        async def guarded_receive() -> dict[str, Any]:
            nonlocal received, tail
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limit:  # a streamed (chunked) body has no Content-Length to refuse up front
                    raise body_too_large(limit)
                if is_json:
                    if JSON_NUL in tail + chunk:
                        raise nul_in_body()
                    tail = chunk[-(len(JSON_NUL) - 1) :]
            return message

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*list(message["headers"]), (b"x-request-id", request_id.encode())]
            await send(message)

        await self.app(scope, guarded_receive, send_with_id)

    def _limit_for(self, scope: Scope) -> int:
        # Uploads of audio and documents have their own, larger caps enforced by their routes.
        path: str = scope.get("path", "")
        if path.endswith(("/audio", "/documents", "/transcriptions", "/voices/clone")):
            return max(self.max_bytes, 26_214_400)
        return self.max_bytes

    @staticmethod
    def _aws_request_id(scope: Scope) -> str:
        event = scope.get("aws.event") or {}
        ctx = event.get("requestContext") or {}
        return ctx.get("requestId") or uuid.uuid4().hex
