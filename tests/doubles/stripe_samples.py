"""Setup callables for the billing functions' sample events (``infra/events/*.meta.json``)."""

from __future__ import annotations

import json
import time
import uuid

SAMPLE_WEBHOOK_SECRET = "whsec_sample_events"


def setup_signed_webhook(_sample) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """``{{body}}`` and ``{{signature}}``: a fresh event signed now with the SDK's own helper."""
    import stripe

    body = json.dumps(
        {
            "id": f"evt_sample_{uuid.uuid4().hex[:12]}",
            "object": "event",
            "type": "customer.created",
            "created": int(time.time()),
            "livemode": False,
            "data": {"object": {"id": "cus_sample", "object": "customer"}},
        }
    )
    return {"body": body, "signature": stripe.WebhookSignature.generate_signature_header(body, SAMPLE_WEBHOOK_SECRET)}
