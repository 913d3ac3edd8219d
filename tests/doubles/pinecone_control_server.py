"""Wire-level Pinecone control-plane double: ``GET /indexes`` (what ``Pinecone.list_indexes()`` calls), on 127.0.0.1:0.

Checks ``Api-Key`` like Pinecone (401 ``{"error": {"code": "UNAUTHENTICATED", ...}}``); ``status`` forces another
answer (e.g. 403 for a key without control-plane access, 500). Point the SDK at it with ``PINECONE_CONTROLLER_HOST``.
The data plane (upsert, query, ...) is ``pinecone_server.PineconeDouble``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class PineconeControlDouble:
    def __init__(self, *, api_key: str = "pc-test-key") -> None:
        self.api_key = api_key
        self.status: int | None = None  # forced answer for every request
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                double.requests.append(("GET", self.path, headers))
                status, body = double.handle(self.path, headers)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> PineconeControlDouble:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if headers.get("api-key") != self.api_key:
            return 401, {"error": {"code": "UNAUTHENTICATED", "message": "Invalid API Key"}, "status": 401}
        if self.status is not None:
            code = {403: "FORBIDDEN", 500: "INTERNAL"}.get(self.status, "UNKNOWN")
            return self.status, {"error": {"code": code, "message": "forced"}, "status": self.status}
        if path.split("?", 1)[0] == "/indexes":
            return 200, {"indexes": []}  # a project with no index yet: the key is still valid
        return 404, {"error": {"code": "NOT_FOUND", "message": f"no route {path}"}, "status": 404}
