"""StripeWebhookFunction: ``POST /api/v1/billing/webhooks/stripe`` on the HTTP API (payload v2).

A separate small function (no FastAPI import: a smaller cold start). The raw body is verified with
``stripe.WebhookSignature.verify_header``; bad or stale signatures get 400 ``invalid_signature``, signed bodies that
are not a readable event 400 ``invalid_event`` (``airies.billing.vendors.stripe_events``); every event id is processed once.
An invocation that is not an HTTP API v2 request gets 400 ``invalid_request`` (logged).
"""

from __future__ import annotations

from airies.core import bootstrap

bootstrap.pause_collector_for_init()  # before the imports (airies.core.bootstrap says why)

import base64
import json
from typing import Any

from aws_lambda_powertools.utilities.parser.models import APIGatewayProxyEventV2Model

from airies.billing.payments import WebhookRejected, build_payment_service
from airies.core.config import get_settings
from airies.core.database import get_database
from airies.core.errors import AiriesError, error_body
from airies.core.events import MalformedEvent, parse_event
from airies.core.observability import lambda_handler, logger

settings = get_settings()
database = get_database(settings)


def _response(status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {"statusCode": status, "headers": {"content-type": "application/json"}, "body": json.dumps(body)}


@lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        request = parse_event(APIGatewayProxyEventV2Model, event, source="HTTP API")
    except MalformedEvent as exc:
        return _response(400, error_body("invalid_request", "not an HTTP API request", exc.errors))
    raw = request.body if isinstance(request.body, str) else ""
    payload = base64.b64decode(raw) if request.isBase64Encoded else raw.encode("utf-8")
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        with database.session() as session:
            result = build_payment_service(settings, session).handle_webhook(payload, headers.get("stripe-signature"))
    except WebhookRejected as exc:
        logger.warning("rejected Stripe webhook", extra={"reason": str(exc)})
        return _response(400, error_body("invalid_signature", "invalid Stripe signature", str(exc)))
    except AiriesError as exc:
        return _response(exc.status_code, exc.to_dict())
    logger.info("stripe event", extra=result)
    return _response(200, result)


bootstrap.init_done()  # the module's last statement: its init is over
