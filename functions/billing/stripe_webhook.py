"""StripeWebhookFunction: ``POST /api/v1/billing/webhooks/stripe`` on the HTTP API (payload v2).

A separate small function (no FastAPI import: a smaller cold start). The raw body is verified with
``stripe.WebhookSignature.verify_header``; bad or stale signatures get 400 ``invalid_signature``, signed bodies that
are not a readable event 400 ``invalid_event`` (``airies.billing.vendors.stripe_events``); every event id is processed once.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from airies.billing.payments import WebhookRejected, build_payment_service
from airies.core.config import get_settings
from airies.core.database import get_database
from airies.core.errors import AiriesError
from airies.core.observability import lambda_handler, logger

settings = get_settings()
database = get_database(settings)


def _response(status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {"statusCode": status, "headers": {"content-type": "application/json"}, "body": json.dumps(body)}


@lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    raw = event.get("body") or ""
    payload = base64.b64decode(raw) if event.get("isBase64Encoded") else raw.encode("utf-8")
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    try:
        with database.session() as session:
            result = build_payment_service(settings, session).handle_webhook(payload, headers.get("stripe-signature"))
    except WebhookRejected as exc:
        logger.warning("rejected Stripe webhook", extra={"reason": str(exc)})
        return _response(
            400, {"error": {"code": "invalid_signature", "message": "invalid Stripe signature", "details": str(exc)}}
        )
    except AiriesError as exc:
        return _response(exc.status_code, exc.to_dict())
    logger.info("stripe event", extra=result)
    return _response(200, result)
