"""A business's tool server: a real HTTP server on 127.0.0.1:0 that receives the platform's tool calls, checks each
one's signature with the verification snippet of docs/webhooks.md (the one docs/tools.md points to), and answers
from a per-tool responder.

Behaviour per request (set on the double): ``delay`` (slow: seconds before answering), ``status`` (failing: e.g.
500), ``oversize`` (pad the answer to that many bytes), ``redirect_to`` (answer 307 with that Location, e.g. a
private address). ``responders[name](arguments) -> body`` makes the answer (default ``{"result": {"ok": true}}``).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.doubles._wire import LocalHttpServer
from tests.doubles.webhook_receiver import documented_verifier


@dataclass
class ToolRequest:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    received_at: float  # time.perf_counter() when the request was read (benchmarks)
    answered_at: float = 0.0  # time.perf_counter() just before the answer was written

    @property
    def call(self) -> dict[str, Any]:
        return json.loads(self.body)


class ToolServer(LocalHttpServer):
    def __init__(self, secret: str = "") -> None:
        self.secret = secret
        self.delay = 0.0
        self.status = 200
        self.oversize = 0
        self.redirect_to: str | None = None
        self.extra_headers: dict[str, str] = {}  # added to every answer (e.g. a Set-Cookie)
        self.responders: dict[str, Callable[[Any], Any]] = {}
        self.received: list[ToolRequest] = []
        self.verify = documented_verifier()
        self._lock = threading.Lock()

    @property
    def tool_url(self) -> str:
        return f"{self.url}/tools"

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    def calls(self, name: str | None = None) -> list[dict[str, Any]]:
        return [r.call for r in self.received if name is None or r.call.get("name") == name]

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        # Headers and body go out in separate writes: without this, Nagle and delayed ACKs hold the body ~40 ms on
        # a kept-alive connection (as a real server's single write would not).
        handler.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw = handler.rfile.read(int(handler.headers.get("content-length") or 0))
        received = time.perf_counter()
        headers = {k.lower(): v for k, v in handler.headers.items()}
        verified = bool(self.secret) and self.verify(self.secret, headers.get("airies-signature", ""), raw)
        request = ToolRequest(handler.path, headers, raw, verified, received)
        with self._lock:
            self.received.append(request)
        if self.delay:
            time.sleep(self.delay)
        if self.redirect_to:
            self._send(handler, 307, b"", {"location": self.redirect_to})
            return
        try:
            call = json.loads(raw)
            responder = self.responders.get(call.get("name"), lambda arguments: {"result": {"ok": True}})
            body = json.dumps(responder(call.get("arguments"))).encode()
        except ValueError:
            self._send(handler, 400, b'{"error": "not JSON"}', {})
            return
        if self.oversize:
            body = json.dumps({"result": "x" * self.oversize}).encode()
        request.answered_at = time.perf_counter()
        self._send(handler, self.status, body, {"content-type": "application/json", **self.extra_headers})

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
        try:
            handler.send_response(status)
            for key, value in headers.items():
                handler.send_header(key, value)
            handler.send_header("content-length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
