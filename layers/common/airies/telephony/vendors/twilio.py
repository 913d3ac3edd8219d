"""Twilio through its official SDK (``twilio`` 9): incoming phone numbers, calls, webhook signatures.

``twilio_api_base`` (a local double in tests) replaces the API domain's base URL; everything else is the SDK's own
request path (auth, form encoding, paging, errors).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.request_validator import RequestValidator

from airies.core.config import Settings
from airies.core.errors import ProviderError, ValidationFailedError
from airies.telephony.vendors.base import CarrierCredentials, CarrierNumber, OutboundCall

NAME = "twilio"
# Twilio error codes that name the caller's input (an invalid or unverified number), not a fault on Twilio's side.
_INPUT_STATUSES = (400, 404, 422)


class _Params(dict[str, list[str]]):
    """The form as RequestValidator reads a multi-valued mapping (``getlist``, like Django's QueryDict)."""

    def getlist(self, name: str) -> list[str]:
        return self[name]


def signature_valid(auth_token: str, url: str, params: Mapping[str, Sequence[str]], signature: str | None) -> bool:
    """Twilio's own check (HMAC-SHA1 of the URL and the sorted form fields, with and without the port)."""
    if not signature or not auth_token:
        return False
    form = _Params({name: list(values) for name, values in params.items()})
    return bool(RequestValidator(auth_token).validate(url, form, signature))


def _status_and_reason(exc: TwilioException) -> tuple[int, dict[str, Any]] | None:
    """The HTTP status and Twilio's error of a failed request: a TwilioRestException carries them; a list page
    that failed raises a plain TwilioException("Unable to fetch page", response) with the response."""
    if isinstance(exc, TwilioRestException):
        return int(exc.status or 0), {"code": exc.code, "message": exc.msg}
    response = exc.args[1] if len(exc.args) > 1 else None
    status = getattr(response, "status_code", None)
    if not isinstance(status, int):
        return None
    try:
        body = json.loads(getattr(response, "text", "") or "{}")
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    return status, {"code": body.get("code", status), "message": body.get("message", str(exc.args[0]))}


def _failure(exc: Exception, action: str) -> Exception:
    found = _status_and_reason(exc) if isinstance(exc, TwilioException) else None
    if found is not None:
        status, reason = found
        if status in (401, 403):
            return ValidationFailedError(
                "Twilio rejected the account SID or auth token",
                code="carrier_credentials_rejected",
                details=[{"field": "twilio", "code": "rejected_by_provider", "message": str(reason["message"])}],
            )
        if status in _INPUT_STATUSES:
            return ValidationFailedError(
                f"Twilio refused to {action}: {reason['message']}",
                code="carrier_refused",
                details=[{"field": "twilio", "code": f"twilio_{reason['code']}", "message": str(reason["message"])}],
            )
        return ProviderError(
            f"Twilio failed to {action}",
            provider=NAME,
            retryable=status == 429 or status >= 500,
            upstream_status=status or None,
            details=reason,
        )
    return ProviderError(f"Twilio could not be reached to {action}", provider=NAME, retryable=True)


class TwilioCarrier:
    name = NAME

    def __init__(self, credentials: CarrierCredentials, settings: Settings) -> None:
        # lazy: the REST client and requests (~70 ms) stay off the cold start of every function that only checks
        # signatures (the API's webhooks) or never calls Twilio
        from twilio.http.http_client import TwilioHttpClient
        from twilio.rest import Client

        self.client = Client(
            credentials.account_sid,
            credentials.auth_token,
            http_client=TwilioHttpClient(timeout=settings.twilio_timeout_s),
        )
        if settings.twilio_api_base:
            self.client.api.base_url = settings.twilio_api_base.rstrip("/")

    def _call(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import requests  # loaded by the client already (see __init__)

        try:
            return fn(*args, **kwargs)
        except (TwilioException, requests.RequestException) as exc:
            raise _failure(exc, action) from exc

    def find_number(self, number: str) -> CarrierNumber | None:
        found = self._call(
            "list the account's phone numbers", self.client.incoming_phone_numbers.list, phone_number=number, limit=20
        )
        for item in found:
            if item.phone_number == number:
                return CarrierNumber(
                    sid=item.sid,
                    number=item.phone_number,
                    voice_url=item.voice_url,
                    status_callback=item.status_callback,
                )
        return None

    def configure_number(self, sid: str, *, voice_url: str, status_callback: str) -> CarrierNumber:
        item = self._call(
            "set the number's webhooks",
            self.client.incoming_phone_numbers(sid).update,
            voice_url=voice_url,
            voice_method="POST",
            status_callback=status_callback,
            status_callback_method="POST",
        )
        return CarrierNumber(
            sid=item.sid, number=item.phone_number, voice_url=item.voice_url, status_callback=item.status_callback
        )

    def place_call(self, call: OutboundCall) -> str:
        extra: dict[str, Any] = {"machine_detection": "Enable"} if call.machine_detection else {}
        created = self._call(
            "place the call",
            self.client.calls.create,
            to=call.to,
            from_=call.from_,
            twiml=call.twiml,
            status_callback=call.status_callback,
            status_callback_method="POST",
            status_callback_event=["initiated", "ringing", "answered", "completed"],
            **extra,
        )
        return str(created.sid)

    def hang_up(self, call_sid: str) -> None:
        self._call("end the call", self.client.calls(call_sid).update, status="completed")
