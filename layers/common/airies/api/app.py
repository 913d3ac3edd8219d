"""The HTTP API: one FastAPI app, served by Mangum on Lambda and by uvicorn locally."""

from __future__ import annotations

import functools
import importlib
import threading
from collections.abc import Callable

from fastapi import APIRouter, FastAPI

from airies import __version__
from airies.api import health
from airies.api.errors import install_error_handlers
from airies.api.lazy_routes import CapabilityRoutes
from airies.api.middleware import RequestGuardMiddleware
from airies.api.openapi import install_openapi
from airies.api.publishable_guard import PublishableKeyGuard
from airies.core.config import Settings, get_settings
from airies.core.database import Database, get_database
from airies.webapp import install_webapp


# What a capability's routes ask of another capability, wired through ``app.state`` when its routes are built.
def _wire_agents(app: FastAPI) -> None:
    from airies.conversations.service import get_agent_analytics

    app.state.agent_analytics = get_agent_analytics  # agents -> conversations


def _wire_llm(app: FastAPI) -> None:
    from airies.agents.service import agents_using_provider
    from airies.api.provider_keys import install_provider_key_vendors

    app.state.endpoint_users = agents_using_provider  # llm -> agents
    install_provider_key_vendors()  # the key validators and status rows its provider-key routes read


WIRING: dict[str, Callable[[FastAPI], None]] = {"airies.agents.routes": _wire_agents, "airies.llm.routes": _wire_llm}

# In route order: name, the first path segments (after the base path) its router serves, the module of its
# ``router``, imported by the first request under one of the segments (``lazy_routes``).
CAPABILITIES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("accounts", ("accounts", "api-keys"), "airies.accounts.routes"),
    ("agents", ("agents",), "airies.agents.routes"),
    ("llm", ("providers", "llm", "provider-keys"), "airies.llm.routes"),
    ("voices", ("voices", "transcriptions"), "airies.voice.routes"),
    ("conversations", ("conversations",), "airies.conversations.routes"),
    ("recordings", ("conversations",), "airies.conversations.recording_routes"),
    ("knowledge", ("knowledge-bases",), "airies.knowledge.routes"),
    ("billing", ("usage", "billing"), "airies.billing.routes"),
    ("widget", ("publishable-keys", "widget"), "airies.widget.routes"),
    ("webhooks", ("webhooks", "agents"), "airies.webhooks.routes"),
    ("telephony", ("phone-numbers", "calls", "telephony"), "airies.telephony.routes"),
)


def load_router(module: str, app: FastAPI) -> APIRouter:
    """A capability's router, with what its routes ask of another capability wired into ``app``."""
    wire = WIRING.get(module)
    if wire is not None:
        wire(app)
    router: APIRouter = importlib.import_module(module).router
    return router


def create_app(settings: Settings | None = None, database: Database | None = None, logger: object = None) -> FastAPI:
    settings = settings or get_settings()
    database = database or get_database(settings)
    app = FastAPI(
        title="Airies API",
        version=__version__,
        docs_url=None,  # airies.api.openapi serves Swagger UI from a package, not a CDN
        openapi_url=f"{settings.api_base_path}/openapi.json",
        redoc_url=None,
        # One URL per resource: "/documents/" is a JSON 404 that names the route without the slash, never a 307
        # with an empty body (clients drop the body of a redirected POST, and API Gateway passes both forms).
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.database = database
    app.state.logger = logger
    install_error_handlers(app)
    install_openapi(app, settings)

    # Each router straight into the app, with the prefix: including a router without one (an intermediate router)
    # makes FastAPI build every included route's context to check its path, ~90 ms thrown away.
    app.include_router(health.router, prefix=settings.api_base_path)
    lock = threading.Lock()  # the local server may route on several threads
    for name, segments, module in CAPABILITIES:
        load = functools.partial(load_router, module)
        app.router.routes.append(CapabilityRoutes(app, name, segments, load, prefix=settings.api_base_path, lock=lock))
    install_webapp(app, settings)
    app.add_middleware(PublishableKeyGuard, widget_prefix=f"{settings.api_base_path}/widget/")
    app.add_middleware(RequestGuardMiddleware, max_bytes=settings.max_request_bytes, logger=logger)
    return app
