"""A body over the limit answers 413 ``payload_too_large`` on every JSON route, whether it declares its length or
streams it chunked (no Content-Length), through the ASGI app and through Mangum (the Lambda HTTP API path)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from mangum import Mangum

from airies.api.app import create_app

TEN_MB = 10 * 1024 * 1024
UPLOAD_SUFFIXES = ("/audio", "/documents", "/transcriptions", "/voices/clone")  # RequestGuardMiddleware's larger cap
CHUNK = 64 * 1024


def json_routes(app) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """(method, path) of every operation that takes a JSON body, path parameters filled with made-up ids."""
    routes = []
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            if "application/json" not in (operation.get("requestBody") or {}).get("content", {}):
                continue
            if path.endswith(UPLOAD_SUFFIXES) or "{publishable_key}" in path:
                continue  # uploads have their own larger cap; the widget refuses an unknown key before any body
            routes.append((method.upper(), re.sub(r"\{[^}]+\}", "x_1", path)))
    return routes


def chunked_json(total: int) -> Iterator[bytes]:
    """A syntactically plausible JSON object of ``total`` bytes, streamed in chunks (no Content-Length)."""
    yield b'{"name": "'
    sent = 10
    while sent < total:
        yield b"a" * CHUNK
        sent += CHUNK
    yield b'"}'


def test_every_json_route_answers_413_to_a_chunked_body_over_the_limit(client, auth, database) -> None:  # type: ignore[no-untyped-def]
    routes = json_routes(client.app)
    assert len(routes) >= 18
    wrong = {}
    for method, path in routes:
        response = client.request(
            method, path, content=chunked_json(TEN_MB), headers={**auth, "content-type": "application/json"}
        )
        if response.status_code != 413 or response.json()["error"]["code"] != "payload_too_large":
            wrong[f"{method} {path}"] = (response.status_code, response.text[:120])
    assert wrong == {}
    assert client.get("/api/v1/agents", headers=auth).json()["data"] == []  # nothing was created


@pytest.mark.parametrize("path", ["/api/v1/accounts", "/api/v1/agents"])
def test_a_chunked_body_over_the_limit_is_413_even_without_a_key(client, path) -> None:  # type: ignore[no-untyped-def]
    response = client.post(path, content=chunked_json(TEN_MB), headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"


def test_a_document_upload_streamed_over_its_own_cap_is_413(client, auth) -> None:  # type: ignore[no-untyped-def]
    """The upload routes read the body themselves, under a larger cap: the same answer."""
    response = client.post(
        "/api/v1/knowledge-bases/kb_1/documents",
        content=chunked_json(30 * 1024 * 1024),
        headers={**auth, "content-type": "application/json"},
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"


def test_a_nul_escape_in_a_chunked_body_is_still_invalid_characters(client, auth) -> None:  # type: ignore[no-untyped-def]
    def body() -> Iterator[bytes]:
        yield b'{"name": "a\\u00'
        yield b'00b"}'

    response = client.post("/api/v1/agents", content=body(), headers={**auth, "content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_characters"


def test_mangum_http_api_event_without_content_length_is_413(settings, database) -> None:  # type: ignore[no-untyped-def]
    handler = Mangum(create_app(settings, database), lifespan="off")
    body = json.dumps({"name": "a" * TEN_MB, "email": "a@b.co"})
    event = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/api/v1/accounts",
        "rawQueryString": "",
        "headers": {"content-type": "application/json", "host": "api.example.com"},
        "requestContext": {
            "http": {"method": "POST", "path": "/api/v1/accounts", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1"},
            "requestId": "req-1",
            "stage": "$default",
        },
        "body": base64.b64encode(body.encode()).decode(),
        "isBase64Encoded": True,
    }
    response = handler(event, SimpleNamespace(aws_request_id="req-1"))
    assert response["statusCode"] == 413, response
    assert json.loads(response["body"])["error"]["code"] == "payload_too_large"
