"""A local Twilio REST double (API 2010-04-01) the real ``twilio`` SDK talks to over HTTP.

What it serves: ``IncomingPhoneNumbers`` (list filtered by ``PhoneNumber``, update of the voice and status
webhooks), ``Calls`` (create with ``Twiml``/``Url``, update to ``completed``). It speaks Twilio's wire format: HTTP
Basic auth with the account SID and auth token (401 ``{"code": 20003}`` otherwise), form-encoded requests with
repeated keys for lists (``StatusCallbackEvent``), JSON resources with snake_case fields, list pages keyed by the
resource name, errors as ``{"code", "message", "more_info", "status"}``.

``twilio_signature`` signs a webhook the way Twilio documents it (HMAC-SHA1 of the URL followed by every form
field name and value, sorted, keyed with the auth token, base64), written here from the documentation rather
than taken from the SDK, so the platform's check is tested against an independent signer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping, Sequence
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs

from tests.doubles._wire import RecordedRequest, Reply, WireDouble

API_PREFIX = "/2010-04-01/Accounts/"


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str | Sequence[str]]) -> str:
    """Twilio's request signature: base64(HMAC-SHA1(auth_token, url + name1 + value1 + name2 + value2 ...))."""
    data = url
    for name in sorted(params):
        values = params[name]
        for value in sorted([values] if isinstance(values, str) else values):
            data += name + value
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def _error(status: int, code: int, message: str) -> Reply:
    return Reply(
        status,
        {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status},
    )


class TwilioDouble(WireDouble):
    def __init__(self) -> None:
        super().__init__(api_key="")
        self.accounts: dict[str, str] = {}  # account SID -> auth token
        self.numbers: dict[str, dict[str, Any]] = {}  # PN sid -> resource
        self.calls: dict[str, dict[str, Any]] = {}  # CA sid -> resource (+ the form it was created with)

    # -- fixtures ---------------------------------------------------------------------------------------------------
    def add_account(self) -> tuple[str, str]:
        sid, token = new_sid("AC"), secrets.token_hex(16)
        self.accounts[sid] = token
        return sid, token

    def add_number(self, account_sid: str, number: str) -> str:
        sid = new_sid("PN")
        self.numbers[sid] = {
            "sid": sid,
            "account_sid": account_sid,
            "phone_number": number,
            "friendly_name": number,
            "voice_url": None,
            "voice_method": "POST",
            "status_callback": None,
            "status_callback_method": "POST",
            "date_created": formatdate(usegmt=True),
            "date_updated": formatdate(usegmt=True),
            "uri": f"{API_PREFIX}{account_sid}/IncomingPhoneNumbers/{sid}.json",
        }
        return sid

    # -- wire -------------------------------------------------------------------------------------------------------
    def check_auth(self, request: RecordedRequest) -> bool:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        user, _, password = base64.b64decode(encoded).decode().partition(":")
        path_account = request.path.removeprefix(API_PREFIX).split("/", 1)[0].removesuffix(".json")
        return self.accounts.get(user) == password and user == path_account

    def unauthorized(self) -> Reply:
        return _error(401, 20003, "Authenticate")

    def handle(self, request: RecordedRequest) -> tuple[int, dict[str, str], Any]:
        if not request.path.startswith(API_PREFIX):
            raise _error(404, 20404, "The requested resource was not found")
        account, _, rest = request.path.removeprefix(API_PREFIX).partition("/")
        form = parse_qs(request.body.decode(), keep_blank_values=True)
        if request.method == "GET" and rest == "IncomingPhoneNumbers.json":
            return 200, {}, self._list_numbers(account, request.query)
        if request.method == "POST" and rest.startswith("IncomingPhoneNumbers/"):
            return 200, {}, self._update_number(account, rest.split("/")[1].removesuffix(".json"), form)
        if request.method == "POST" and rest == "Calls.json":
            return 201, {}, self._create_call(account, form)
        if request.method == "POST" and rest.startswith("Calls/"):
            return 200, {}, self._update_call(account, rest.split("/")[1].removesuffix(".json"), form)
        raise _error(404, 20404, "The requested resource was not found")

    def _list_numbers(self, account: str, query: dict[str, list[str]]) -> dict[str, Any]:
        wanted = (query.get("PhoneNumber") or [None])[0]
        found = [
            public(n)
            for n in self.numbers.values()
            if n["account_sid"] == account and (wanted is None or n["phone_number"] == wanted)
        ]
        uri = f"{API_PREFIX}{account}/IncomingPhoneNumbers.json"
        return {
            "incoming_phone_numbers": found,
            "first_page_uri": f"{uri}?PageSize=50&Page=0",
            "next_page_uri": None,
            "previous_page_uri": None,
            "page": 0,
            "page_size": 50,
            "start": 0,
            "end": max(len(found) - 1, 0),
            "uri": uri,
        }

    def _update_number(self, account: str, sid: str, form: dict[str, list[str]]) -> dict[str, Any]:
        number = self.numbers.get(sid)
        if number is None or number["account_sid"] != account:
            raise _error(404, 20404, f"The requested resource {sid} was not found")
        fields = {"VoiceUrl": "voice_url", "VoiceMethod": "voice_method", "StatusCallback": "status_callback"}
        fields["StatusCallbackMethod"] = "status_callback_method"
        for key, attribute in fields.items():
            if key in form:
                number[attribute] = form[key][0]
        number["date_updated"] = formatdate(usegmt=True)
        return public(number)

    def _create_call(self, account: str, form: dict[str, list[str]]) -> dict[str, Any]:
        to, from_ = (form.get("To") or [""])[0], (form.get("From") or [""])[0]
        if not to:
            raise _error(400, 21201, "No 'To' number is specified")
        if not from_:
            raise _error(400, 21213, "No 'From' number is specified")
        if not any(n["account_sid"] == account and n["phone_number"] == from_ for n in self.numbers.values()):
            raise _error(400, 21210, f"'From' phone number not verified: {from_}")
        if not (form.get("Twiml") or form.get("Url") or form.get("ApplicationSid")):
            raise _error(400, 21205, "Url, Twiml or ApplicationSid is required")
        sid = new_sid("CA")
        self.calls[sid] = {
            "sid": sid,
            "account_sid": account,
            "to": to,
            "from": from_,
            "status": "queued",
            "direction": "outbound-api",
            "date_created": formatdate(usegmt=True),
            "uri": f"{API_PREFIX}{account}/Calls/{sid}.json",
            "form": form,
        }
        return public(self.calls[sid])

    def _update_call(self, account: str, sid: str, form: dict[str, list[str]]) -> dict[str, Any]:
        call = self.calls.get(sid)
        if call is None or call["account_sid"] != account:
            raise _error(404, 20404, f"The requested resource {sid} was not found")
        if "Status" in form:
            call["status"] = form["Status"][0]
        return public(call)


def public(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource as Twilio returns it (without what the double keeps for the tests)."""
    return json.loads(json.dumps({k: v for k, v in resource.items() if k != "form"}))
