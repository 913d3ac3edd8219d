"""The OpenAPI document and Swagger UI: usable offline, with the Authorize button.

* ``bearerAuth``: every operation takes ``Authorization: Bearer <API key>`` except :data:`PUBLIC_OPERATIONS`;
* every operation documents its 4xx answers with the one error shape (:class:`airies.core.schemas.ErrorResponse`),
  including FastAPI's request validation, which this API answers in that shape too (``airies.api.errors``);
* Swagger UI's files come from the pinned ``swagger-ui-bundle`` package, served under ``<base>/docs/assets``: the
  page at ``<base>/docs`` loads nothing from another host.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from airies.api.lazy_routes import load_all
from airies.core.config import Settings
from airies.core.schemas import ErrorResponse

SECURITY_SCHEME = "bearerAuth"
# Operations (method, path without the base path) that take no API key: the health check, sign-up, the vendors'
# webhooks (signed by Stripe and Twilio) and the widget's (its publishable key is in the path).
PUBLIC_OPERATIONS = frozenset(
    {
        ("get", "/health"),
        ("post", "/accounts"),
        ("post", "/billing/webhooks/stripe"),
        ("post", "/telephony/twilio/voice"),
        ("post", "/telephony/twilio/status"),
        ("post", "/widget/{publishable_key}/conversations"),
    }
)
ERRORS: dict[str, str] = {
    "400": "Bad request: malformed input (error codes such as bad_request, malformed_json)",
    "401": "No valid API key (code unauthorized)",
    "404": "Not found, or owned by another account (code not_found)",
    "422": "The request failed validation (codes invalid_request, validation_failed; details list the fields)",
    "429": "Too many requests or a plan limit reached (code rate_limited; see Retry-After)",
}
ASSETS = "docs/assets"


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }


def build_openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=(
            "The Airies API. Authorize with an API key (``Authorization: Bearer <key>``): sign up with "
            "``POST /accounts`` or use the local stack's dev key. Every error has the body ``ErrorResponse``."
        ),
        routes=app.routes,
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(error_schema.pop("$defs", {}))
    schemas["ErrorResponse"] = error_schema
    # The API answers validation errors as ErrorResponse, not FastAPI's HTTPValidationError.
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    components["securitySchemes"] = {
        SECURITY_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "An Airies API key: Authorization: Bearer <key>",
        }
    }
    schema["security"] = [{SECURITY_SCHEME: []}]
    base = settings.api_base_path
    for path, item in schema.get("paths", {}).items():
        local = path.removeprefix(base)
        for method, operation in item.items():
            public = (method, local) in PUBLIC_OPERATIONS
            if public:
                operation["security"] = []
            responses = operation.setdefault("responses", {})
            for status, description in ERRORS.items():
                if status == "401" and public and "{publishable_key}" not in local:
                    continue
                responses[status] = _error_response(description)
    return schema


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """The OpenAPI document (built once) and Swagger UI at ``<base>/docs`` with its assets from the package.
    ``create_app`` builds the app with ``docs_url=None`` so this page replaces FastAPI's CDN one."""
    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if "schema" not in cached:
            load_all(app)  # every capability's routes, not only those a request has built in so far
            cached["schema"] = build_openapi(app, settings)
        return cached["schema"]

    app.openapi = openapi  # type: ignore[method-assign]
    base = settings.api_base_path
    app.mount(f"{base}/{ASSETS}", StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui-assets")

    @app.get(f"{base}/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=f"{base}/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{base}/{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{base}/{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{base}/{ASSETS}/favicon-32x32.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )
