"""A business's webhook receiver: a real HTTP server on 127.0.0.1:0 that checks every delivery's signature with the
verification snippet of docs/webhooks.md (read from the page, so the documented code is the tested code).

It answers ``fail_status`` to the first ``fail_first`` deliveries, then ``status`` (200); ``redirect_to`` makes it
answer ``redirect_status`` with that Location instead; ``body_bytes`` pads its answers (an oversized response).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from airies.core.config import PROJECT_ROOT
from airies.webhooks.schemas import DeliveryMessage

DOC = PROJECT_ROOT / "docs" / "webhooks.md"


def documented_verifier() -> Callable[..., bool]:
    """``verify_airies_signature`` exactly as docs/webhooks.md shows it."""
    section = DOC.read_text(encoding="utf-8").split("## Verifying the signature", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, "docs/webhooks.md has no Python verification snippet"
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), str(DOC), "exec"), namespace)
    return namespace["verify_airies_signature"]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


class ListQueue:
    """The delivery queue, in memory: the caller hands each message to the worker itself."""

    def __init__(self) -> None:
        self.messages: list[DeliveryMessage] = []

    def send(self, message: DeliveryMessage, delay_s: int = 0) -> None:
        self.messages.append(message)

    def dead_letter(self, message: DeliveryMessage, reason: str) -> None:
        raise AssertionError(f"dead-lettered: {reason}")


class WebhookReceiver:
    def __init__(self, secret: str = "", *, fail_first: int = 0, fail_status: int = 500, status: int = 200) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.status = status
        self.redirect_to: str | None = None
        self.redirect_status = 307
        self.body_bytes = 0
        self.received: list[Received] = []
        self.verify = documented_verifier()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks"

    @property
    def host(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def verified(self) -> list[Received]:
        return [r for r in self.received if r.verified]

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        body = handler.rfile.read(length)
        verified = self.verify(self.secret, handler.headers.get("airies-signature", ""), body)
        with self._lock:
            self.received.append(Received(handler.path, dict(handler.headers.items()), body, verified))
            failing = len(self.received) <= self.fail_first
        if self.redirect_to:
            handler.send_response(self.redirect_status)
            handler.send_header("Location", self.redirect_to)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        status = self.fail_status if failing else (self.status if verified else 400)
        payload = b"x" * self.body_bytes if self.body_bytes else b'{"ok": true}'
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        try:
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading at its cap

    def __enter__(self) -> Self:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Answer in one segment: http.server writes headers and body apart, and with Nagle on the second write
            # waits for the client's delayed ACK (~40 ms), which would time the receiver instead of the delivery.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                receiver._answer(self)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
