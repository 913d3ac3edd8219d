"""Twilio ConversationRelay's side of the WebSocket, as Twilio documents it, driving the live edge in process.

It opens the relay URL the TwiML named (an API Gateway ``$connect`` event with the URL's query and an
``X-Twilio-Signature`` of that URL, signed with the account's auth token: HMAC-SHA1 of the URL with no form
fields), then sends Twilio's messages as ``$default`` events: ``setup`` (the call), ``prompt`` (what the caller
said), ``dtmf``, ``interrupt`` (``utteranceUntilInterrupt``, ``durationUntilInterruptMs``) and ``error``. What the
platform posts back (``text`` tokens, ``end``) is read through ``frames`` (the harness's posted frames).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.doubles.twilio_server import new_sid, twilio_signature

DOMAIN = "abc123.execute-api.us-east-1.amazonaws.com"


class RelayClient:
    def __init__(
        self,
        service: Any,
        url: str,
        auth_token: str,
        frames: Callable[[str], list[dict[str, Any]]],
        *,
        account_sid: str,
        call_sid: str | None = None,
        from_: str = "+14155550199",
        to: str = "+14155550100",
    ) -> None:
        self.service = service
        self.url = url
        self.auth_token = auth_token
        self._frames = frames
        self.account_sid = account_sid
        self.call_sid = call_sid or new_sid("CA")
        self.from_, self.to = from_, to
        self.connection_id = uuid.uuid4().hex[:15] + "="
        self.seen = 0  # frames already read by ``reply``

    def _context(self, route: str, event_type: str) -> dict[str, Any]:
        return {
            "routeKey": route,
            "eventType": event_type,
            "connectionId": self.connection_id,
            "domainName": DOMAIN,
            "stage": "test",
        }

    def connect(self, *, signature: str | None = "", url: str | None = None) -> dict[str, Any]:
        """The handshake; ``signature``: "" signs the URL with the auth token, None sends none."""
        target = url or self.url
        headers = {"Host": DOMAIN, "Sec-WebSocket-Version": "13"}
        if signature is not None:
            headers["X-Twilio-Signature"] = signature or twilio_signature(self.auth_token, target, {})
        event = {
            "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()},
            "queryStringParameters": dict(parse_qsl(urlsplit(target).query)),
            "requestContext": self._context("$connect", "CONNECT"),
        }
        return dict(self.service.handle_connection(event))

    def send(self, message: dict[str, Any] | str) -> dict[str, Any]:
        body = message if isinstance(message, str) else json.dumps(message)
        event = {"body": body, "isBase64Encoded": False, "requestContext": self._context("$default", "MESSAGE")}
        return dict(self.service.handle_message(event))

    # -- Twilio's messages -------------------------------------------------------------------------------------------
    def setup(self, **override: Any) -> dict[str, Any]:
        return self.send(
            {
                "type": "setup",
                "sessionId": new_sid("VX"),
                "accountSid": self.account_sid,
                "parentCallSid": "",
                "callSid": self.call_sid,
                "from": self.from_,
                "to": self.to,
                "forwardedFrom": "",
                "callType": "PSTN",
                "callerName": "",
                "direction": "inbound",
                "callStatus": "IN-PROGRESS",
                "customParameters": {},
                **override,
            }
        )

    def prompt(self, text: str, *, last: bool = True, lang: str = "en-US") -> dict[str, Any]:
        return self.send({"type": "prompt", "voicePrompt": text, "lang": lang, "last": last})

    def dtmf(self, digit: str) -> dict[str, Any]:
        return self.send({"type": "dtmf", "digit": digit})

    def interrupt(self, heard: str, duration_ms: int) -> dict[str, Any]:
        return self.send(
            {"type": "interrupt", "utteranceUntilInterrupt": heard, "durationUntilInterruptMs": duration_ms}
        )

    # -- what came back ----------------------------------------------------------------------------------------------
    def frames(self) -> list[dict[str, Any]]:
        return self._frames(self.connection_id)

    def new_frames(self) -> list[dict[str, Any]]:
        frames = self.frames()
        fresh, self.seen = frames[self.seen :], len(frames)
        return fresh

    @staticmethod
    def reply_of(frames: list[dict[str, Any]]) -> str:
        """The text of the agent's reply (its tokens up to ``last: true``)."""
        return "".join(f["token"] for f in frames if f.get("type") == "text")
