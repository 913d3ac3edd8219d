"""ApiFunction: the HTTP API (FastAPI behind Mangum). The app is built once per container; each capability's routes
by the first request that needs them (``airies.api.lazy_routes``), or all of them in the SnapStart snapshot. An
invocation that is not an HTTP API (payload v2) request gets 400 ``invalid_request`` (logged)."""

from __future__ import annotations

from airies.core import bootstrap

bootstrap.pause_collector_for_init()  # before the imports (airies.core.bootstrap says why)

import json
from typing import Any

from aws_lambda_powertools.utilities.parser.models import APIGatewayProxyEventV2Model
from mangum import Mangum

from airies.api.app import create_app
from airies.api.lazy_routes import load_all, warm_routes
from airies.conversations.turn_metrics import TurnMetrics
from airies.core import aws
from airies.core.bootstrap import after_snapstart_restore
from airies.core.errors import error_body
from airies.core.events import MalformedEvent, parse_event
from airies.core.metrics import MonitoringService
from airies.core.observability import lambda_handler, logger, metrics
from airies.knowledge.metrics import DocumentMetrics

app = create_app(logger=logger)
monitoring = MonitoringService(metrics=metrics, logger=logger)  # flushed per invocation
app.state.turn_metrics = TurnMetrics(monitoring)  # REST turns
app.state.document_metrics = DocumentMetrics(monitoring)  # inline document uploads
_asgi = Mangum(app, lifespan="off")


@lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        parse_event(APIGatewayProxyEventV2Model, event, source="HTTP API")
    except MalformedEvent as exc:
        body = error_body("invalid_request", "not an HTTP API request", exc.errors)
        return {"statusCode": 400, "headers": {"content-type": "application/json"}, "body": json.dumps(body)}
    # Mangum reads the same event (the validated model is not handed on: Mangum takes the API Gateway dict).
    return _asgi(event, context)


def _reopen_connections_after_restore() -> None:
    # SnapStart: pooled connections in the snapshot are dead after restore.
    app.state.database.dispose()


after_snapstart_restore(_reopen_connections_after_restore)
# The snapshot loads boto3, the secret readers and the service models the routes call, so a restored container's
# first request reads the database secret without importing or building any of them.
aws.prime_for_snapshot()
if bootstrap.initializing_snapshot():  # in the snapshot, not in a restored container's first request:
    load_all(app)  # every capability's routes
    warm_routes(app, app.state.settings.api_base_path)  # and FastAPI's preparation of them

bootstrap.init_done()  # the module's last statement: its init is over
