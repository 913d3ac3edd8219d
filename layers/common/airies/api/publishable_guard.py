"""Publishable keys sit in web pages: outside the widget's own routes they are refused before any route runs, so
no route (whatever it checks first) can read or change anything with one."""

from __future__ import annotations

import json
from typing import Any

from airies.widget.service import is_publishable_key

REFUSAL = json.dumps(
    {
        "error": {
            "code": "publishable_key_not_allowed",
            "message": "a publishable key can only start conversations (POST /widget/{key}/conversations); "
            "use a secret API key",
            "details": None,
        }
    }
).encode()


class PublishableKeyGuard:
    """Pure ASGI: 403 for ``Authorization: Bearer pk_...`` on every path but ``widget_prefix``."""

    def __init__(self, app: Any, *, widget_prefix: str) -> None:
        self.app = app
        self.widget_prefix = widget_prefix

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not scope.get("path", "").startswith(self.widget_prefix):
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            scheme, _, token = header.partition(" ")
            if scheme.lower() == "bearer" and is_publishable_key(token.strip()):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(REFUSAL))],
                    }
                )
                await send({"type": "http.response.body", "body": REFUSAL})
                return
        await self.app(scope, receive, send)
