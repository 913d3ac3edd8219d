"""The OpenAPI document works in Swagger UI offline: the Authorize button (Bearer), request bodies of the uploads,
4xx answers with the error schema and a description on every operation; the UI's files come from the package."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest

from airies.api.openapi import PUBLIC_OPERATIONS

BASE = "/api/v1"
# Operations whose body the route reads itself (FastAPI cannot infer it): each declares its request body.
UPLOADS = {
    ("post", "/transcriptions"),
    ("post", "/conversations/{conversation_id}/audio"),
    ("post", "/knowledge-bases/{kb_id}/documents"),
    ("put", "/knowledge-bases/{kb_id}/documents/{doc_id}"),
    ("post", "/billing/webhooks/stripe"),
    ("post", "/widget/{publishable_key}/conversations"),
    ("post", "/telephony/twilio/voice"),
    ("post", "/telephony/twilio/status"),
}
# Actions that take no body at all.
NO_BODY = {
    ("post", "/agents/{agent_id}/deploy"),
    ("post", "/conversations/{conversation_id}/token"),
    ("post", "/webhooks/endpoint/rotate-secret"),
    ("post", "/agents/{agent_id}/webhook/rotate-secret"),
    ("post", "/webhooks/deliveries/{event_id}/redeliver"),
}
ERROR_REF = "#/components/schemas/ErrorResponse"


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path.removeprefix(BASE), operation)
        for path, item in doc["paths"].items()
        for method, operation in item.items()
    ]


@pytest.fixture
def doc(client) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    response = client.get(f"{BASE}/openapi.json")
    assert response.status_code == 200
    return response.json()


@pytest.mark.db
def test_bearer_security_scheme_and_public_operations(doc) -> None:  # type: ignore[no-untyped-def]
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An Airies API key: Authorization: Bearer <key>",
    }
    assert doc["security"] == [{"bearerAuth": []}]
    found = {(method, path) for method, path, _ in operations(doc)}
    assert found >= PUBLIC_OPERATIONS
    for method, path, operation in operations(doc):
        if (method, path) in PUBLIC_OPERATIONS:
            assert operation["security"] == [], (method, path)
        else:
            assert "security" not in operation, (method, path)  # the document's default: bearerAuth


@pytest.mark.db
def test_every_operation_has_a_description_errors_and_its_request_body(doc) -> None:  # type: ignore[no-untyped-def]
    assert len(operations(doc)) > 70
    for method, path, operation in operations(doc):
        where = f"{method.upper()} {path}"
        assert operation.get("description", "").strip(), f"{where} has no description"
        responses = operation["responses"]
        wanted = {"400", "404", "422", "429"}
        if (method, path) not in PUBLIC_OPERATIONS or "{publishable_key}" in path:
            wanted.add("401")
        for status in wanted:
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": ERROR_REF}, f"{where} {status}"
        if method in ("post", "put", "patch") and (method, path) not in NO_BODY:
            assert operation.get("requestBody", {}).get("content"), f"{where} declares no request body"
    for method, path in UPLOADS:
        assert doc["paths"][BASE + path][method]["requestBody"]["content"]
    error = doc["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["error"]
    assert set(doc["components"]["schemas"]["ErrorInfo"]["properties"]) == {"code", "message", "details"}
    assert "HTTPValidationError" not in doc["components"]["schemas"]


@pytest.mark.db
def test_public_operations_need_no_key_and_the_others_do(client, doc) -> None:  # type: ignore[no-untyped-def]
    for method, path, _ in operations(doc):
        url = BASE + re.sub(r"\{[^}]+\}", "x", path)
        status = client.request(method.upper(), url).status_code
        if (method, path) in PUBLIC_OPERATIONS and "{publishable_key}" not in path:
            assert status != 401, f"{method.upper()} {path}"
        elif method == "get":
            assert status == 401, f"{method.upper()} {path} answered {status} without a key"


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


@pytest.mark.db
def test_swagger_ui_loads_nothing_from_another_host(client) -> None:  # type: ignore[no-untyped-def]
    page = client.get(f"{BASE}/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    assert not re.search(r"https?://", page.text), "the docs page names an external host"
    parser = _Refs()
    parser.feed(page.text)
    script_urls = re.findall(r"url: '([^']+)'", page.text)
    assert f"{BASE}/openapi.json" in script_urls
    assert len(parser.urls) >= 3
    for url in parser.urls:
        assert url.startswith(f"{BASE}/docs/assets/"), url
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 100, url
