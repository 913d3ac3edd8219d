"""Each capability's routes are built into the app by the first request under one of its path segments, in the
place its router holds in the route list: the app answers exactly as if it had been built whole."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from airies.api.app import CAPABILITIES, load_router
from airies.api.lazy_routes import CapabilityRoutes, load_all, placeholders, route_path
from tests.conftest import signup

BASE = "/api/v1"


def _built(app: FastAPI) -> set[str]:
    return {placeholder.name for placeholder in placeholders(app) if placeholder.routes is not None}


def test_a_fresh_app_builds_no_capability_and_a_request_builds_only_its_own(client: TestClient, app: FastAPI) -> None:
    assert [p.name for p in placeholders(app)] == [name for name, _, _ in CAPABILITIES]
    assert client.get(f"{BASE}/health").status_code == 200
    assert _built(app) == set()
    headers = signup(client)
    assert _built(app) == {"accounts"}
    assert client.get(f"{BASE}/agents", headers=headers).status_code == 200
    assert _built(app) == {"accounts", "agents"}
    assert client.get(f"{BASE}/billing/balance", headers=headers).status_code == 200
    assert _built(app) == {"accounts", "agents", "billing"}


def test_a_segment_two_capabilities_share_reaches_the_second(client: TestClient, app: FastAPI) -> None:
    headers = signup(client)
    # /agents/{id}/webhook is the webhooks capability's, under the agents' segment: both are built in on the way.
    response = client.get(f"{BASE}/agents/agt_missing/webhook", headers=headers)
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "not_found"
    assert "no route" not in response.json()["error"]["message"]  # the route answered, not the router
    assert {"agents", "webhooks"} <= _built(app)


def test_method_and_path_errors_name_the_routes_of_a_capability_not_yet_built(client: TestClient) -> None:
    headers = signup(client)
    wrong_method = client.delete(f"{BASE}/billing/balance", headers=headers)
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "GET"
    slash = client.get(f"{BASE}/voices/", headers=headers)
    assert slash.status_code == 404
    assert slash.json()["error"]["details"] == {"path": f"{BASE}/voices"}


def test_routes_end_in_the_order_of_the_whole_app_whatever_order_requests_build_them(
    client: TestClient, app: FastAPI, settings, database
) -> None:  # type: ignore[no-untyped-def]
    from airies.api.app import create_app

    headers = signup(client)
    for path in ("telephony/twilio/status", "widget/pk_x/conversations", "knowledge-bases", "conversations", "llm"):
        client.get(f"{BASE}/{path}", headers=headers)
    load_all(app)
    routes = app.router.routes
    for placeholder in placeholders(app):  # each capability's routes just before its placeholder, once
        assert placeholder.routes
        at = routes.index(placeholder)
        assert routes[at - len(placeholder.routes) : at] == placeholder.routes, placeholder.name
    whole = create_app(settings, database)
    load_all(whole)
    assert len(routes) == len(whole.router.routes)


def test_each_capability_serves_exactly_the_segments_of_its_table_entry(app: FastAPI) -> None:
    for name, segments, module in CAPABILITIES:
        routes = load_router(module, app).routes
        served = {route.path.strip("/").split("/", 1)[0] for route in routes if isinstance(route, APIRoute)}
        assert served == set(segments), name


def test_the_openapi_document_lists_every_capability_on_a_fresh_app(client: TestClient, app: FastAPI) -> None:
    paths = client.get(f"{BASE}/openapi.json").json()["paths"]
    for _, segments, _ in CAPABILITIES:
        for segment in segments:
            assert any(path.startswith(f"{BASE}/{segment}") for path in paths), segment


def test_requests_on_several_threads_build_a_capability_once(app: FastAPI) -> None:
    loads: list[str] = []

    def slow_load(_app: FastAPI) -> APIRouter:
        loads.append(threading.current_thread().name)
        time.sleep(0.05)  # a router import: long enough for every thread to arrive meanwhile
        router = APIRouter()
        router.add_api_route("/slow/ping", lambda: {"ok": True}, methods=["GET"])
        return router

    slow = CapabilityRoutes(app, "slow", ("slow",), slow_load, prefix=BASE, lock=threading.Lock())
    app.router.routes.append(slow)
    before = len(app.router.routes)
    barrier = threading.Barrier(4)

    def build() -> None:
        barrier.wait()
        slow.build()

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    assert slow.routes and len(app.router.routes) == before + len(slow.routes)
    with TestClient(app) as client:
        assert client.get(f"{BASE}/slow/ping").json() == {"ok": True}


@pytest.mark.parametrize(
    ("path", "root_path", "expected"),
    [
        ("/api/v1/agents", "", "/api/v1/agents"),
        ("/prod/api/v1/agents", "/prod", "/api/v1/agents"),
        ("/prod/api/v1/agents", "/prod/", "/api/v1/agents"),
        ("/api/v1/agents", "/ap", "/api/v1/agents"),  # a root path that is only a prefix of the first segment
        ("/prod", "/prod", "/"),
    ],
)
def test_the_route_path_drops_the_root_path_only_at_a_segment_boundary(
    path: str, root_path: str, expected: str
) -> None:
    assert route_path({"type": "http", "path": path, "root_path": root_path}) == expected
