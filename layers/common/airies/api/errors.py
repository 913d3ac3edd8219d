"""Every error leaves the API as ``{"error": {"code", "message", "details"}}`` with the right status."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from airies.api.middleware import BodyRejected
from airies.core.errors import AiriesError, RateLimitedError, error_body

_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _clean(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cleaned = []
    for err in errors:
        loc = [str(part) for part in err.get("loc", ()) if part != "body"]
        cleaned.append({"field": ".".join(loc) or "body", "code": err.get("type"), "message": err.get("msg")})
    return cleaned


def _without_trailing_slash(request: Request) -> str | None:
    """The request's path without its trailing slash(es), when a route answers that path (with any method)."""
    path = request.scope["path"]
    trimmed = path.rstrip("/")
    if trimmed == path or not trimmed:
        return None
    if any(_routes_match(request, path=trimmed, method=method) for method in _METHODS):
        return trimmed
    return None


def _routes_match(request: Request, **changes: str) -> bool:
    """Whether a route fully matches the request with ``changes`` (``path``, ``method``) applied to its scope."""
    scope = {**request.scope, **changes}
    return any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on the request's path (the router's 405 names only the first route's)."""
    return [method for method in _METHODS if _routes_match(request, method=method)]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AiriesError)
    async def _airies_error(_request: Request, exc: AiriesError) -> JSONResponse:
        headers = {}
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(exc, RateLimitedError) and retry_after:
            headers["Retry-After"] = str(int(retry_after + 0.999))
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(err.get("type") == "json_invalid" for err in errors):
            return JSONResponse(error_body("malformed_json", "request body is not valid JSON", _clean(errors)), 400)
        return JSONResponse(error_body("invalid_request", "request failed validation", _clean(errors)), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, BodyRejected):
            return JSONResponse(error_body(exc.code, str(exc.detail)), exc.status_code)
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 413: "payload_too_large"}
        code = codes.get(exc.status_code, "http_error")
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            return JSONResponse(error_body("malformed_json", "request body is not valid UTF-8 JSON"), 400)
        message = str(exc.detail)
        details: Any = None
        if exc.status_code == 404 and exc.detail == "Not Found":  # the router's: no route has this path
            message = f"no route {request.method} {request.url.path}"
            suggestion = _without_trailing_slash(request)
            if suggestion is not None:
                message += f" (routes have no trailing slash: {suggestion})"
                details = {"path": suggestion}
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            allowed = _allowed_methods(request)  # every route of the path, not only the first one the router tried
            message = f"{request.method} is not allowed on {request.url.path}; allowed: {', '.join(allowed)}"
            details, headers = {"allowed": allowed}, {**(headers or {}), "Allow": ", ".join(allowed)}
        return JSONResponse(error_body(code, message, details), exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger = getattr(request.app.state, "logger", None)
        if logger is not None:
            logger.exception("unhandled error")
        return JSONResponse(error_body("internal_error", "internal server error"), 500)
