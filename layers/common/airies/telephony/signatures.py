"""Carrier webhooks: the public URLs set at the carrier, and the signature check of what arrives on them.

A carrier signs the exact URL it requested (scheme, host, path, query) with the owning account's auth token, so
the URL is rebuilt from the API's public origin (what the carrier was given), never from the Host header; a request
signed for one of our URLs and replayed to another fails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airies.core.config import Settings
from airies.core.errors import ForbiddenError
from airies.telephony.vendors import CARRIERS

VOICE_PATH = "/telephony/twilio/voice"
STATUS_PATH = "/telephony/twilio/status"
ACTION_PATH = "/telephony/twilio/relay-action"  # the ConversationRelay <Connect> action: the relay has ended
SIGNATURE_HEADER = "x-twilio-signature"


def api_origin(settings: Settings, aws_event: Mapping[str, Any] | None = None) -> str:
    """Where the carrier reaches the API: ``public_api_url`` when it is set; else, on AWS, the domain API Gateway
    served the request on (its request context, never a client's Host header); else the local default."""
    domain = ((aws_event or {}).get("requestContext") or {}).get("domainName")
    if "public_api_url" in settings.model_fields_set or not domain:
        return settings.public_api_url.rstrip("/")
    return f"https://{domain}"


def public_url(origin: str, settings: Settings, path: str, query: str = "") -> str:
    """The URL the carrier calls for ``path`` (relative to the API base path), as it signs it."""
    url = f"{origin}{settings.api_base_path}{path}"
    return f"{url}?{query}" if query else url


def check_signature(
    carrier: str, auth_token: str, url: str, form: Mapping[str, Sequence[str]], signature: str | None
) -> None:
    """403 unless ``signature`` signs this request with ``auth_token`` (nothing is read or written before)."""
    if not CARRIERS[carrier].signature_valid(auth_token, url, form, signature):
        raise ForbiddenError("the request signature is missing or invalid", code="invalid_signature")
