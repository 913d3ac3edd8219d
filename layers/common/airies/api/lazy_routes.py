"""A capability's routes, built into the app by the first request that needs them.

Importing a capability's routes and building them (FastAPI analyses every endpoint's parameters and models) is most
of the API's init: about 500 ms for all of them, of which the agents' are 250 ms. A request needs one capability.
So ``create_app`` puts one :class:`CapabilityRoutes` where each capability's router goes: it knows the first path
segments (after the base path) its router serves, and the first request under one of them imports and includes
the router, in that very place of the route list, so the app routes exactly as if it had been built whole.

A SnapStart snapshot builds every capability (``load_all``), as does the OpenAPI document. A test checks each
table entry's segments against its router's routes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send


def route_path(scope: Scope) -> str:
    """The request's path as the routes see it: without the ASGI root path when the path is under it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "").rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root) :] or "/"
    return path


class CapabilityRoutes(BaseRoute):
    """Stands where a capability's router goes until a request under one of its segments builds it in."""

    def __init__(
        self,
        app: FastAPI,
        name: str,
        segments: Sequence[str],
        load: Callable[[FastAPI], APIRouter],
        *,
        prefix: str,
        lock: threading.Lock,
    ) -> None:
        self.app = app
        self.name = name
        self.segments = frozenset(segments)
        self._load = load
        self._prefix = prefix
        self._lock = lock
        self.routes: list[BaseRoute] | None = None  # the router's, once built in

    def serves(self, path: str) -> bool:
        if not path.startswith(self._prefix + "/"):
            return False
        return path[len(self._prefix) + 1 :].split("/", 1)[0] in self.segments

    def build(self) -> list[BaseRoute]:
        """Import the router and include it where this placeholder stands (once; thread-safe)."""
        with self._lock:
            if self.routes is None:
                router = self._load(self.app)
                routes = self.app.router.routes
                start = len(routes)
                self.app.include_router(router, prefix=self._prefix)
                added = routes[start:]
                del routes[start:]
                at = routes.index(self)
                routes[at:at] = added  # before this placeholder, which matches nothing from now on
                self.routes = added
            return self.routes

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if self.routes is not None or scope["type"] not in ("http", "websocket") or not self.serves(route_path(scope)):
            return Match.NONE, {}
        # What the router's routes answer, so callers that ask every route (the 404 and 405 answers) see the same.
        best = Match.NONE
        for route in self.build():
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return Match.FULL, {}
            if match == Match.PARTIAL:
                best = Match.PARTIAL
        return best, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Built in by ``matches``: route the request again, through the routes now in the list.
        await self.app.router.app(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        for route in self.build():
            try:
                return route.url_path_for(name, **path_params)
            except NoMatchFound:
                continue
        raise NoMatchFound(name, path_params)


def placeholders(app: FastAPI) -> list[CapabilityRoutes]:
    return [route for route in app.router.routes if isinstance(route, CapabilityRoutes)]


def load_all(app: FastAPI) -> None:
    """Build every capability in (a SnapStart snapshot, the OpenAPI document, tests that list the routes)."""
    for placeholder in placeholders(app):
        placeholder.build()


def warm_routes(app: FastAPI, prefix: str) -> None:
    """Ask every route once whether it matches: FastAPI prepares an included router's routes (about 70 ms for
    all of them) at its first match, which a SnapStart snapshot then holds instead of a restored container's
    first request."""
    scope: Scope = {"type": "http", "method": "GET", "path": f"{prefix}/", "root_path": "", "headers": []}
    for route in app.router.routes:
        route.matches(scope)
