"""The HTTP API: one FastAPI app, served by Mangum on Lambda and by uvicorn locally."""

from __future__ import annotations

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


# Each capability's router, imported by the first request under one of its path segments (``lazy_routes``). A
# loader also wires what its routes ask of another capability through ``app.state``.
def _accounts(_app: FastAPI) -> APIRouter:
    from airies.accounts.routes import router

    return router


def _agents(app: FastAPI) -> APIRouter:
    from airies.agents.routes import router
    from airies.conversations.service import get_agent_analytics

    app.state.agent_analytics = get_agent_analytics  # agents -> conversations
    return router


def _llm(app: FastAPI) -> APIRouter:
    from airies.agents.service import agents_using_provider
    from airies.api.provider_keys import install_provider_key_vendors
    from airies.llm.routes import router

    app.state.endpoint_users = agents_using_provider  # llm -> agents
    install_provider_key_vendors()  # the key validators and status rows its provider-key routes read
    return router


def _voices(_app: FastAPI) -> APIRouter:
    from airies.voice.routes import router

    return router


def _conversations(_app: FastAPI) -> APIRouter:
    from airies.conversations.routes import router

    return router


def _recordings(_app: FastAPI) -> APIRouter:
    from airies.conversations.recording_routes import router

    return router


def _knowledge(_app: FastAPI) -> APIRouter:
    from airies.knowledge.routes import router

    return router


def _billing(_app: FastAPI) -> APIRouter:
    from airies.billing.routes import router

    return router


def _widget(_app: FastAPI) -> APIRouter:
    from airies.widget.routes import router

    return router


def _webhooks(_app: FastAPI) -> APIRouter:
    from airies.webhooks.routes import router

    return router


def _telephony(_app: FastAPI) -> APIRouter:
    from airies.telephony.routes import router

    return router


# In route order: name, the first path segments (after the base path) the router serves, its loader.
CAPABILITIES: tuple[tuple[str, tuple[str, ...], Callable[[FastAPI], APIRouter]], ...] = (
    ("accounts", ("accounts", "api-keys"), _accounts),
    ("agents", ("agents",), _agents),
    ("llm", ("providers", "llm", "provider-keys"), _llm),
    ("voices", ("voices", "transcriptions"), _voices),
    ("conversations", ("conversations",), _conversations),
    ("recordings", ("conversations",), _recordings),
    ("knowledge", ("knowledge-bases",), _knowledge),
    ("billing", ("usage", "billing"), _billing),
    ("widget", ("publishable-keys", "widget"), _widget),
    ("webhooks", ("webhooks", "agents"), _webhooks),
    ("telephony", ("phone-numbers", "calls", "telephony"), _telephony),
)


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
    for name, segments, load in CAPABILITIES:
        app.router.routes.append(CapabilityRoutes(app, name, segments, load, prefix=settings.api_base_path, lock=lock))
    install_webapp(app, settings)
    app.add_middleware(PublishableKeyGuard, widget_prefix=f"{settings.api_base_path}/widget/")
    app.add_middleware(RequestGuardMiddleware, max_bytes=settings.max_request_bytes, logger=logger)
    return app
