"""Wire-level Pinecone control-plane double: ``GET /indexes`` (what ``Pinecone.list_indexes()`` calls), on 127.0.0.1:0.

Checks ``Api-Key`` like Pinecone (401 ``{"error": {"code": "UNAUTHENTICATED", ...}}``); ``status`` forces another
answer (e.g. 403 for a key without control-plane access, 500). Point the SDK at it with ``PINECONE_CONTROLLER_HOST``.
The data plane (upsert, query, ...) is ``pinecone_server.PineconeDouble``.
"""

from __future__ import annotations

from typing import Any

from tests.doubles._wire import JsonServer


class PineconeControlDouble(JsonServer):
    def __init__(self, *, api_key: str = "pc-test-key") -> None:
        self.api_key = api_key
        self.status: int | None = None  # forced answer for every request
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    def respond(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, Any]]:
        lowered = {k.lower(): v for k, v in headers.items()}
        self.requests.append((method, path, lowered))
        return self.handle(path, lowered)

    def handle(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if headers.get("api-key") != self.api_key:
            return 401, {"error": {"code": "UNAUTHENTICATED", "message": "Invalid API Key"}, "status": 401}
        if self.status is not None:
            code = {403: "FORBIDDEN", 500: "INTERNAL"}.get(self.status, "UNKNOWN")
            return self.status, {"error": {"code": code, "message": "forced"}, "status": self.status}
        if path.split("?", 1)[0] == "/indexes":
            return 200, {"indexes": []}  # a project with no index yet: the key is still valid
        return 404, {"error": {"code": "NOT_FOUND", "message": f"no route {path}"}, "status": 404}
