"""The web app (dashboard + ``widget.js``), served by the same FastAPI app as the API: locally under ``make run`` and
on AWS from the API function (docs/web-app.md says why). The files are built from ``web/`` into ``dist/`` here, so
the Lambda layer ships them like any package data.

Whatever no API route matched reaches :class:`WebAppFallback` (the router's default handler, so the order in
which routes are added does not matter): a built file, else ``index.html`` for the app's own paths (the SPA's
history routes). Paths under the API prefix and the WebSocket gateway keep the API's JSON 404.
"""

from __future__ import annotations

import hashlib
import mimetypes
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from airies.core.config import Settings

DIST_DIR = Path(__file__).resolve().parent / "dist"
INDEX = "index.html"
# Vite names every file under assets/ by its content hash: a year, never revalidated.
IMMUTABLE = "public, max-age=31536000, immutable"
# The page and the widget loader keep their URLs across releases: revalidate (ETag) or keep briefly.
REVALIDATE = "no-cache"
WIDGET_CACHE = "public, max-age=300"
OTHER_CACHE = "public, max-age=3600"
RESERVED_PREFIXES = ("/ws", "/ws-management")
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' blob:",  # the AudioWorklet processors load from Blob URLs
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        # Presigned S3 URLs: document uploads (POST) and call recordings (GET) go straight to the bucket.
        "connect-src 'self' ws: wss: http: https:",
        "media-src 'self' blob: http: https:",
        "worker-src 'self' blob:",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ]
)
HTML_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
NOT_BUILT = (
    "<!doctype html><title>Airies</title><p>The web app is not built: run <code>make web</code> "
    "(<code>make run</code> builds it).</p>"
)


def cache_control(relative: str) -> str:
    if relative.startswith("assets/"):
        return IMMUTABLE
    if relative == INDEX:
        return REVALIDATE
    if relative == "widget.js":
        return WIDGET_CACHE
    return OTHER_CACHE


class WebAppFallback:
    """ASGI app run when no route matched (``app.router.default``)."""

    def __init__(self, dist_dir: Path, api_prefix: str, not_found: Any) -> None:
        self.dist_dir = dist_dir.resolve()
        self.api_prefix = api_prefix.rstrip("/")
        self.not_found = not_found  # the router's own 404 (FastAPI turns it into the API's JSON error)
        self._etags: dict[Path, tuple[float, int, str]] = {}

    def _reserved(self, path: str) -> bool:
        prefixes = (self.api_prefix, *RESERVED_PREFIXES)
        return any(path == prefix or path.startswith(prefix + "/") for prefix in prefixes)

    def _file(self, path: str) -> Path | None:
        """The built file for a URL path; None for anything outside dist (no ``..``, no absolute paths)."""
        parts = PurePosixPath(path).parts[1:]
        if any(part in ("..", ".") or "\\" in part or part.startswith(".") for part in parts):
            return None
        candidate = self.dist_dir.joinpath(*parts) if parts else self.dist_dir / INDEX
        try:
            resolved = candidate.resolve()
        except (OSError, ValueError):
            return None
        if resolved.is_file() and resolved.is_relative_to(self.dist_dir):
            return resolved
        return None

    def _etag(self, file: Path) -> str:
        stat = file.stat()
        cached = self._etags.get(file)
        if cached and cached[:2] == (stat.st_mtime, stat.st_size):
            return cached[2]
        etag = '"' + hashlib.sha256(file.read_bytes()).hexdigest()[:32] + '"'
        self._etags[file] = (stat.st_mtime, stat.st_size, etag)
        return etag

    def _respond(self, file: Path, headers_in: dict[str, str], method: str) -> Response:
        relative = file.relative_to(self.dist_dir).as_posix()
        etag = self._etag(file)
        media_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if media_type.startswith("text/") or media_type in ("application/javascript", "application/json"):
            media_type += "; charset=utf-8"
        headers = {"cache-control": cache_control(relative), "etag": etag, "x-content-type-options": "nosniff"}
        if relative == INDEX:
            headers.update(HTML_HEADERS)
        if etag in {tag.strip() for tag in headers_in.get("if-none-match", "").split(",")}:
            return Response(status_code=304, headers=headers)
        body = b"" if method == "HEAD" else file.read_bytes()
        response = Response(body, media_type=media_type, headers=headers)
        if method == "HEAD":
            response.headers["content-length"] = str(file.stat().st_size)
        return response

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path: str = scope.get("path", "/")
        method: str = scope.get("method", "")
        if scope["type"] != "http" or method not in ("GET", "HEAD") or self._reserved(path):
            await self.not_found(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}
        file = self._file(path)
        if file is None:
            last = PurePosixPath(path).name
            if "." in last:  # a missing file (/assets/old-hash.js, /favicon.ico): a plain 404, not the page
                response: Response = Response("not found", status_code=404, media_type="text/plain")
            else:  # one of the app's own routes (/agents/agt_1): the page, which routes in the browser
                index = self.dist_dir / INDEX
                if index.is_file():
                    response = self._respond(index, headers, method)
                else:
                    response = Response(NOT_BUILT, status_code=503, media_type="text/html", headers=HTML_HEADERS)
        else:
            response = self._respond(file, headers, method)
        await response(scope, receive, send)


def install_webapp(app: FastAPI, settings: Settings) -> None:
    """Serve the built web app for every path no API route claims, and the app's run-time config."""
    dist_dir = Path(settings.web_dist_dir) if settings.web_dist_dir else DIST_DIR
    app.router.default = WebAppFallback(dist_dir, settings.api_base_path, app.router.default)

    @app.get("/app-config.json", include_in_schema=False)
    def app_config(request: Request) -> JSONResponse:
        """What the page needs before sign-in. The dev key only on the local stage (``make run``)."""
        local = settings.stage == "local"
        dev_key = (getattr(request.app.state, "dev_api_key", None) or settings.dev_api_key) if local else None
        return JSONResponse(
            {"stage": settings.stage, "api_base_path": settings.api_base_path, "dev_api_key": dev_key},
            headers={"cache-control": "no-store"},
        )
