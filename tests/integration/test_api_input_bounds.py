"""Integer and float inputs are bounded by the schemas: out-of-range values answer 422 before any query, on both
databases, and every integer input of every route (and of every request model) carries both bounds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from airies.api.app import create_app
from airies.conversations import protocol as ws_protocol
from airies.core.config import Settings
from airies.core.database import Database
from airies.core.schemas import INT32_MAX, INT64_MAX, StrictModel
from tests.kb_support import BUCKET, moto_bucket

AGENT = {"name": "Support", "system_prompt": "You help customers.", "first_message": "Hi there!"}


def _numeric_leaves(schema: dict[str, Any], components: dict[str, Any], path: str, seen: set[str]) -> Iterator[tuple]:
    """(path, schema) of every integer or number in ``schema``, following $refs once."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name not in seen:
            seen.add(name)
            yield from _numeric_leaves(components[name], components, f"{path}<{name}>", seen)
        return
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key, []):
            yield from _numeric_leaves(option, components, path, seen)
    if schema.get("type") in ("integer", "number"):
        yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from _numeric_leaves(sub, components, f"{path}.{name}", seen)
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _numeric_leaves(schema["additionalProperties"], components, f"{path}.*", seen)
    if isinstance(schema.get("items"), dict):
        yield from _numeric_leaves(schema["items"], components, f"{path}[]", seen)


def _unbounded(leaves: Iterator[tuple]) -> list[str]:
    missing = []
    for path, schema in leaves:
        low = "minimum" in schema or "exclusiveMinimum" in schema
        high = "maximum" in schema or "exclusiveMaximum" in schema
        if not (low and high) or max(schema.get("maximum", 0), schema.get("exclusiveMaximum", 0)) > INT64_MAX:
            missing.append(path)
    return missing


def _all_subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


def test_every_numeric_input_of_the_openapi_document_is_bounded(tmp_path) -> None:
    app = create_app(Settings(stage="local", data_dir=tmp_path), Database(f"sqlite:///{tmp_path}/x.db"))
    doc = app.openapi()
    components = doc["components"]["schemas"]
    inputs = 0
    missing: list[str] = []
    for route, operations in doc["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                leaves = list(
                    _numeric_leaves(parameter["schema"], components, f"{method} {route} {parameter['name']}", set())
                )
                inputs += len(leaves)
                missing += _unbounded(iter(leaves))
            for media in (operation.get("requestBody") or {}).get("content", {}).values():
                leaves = list(_numeric_leaves(media["schema"], components, f"{method} {route} body", set()))
                inputs += len(leaves)
                missing += _unbounded(iter(leaves))
    assert inputs > 30  # the walk reached the parameters and bodies
    assert missing == []


def test_every_request_model_and_websocket_frame_bounds_its_numbers() -> None:
    """Also the models a route parses itself (documents) and the WebSocket frames, which OpenAPI does not show."""
    models = sorted(set(_all_subclasses(StrictModel)), key=lambda m: m.__qualname__)
    assert any(m.__name__ == "DocumentCreate" for m in models)
    missing: list[str] = []
    for model in models:
        schema = model.model_json_schema(ref_template="#/$defs/{model}")
        missing += _unbounded(_numeric_leaves(schema, schema.get("$defs", {}), model.__qualname__, set()))
    frames = ws_protocol._client_frame.json_schema(ref_template="#/$defs/{model}")
    missing += _unbounded(_numeric_leaves(frames, frames.get("$defs", {}), "ws", set()))
    assert missing == []


def _deployed_agent(client, auth) -> str:  # type: ignore[no-untyped-def]
    agent_id = client.post("/api/v1/agents", json=AGENT, headers=auth).json()["id"]
    assert client.post(f"/api/v1/agents/{agent_id}/deploy", headers=auth).status_code == 201
    return agent_id


def _post_json(client, path: str, raw: str, auth: dict[str, str]):  # type: ignore[no-untyped-def]
    return client.post(path, content=raw, headers={**auth, "content-type": "application/json"})


@pytest.mark.parametrize("version", [2**63, 10**30, 2**31, -1, 0])
def test_an_agent_version_out_of_range_is_422_and_starts_nothing(client, auth, database, version) -> None:  # type: ignore[no-untyped-def]
    agent_id = _deployed_agent(client, auth)
    response = _post_json(
        client, "/api/v1/conversations", json.dumps({"agent_id": agent_id, "agent_version": version}), auth
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["details"][0]["field"] == "agent_version"
    assert client.get("/api/v1/conversations", headers=auth).json()["data"] == []


def test_the_largest_agent_version_fits_the_column(client, auth, database) -> None:  # type: ignore[no-untyped-def]
    agent_id = _deployed_agent(client, auth)
    response = client.post(
        "/api/v1/conversations", json={"agent_id": agent_id, "agent_version": INT32_MAX}, headers=auth
    )
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


@pytest.fixture
def document(client, auth, settings) -> Iterator[str]:  # type: ignore[no-untyped-def]
    settings.kb_documents_bucket = BUCKET
    with moto_bucket():
        kb = client.post("/api/v1/knowledge-bases", json={"name": "Help"}, headers=auth).json()
        created = client.post(
            f"/api/v1/knowledge-bases/{kb['id']}/documents",
            json={"filename": "faq.md", "text": "Returns are free within 30 days."},
            headers=auth,
        )
        assert created.status_code == 201, created.text
        yield f"/api/v1/knowledge-bases/{kb['id']}/documents/{created.json()['document']['id']}"


def test_a_chunk_offset_out_of_range_is_422(client, auth, document) -> None:  # type: ignore[no-untyped-def]
    for offset in ("99999999999999999999", str(2**63), str(INT32_MAX + 1), "-1"):
        response = client.get(f"{document}/chunks?offset={offset}", headers=auth)
        assert response.status_code == 422, (offset, response.text)
        assert response.json()["error"]["details"][0]["field"] == "query.offset"
    assert len(client.get(f"{document}/chunks", headers=auth).json()["data"]) == 1
    assert client.get(f"{document}/chunks?offset={INT32_MAX}", headers=auth).json()["data"] == []


def test_a_declared_document_size_out_of_range_is_422(client, auth, document) -> None:  # type: ignore[no-untyped-def]
    documents = document.rsplit("/", 1)[0]
    response = client.post(documents, json={"filename": "big.pdf", "size_bytes": 10**30}, headers=auth)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["field"] == "size_bytes"


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused_before_they_reach_a_json_column(client, auth, database, token) -> None:  # type: ignore[no-untyped-def]
    agent_id = _deployed_agent(client, auth)
    started = _post_json(
        client, "/api/v1/conversations", f'{{"agent_id": "{agent_id}", "metadata": {{"x": {token}}}}}', auth
    )
    assert started.status_code == 422, started.text
    assert started.json()["error"]["details"][0]["field"] == "metadata"
    created = _post_json(client, "/api/v1/agents", f'{{"name": "A", "metadata": {{"x": {token}}}}}', auth)
    assert created.status_code == 422, created.text
    updated = _post_json(client, "/api/v1/agents", f'{{"name": "A", "llm": {{"temperature": {token}}}}}', auth)
    assert updated.status_code == 422, updated.text
    assert client.get("/api/v1/conversations", headers=auth).json()["data"] == []
    assert [a["id"] for a in client.get("/api/v1/agents", headers=auth).json()["data"]] == [agent_id]
