"""The HTTP API: one FastAPI app, served by Mangum on Lambda and by uvicorn locally."""

from __future__ import annotations

from fastapi import FastAPI

from airies import __version__
from airies.accounts import routes as accounts
from airies.agents import routes as agents
from airies.agents.service import agents_using_provider
from airies.api import health
from airies.api.errors import install_error_handlers
from airies.api.middleware import RequestGuardMiddleware
from airies.api.openapi import install_openapi
from airies.api.provider_keys import install_provider_key_vendors
from airies.api.publishable_guard import PublishableKeyGuard
from airies.billing import routes as billing
from airies.conversations import recording_routes as recordings
from airies.conversations import routes as conversations
from airies.conversations.service import get_agent_analytics
from airies.core.config import Settings, get_settings
from airies.core.database import Database, get_database
from airies.knowledge import routes as knowledge
from airies.llm import routes as llm
from airies.telephony import routes as telephony
from airies.voice import routes as voices
from airies.webapp import install_webapp
from airies.webhooks import routes as webhooks
from airies.widget import routes as widget


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
    # Capabilities that answer questions of a capability below them (agents -> conversations, llm -> agents).
    app.state.agent_analytics = get_agent_analytics
    app.state.endpoint_users = agents_using_provider
    install_error_handlers(app)
    install_provider_key_vendors()
    install_openapi(app, settings)

    routers = (
        health,
        accounts,
        agents,
        llm,
        voices,
        conversations,
        recordings,
        knowledge,
        billing,
        widget,
        webhooks,
        telephony,
    )
    # Each straight into the app, with the prefix: including a router without one (the old intermediate router)
    # makes FastAPI build every included route's context to check its path, ~90 ms of the API's init thrown away.
    for module in routers:
        app.include_router(module.router, prefix=settings.api_base_path)
    install_webapp(app, settings)
    app.add_middleware(PublishableKeyGuard, widget_prefix=f"{settings.api_base_path}/widget/")
    app.add_middleware(RequestGuardMiddleware, max_bytes=settings.max_request_bytes, logger=logger)
    return app
