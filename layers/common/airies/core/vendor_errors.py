"""Turning vendor failures into ``ProviderError`` with the vendor's own reason (shared by STT/TTS providers)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from airies.core.errors import ProviderError

RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504, 529}


def reason_from_body(body: Any) -> Any:
    """The useful part of a vendor error body (Deepgram err_msg, ElevenLabs detail, OpenAI error.message)."""
    if isinstance(body, bytes | bytearray):
        body = body.decode(errors="replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return body.strip()[:500] or None
    if isinstance(body, Mapping):
        if "message" in body and ("code" in body or "type" in body):  # openai hands over the inner error object
            return {k: body[k] for k in ("status", "code", "type", "message") if k in body}
        for key in ("err_msg", "detail", "error", "message"):
            if body.get(key):
                value = body[key]
                if isinstance(value, Mapping) and "message" in value:
                    return {k: value[k] for k in ("status", "code", "type", "message") if k in value}
                return value
    return body


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        if "retry-after-ms" in lowered:
            return float(lowered["retry-after-ms"]) / 1000
        if "retry-after" in lowered:
            return float(lowered["retry-after"])
    except ValueError:
        return None
    return None


def http_provider_error(
    provider: str, status: int | None, body: Any = None, headers: Mapping[str, str] | None = None
) -> ProviderError:
    reason = reason_from_body(body)
    if status in (401, 403):
        message = f"{provider} rejected the API key ({status})"
    elif status == 429:
        message = f"{provider} rate limit reached"
    elif status is not None and status >= 500:
        message = f"{provider} failed with {status}"
    else:
        message = f"{provider} rejected the request ({status})"
    return ProviderError(
        message,
        provider=provider,
        retryable=status in RETRYABLE,
        upstream_status=status,
        retry_after=retry_after(headers),
        details=reason,
    )


def transport_error(provider: str, exc: BaseException) -> ProviderError:
    kind = "timed out" if "timeout" in type(exc).__name__.lower() else "could not be reached"
    return ProviderError(
        f"{provider} {kind}", provider=provider, retryable=True, details=f"{type(exc).__name__}: {exc}"[:500]
    )
