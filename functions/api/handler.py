"""ApiFunction: the HTTP API (FastAPI behind Mangum). Everything is built once per container."""

from __future__ import annotations

from typing import Any

from mangum import Mangum

from airies.api.app import create_app
from airies.core.observability import lambda_handler, logger

app = create_app(logger=logger)
_asgi = Mangum(app, lifespan="off")


@lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return _asgi(event, context)


def _reopen_connections_after_restore() -> None:
    # SnapStart: pooled connections in the snapshot are dead after restore.
    app.state.database.dispose()


try:  # Only present on the Lambda runtime with SnapStart enabled.
    from snapshot_restore_py import register_after_restore  # type: ignore[import-not-found]

    register_after_restore(_reopen_connections_after_restore)
except ImportError:
    pass
