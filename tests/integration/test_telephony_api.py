"""Telephony through the API with the real twilio SDK against the local Twilio double: phone numbers (import,
reassign, delete, tenancy), signed inbound calls answered with ConversationRelay TwiML, status callbacks through
to the end of the call, outbound calls, and bad input on every route answered with a clear 4xx and nothing stored."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from sqlalchemy import func, select

from airies.billing.schemas import UsageEvent
from airies.billing.usage import UsageService
from airies.conversations.models import Conversation
from airies.conversations.service import ConversationTokens, token_secret
from airies.core.config import Settings
from airies.core.models import utcnow
from airies.telephony.models import PhoneCall, PhoneNumber
from tests.conftest import signup
from tests.doubles.twilio_server import TwilioDouble, new_sid, twilio_signature
from tests.integration.test_conv_api import deployed_agent

PUBLIC_API = "https://voice.example.test"
PUBLIC_WS = "wss://ws.example.test/live"
VOICE_URL = f"{PUBLIC_API}/api/v1/telephony/twilio/voice"
STATUS_URL = f"{PUBLIC_API}/api/v1/telephony/twilio/status"
NUMBER = "+14155550100"
CALLER = "+14155550199"
FORM = {"content-type": "application/x-www-form-urlencoded"}
PHONE_AGENT = {
    "name": "Front desk",
    "system_prompt": "You answer the phone.",
    "first_message": "Thanks for calling Acme, how can I help?",
    "voice": {"provider": "elevenlabs", "voice_id": "21m00Tcm4TlvDq8ikWAM"},
    "transcriber": {"provider": "deepgram", "model": "nova-3", "language": "en", "keywords": ["Acme", "refund"]},
    "end_call_phrases": ["goodbye", "that's all"],
    "interruption": {"enabled": False},
}


@pytest.fixture
def twilio() -> Iterator[TwilioDouble]:
    with TwilioDouble() as double:
        yield double


def telephony_settings(tmp_path: Path, twilio: TwilioDouble, **extra: Any) -> Settings:
    """Settings for a platform whose Twilio is the double and whose public URLs are the test ones."""
    return Settings(
        stage="local",
        usage_queue_url=None,  # usage straight into the ledger (tests/conftest.py says why it is pinned)
        webhook_queue_url=None,
        data_dir=tmp_path,
        allow_public_signup=True,
        twilio_api_base=twilio.url,
        public_api_url=PUBLIC_API,
        public_ws_url=PUBLIC_WS,
        **extra,
    )


@pytest.fixture
def settings(tmp_path: Path, twilio: TwilioDouble) -> Settings:
    return telephony_settings(tmp_path, twilio)


def import_number(client, auth, twilio: TwilioDouble, number: str = NUMBER, **body: Any) -> dict:  # type: ignore[no-untyped-def]
    account_sid, token = twilio.add_account()
    twilio.add_number(account_sid, number)
    payload = {"phone_number": number, "twilio": {"account_sid": account_sid, "auth_token": token}, **body}
    response = client.post("/api/v1/phone-numbers", json=payload, headers=auth)
    assert response.status_code == 201, response.text
    return {**response.json(), "auth_token": token}


def post_signed(client, url: str, params: dict[str, str], token: str, *, sign_url: str | None = None):  # type: ignore[no-untyped-def]
    signature = twilio_signature(token, sign_url or url, params)
    return client.post(
        url.removeprefix(PUBLIC_API), content=urlencode(params), headers={**FORM, "x-twilio-signature": signature}
    )


def inbound_form(number: dict, call_sid: str | None = None, **extra: str) -> dict[str, str]:
    return {
        "CallSid": call_sid or new_sid("CA"),
        "AccountSid": number["carrier_account_sid"],
        "From": CALLER,
        "To": number["phone_number"],
        "CallStatus": "ringing",
        "Direction": "inbound",
        **extra,
    }


def relay_of(twiml: str) -> ET.Element:
    root = ET.fromstring(twiml)
    assert root.tag == "Response"
    (connect,) = list(root)
    assert connect.tag == "Connect"
    (relay,) = list(connect)
    assert relay.tag == "ConversationRelay"
    return relay


def is_polite_hangup(twiml: str) -> bool:
    root = ET.fromstring(twiml)
    return [child.tag for child in root] == ["Say", "Hangup"] and bool((root[0].text or "").strip())


def counts(database) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    with database.session() as session:
        conversations = session.scalar(select(func.count()).select_from(Conversation))
        calls = session.scalar(select(func.count()).select_from(PhoneCall))
        return int(conversations or 0), int(calls or 0)


# -- phone numbers ----------------------------------------------------------------------------------------------------
def test_numbers_import_reassign_delete_and_tenancy(client, auth, twilio, database) -> None:  # type: ignore[no-untyped-def]
    agent_id = deployed_agent(client, auth, **PHONE_AGENT)
    number = import_number(client, auth, twilio, agent_id=agent_id, friendly_name="Main line")
    assert (
        number["agent_id"] == agent_id
        and number["credentials"] == "own"
        and "auth_token" not in {k for k in number if k != "auth_token"}
    )
    assert number["voice_url"] == VOICE_URL and number["status_callback_url"] == STATUS_URL
    (at_twilio,) = twilio.numbers.values()
    assert at_twilio["voice_url"] == VOICE_URL and at_twilio["status_callback"] == STATUS_URL
    assert at_twilio["voice_method"] == "POST"
    with database.session() as session:
        row = session.get(PhoneNumber, number["id"])
        assert row is not None and number["auth_token"] not in (row.token_ciphertext or "")

    listed = client.get("/api/v1/phone-numbers", headers=auth).json()["data"]
    assert [n["id"] for n in listed] == [number["id"]]
    assert client.get(f"/api/v1/phone-numbers/{number['id']}", headers=auth).json()["phone_number"] == NUMBER

    # reassigned: the webhooks are set again at Twilio, and only the fields sent change
    other_agent = deployed_agent(client, auth, **PHONE_AGENT)
    at_twilio["voice_url"] = "https://stale.example/voice"
    updated = client.put(f"/api/v1/phone-numbers/{number['id']}", json={"agent_id": other_agent}, headers=auth)
    assert updated.status_code == 200, updated.text
    assert updated.json()["agent_id"] == other_agent and updated.json()["friendly_name"] == "Main line"
    assert at_twilio["voice_url"] == VOICE_URL

    other = signup(client)
    assert client.get("/api/v1/phone-numbers", headers=other).json()["data"] == []
    for method in ("get", "delete"):
        assert getattr(client, method)(f"/api/v1/phone-numbers/{number['id']}", headers=other).status_code == 404
    assert client.put(f"/api/v1/phone-numbers/{number['id']}", json={}, headers=other).status_code == 404
    foreign_agent = deployed_agent(client, other, **PHONE_AGENT)
    refused = client.put(f"/api/v1/phone-numbers/{number['id']}", json={"agent_id": foreign_agent}, headers=auth)
    assert refused.status_code == 404

    assert client.delete(f"/api/v1/phone-numbers/{number['id']}", headers=auth).status_code == 204
    assert client.get("/api/v1/phone-numbers", headers=auth).json()["data"] == []
    assert at_twilio["voice_url"] == "" and at_twilio["status_callback"] == ""


def test_import_refusals_store_nothing(client, auth, twilio, database) -> None:  # type: ignore[no-untyped-def]
    account_sid, token = twilio.add_account()
    twilio.add_number(account_sid, NUMBER)
    url = "/api/v1/phone-numbers"

    wrong_token = {"phone_number": NUMBER, "twilio": {"account_sid": account_sid, "auth_token": "f" * 32}}
    response = client.post(url, json=wrong_token, headers=auth)
    assert response.status_code == 422 and response.json()["error"]["code"] == "carrier_credentials_rejected"

    elsewhere = {"phone_number": "+14155550111", "twilio": {"account_sid": account_sid, "auth_token": token}}
    response = client.post(url, json=elsewhere, headers=auth)
    assert response.status_code == 422 and response.json()["error"]["code"] == "number_not_found_at_carrier"

    response = client.post(url, json={"phone_number": NUMBER}, headers=auth)  # no platform account configured
    assert response.status_code == 422 and response.json()["error"]["code"] == "carrier_credentials_required"

    foreign_agent = deployed_agent(client, signup(client), **PHONE_AGENT)
    own = {"phone_number": NUMBER, "twilio": {"account_sid": account_sid, "auth_token": token}}
    assert client.post(url, json={**own, "agent_id": foreign_agent}, headers=auth).status_code == 404
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(PhoneNumber)) == 0
    assert next(iter(twilio.numbers.values()))["voice_url"] is None  # nothing was set at Twilio either

    assert client.post(url, json=own, headers=auth).status_code == 201
    taken = client.post(url, json=own, headers=signup(client))
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "phone_number_taken"


def test_platform_account_numbers(app, client, auth, twilio) -> None:  # type: ignore[no-untyped-def]
    account_sid, token = twilio.add_account()
    twilio.add_number(account_sid, NUMBER)
    app.state.settings.twilio_account_sid = account_sid
    app.state.settings.twilio_auth_token = token
    agent_id = deployed_agent(client, auth, **PHONE_AGENT)
    response = client.post("/api/v1/phone-numbers", json={"phone_number": NUMBER, "agent_id": agent_id}, headers=auth)
    assert response.status_code == 201, response.text
    number = response.json()
    assert number["credentials"] == "platform" and number["carrier_account_sid"] == account_sid
    answer = post_signed(client, VOICE_URL, inbound_form(number), token)
    assert answer.status_code == 200 and relay_of(answer.text).get("url", "").startswith(PUBLIC_WS)


# -- inbound calls ----------------------------------------------------------------------------------------------------
def test_inbound_call_answers_relay_twiml_and_status_ends_the_conversation(client, auth, twilio, settings) -> None:  # type: ignore[no-untyped-def]
    agent_id = deployed_agent(client, auth, **PHONE_AGENT)
    number = import_number(client, auth, twilio, agent_id=agent_id)
    form = inbound_form(number)
    answer = post_signed(client, VOICE_URL, form, number["auth_token"])
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/xml")

    relay = relay_of(answer.text)
    url = urlsplit(relay.get("url", ""))
    assert f"{url.scheme}://{url.netloc}{url.path}" == PUBLIC_WS
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query["relay"] == "twilio"
    claims = ConversationTokens(token_secret(settings)).verify(query["token"], query["conversation_id"])
    assert claims["c"] == query["conversation_id"]
    assert relay.get("welcomeGreeting") == PHONE_AGENT["first_message"]
    assert relay.get("language") == "en-US"
    assert (relay.get("ttsProvider"), relay.get("voice")) == ("ElevenLabs", "21m00Tcm4TlvDq8ikWAM")
    assert relay.get("transcriptionProvider") == "Deepgram"
    assert relay.get("hints") == "Acme,refund,goodbye,that's all"
    assert relay.get("interruptible") == "none" and relay.get("dtmfDetection") == "true"

    conversation = client.get(f"/api/v1/conversations/{query['conversation_id']}", headers=auth).json()
    assert conversation["agent_id"] == agent_id and conversation["caller"] == {"phone": CALLER}
    phone = conversation["metadata"]["phone"]
    assert phone == {"direction": "inbound", "call_sid": form["CallSid"], "from": CALLER, "to": NUMBER}

    # a retried webhook for the same call: the same conversation
    again = post_signed(client, VOICE_URL, form, number["auth_token"])
    assert parse_qs(urlsplit(relay_of(again.text).get("url", "")).query)["conversation_id"] == [conversation["id"]]

    done = {**form, "CallStatus": "completed", "CallDuration": "42"}
    assert post_signed(client, STATUS_URL, done, number["auth_token"]).status_code == 204
    ended = client.get(f"/api/v1/conversations/{conversation['id']}", headers=auth).json()
    assert ended["status"] == "ended" and ended["end_reason"] == "call_completed"
    assert ended["metadata"]["phone"]["status"] == "completed" and ended["metadata"]["phone"]["duration_seconds"] == 42


def test_signatures_are_checked_with_the_numbers_token(client, auth, twilio, database) -> None:  # type: ignore[no-untyped-def]
    number = import_number(client, auth, twilio, agent_id=deployed_agent(client, auth, **PHONE_AGENT))
    form = inbound_form(number)
    token = number["auth_token"]

    forged = post_signed(client, VOICE_URL, form, "0" * 32)
    assert forged.status_code == 403 and forged.json()["error"]["code"] == "invalid_signature"
    missing = client.post("/api/v1/telephony/twilio/voice", content=urlencode(form), headers=FORM)
    assert missing.status_code == 403
    signature = twilio_signature(token, VOICE_URL, form)
    tampered = client.post(
        "/api/v1/telephony/twilio/voice",
        content=urlencode({**form, "From": "+19995550000"}),
        headers={**FORM, "x-twilio-signature": signature},
    )
    assert tampered.status_code == 403
    replayed_host = post_signed(
        client, VOICE_URL, form, token, sign_url="https://evil.example/api/v1/telephony/twilio/voice"
    )
    assert replayed_host.status_code == 403
    assert counts(database) == (0, 0)
    assert post_signed(client, VOICE_URL, form, token).status_code == 200
    assert counts(database) == (1, 1)

    # a status callback signed for the voice URL and replayed to the status URL
    status = {**form, "CallSid": form["CallSid"], "CallStatus": "completed"}
    signed_for_voice = twilio_signature(token, VOICE_URL, status)
    replayed = client.post(
        "/api/v1/telephony/twilio/status",
        content=urlencode(status),
        headers={**FORM, "x-twilio-signature": signed_for_voice},
    )
    assert replayed.status_code == 403
    with database.session() as session:
        assert session.scalar(select(PhoneCall.status)) == "ringing"


def test_calls_that_cannot_be_answered_hang_up_politely(client, auth, twilio, database) -> None:  # type: ignore[no-untyped-def]
    unassigned = import_number(client, auth, twilio)
    answer = post_signed(client, VOICE_URL, inbound_form(unassigned), unassigned["auth_token"])
    assert answer.status_code == 200 and is_polite_hangup(answer.text)

    unknown = {**inbound_form(unassigned), "To": "+14155550000"}
    answer = client.post("/api/v1/telephony/twilio/voice", content=urlencode(unknown), headers=FORM)
    assert answer.status_code == 200 and is_polite_hangup(answer.text)

    agent_id = deployed_agent(client, auth, **PHONE_AGENT)
    number = import_number(client, auth, twilio, number="+14155550101", agent_id=agent_id)
    with database.session() as session:
        account_id = session.scalar(select(PhoneNumber.account_id).where(PhoneNumber.id == number["id"]))
    assert account_id is not None
    drained = UsageService(database).track_usage(
        [
            UsageEvent(
                idempotency_key=f"drain-{i}",
                account_id=account_id,
                occurred_at=utcnow(),
                component="platform_minutes",
                quantity=Decimal("600"),
            )
            for i in range(3)
        ]
    )
    assert drained.uncovered_micros > 0
    answer = post_signed(client, VOICE_URL, inbound_form(number), number["auth_token"])
    assert answer.status_code == 200 and is_polite_hangup(answer.text)
    assert counts(database) == (0, 0)


# -- outbound calls ---------------------------------------------------------------------------------------------------
def test_outbound_call_through_to_completed(client, auth, twilio, database) -> None:  # type: ignore[no-untyped-def]
    agent_id = deployed_agent(client, auth, **PHONE_AGENT)
    number = import_number(client, auth, twilio, agent_id=agent_id)
    body = {
        "agent_id": agent_id,
        "to": "+442079460000",
        "from": NUMBER,
        "metadata": {"campaign": "renewals"},
        "first_message": "Hello, this is Acme calling about your renewal.",
        "machine_detection": True,
    }
    response = client.post("/api/v1/calls", json=body, headers=auth)
    assert response.status_code == 201, response.text
    call = response.json()
    assert (call["direction"], call["from"], call["to"], call["status"]) == ("outbound", NUMBER, body["to"], "queued")

    placed = twilio.calls[call["call_sid"]]
    form = placed["form"]
    assert form["To"] == [body["to"]] and form["From"] == [NUMBER] and form["MachineDetection"] == ["Enable"]
    assert form["StatusCallback"] == [STATUS_URL]
    assert form["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    relay = relay_of(form["Twiml"][0])
    assert relay.get("welcomeGreeting") == body["first_message"]
    assert parse_qs(urlsplit(relay.get("url", "")).query)["conversation_id"] == [call["conversation_id"]]

    conversation = client.get(f"/api/v1/conversations/{call['conversation_id']}", headers=auth).json()
    assert conversation["metadata"]["campaign"] == "renewals"
    assert conversation["metadata"]["phone"]["call_sid"] == call["call_sid"]

    token = number["auth_token"]
    base = {"CallSid": call["call_sid"], "AccountSid": number["carrier_account_sid"], "From": NUMBER, "To": body["to"]}
    for status in ("initiated", "ringing"):
        assert post_signed(client, STATUS_URL, {**base, "CallStatus": status}, token).status_code == 204
    answered = {**base, "CallStatus": "in-progress", "AnsweredBy": "human"}
    assert post_signed(client, STATUS_URL, answered, token).status_code == 204
    live = client.get(f"/api/v1/conversations/{call['conversation_id']}", headers=auth).json()
    assert live["status"] == "active" and live["metadata"]["phone"]["answered_by"] == "human"
    done = {**base, "CallStatus": "completed", "CallDuration": "17"}
    assert post_signed(client, STATUS_URL, done, token).status_code == 204

    ended = client.get(f"/api/v1/conversations/{call['conversation_id']}", headers=auth).json()
    assert ended["status"] == "ended" and ended["end_reason"] == "call_completed"
    final = client.get(f"/api/v1/calls/{call['id']}", headers=auth).json()
    assert final["status"] == "completed" and final["duration_seconds"] == 17 and final["ended_at"]
    assert client.get(f"/api/v1/calls/{call['id']}", headers=signup(client)).status_code == 404


def test_outbound_refusals_store_nothing(client, auth, twilio, database) -> None:  # type: ignore[no-untyped-def]
    agent_id = deployed_agent(client, auth, **PHONE_AGENT)
    import_number(client, auth, twilio, agent_id=agent_id)
    other = signup(client)
    foreign_number = import_number(client, other, twilio, number="+14155550102")
    base = {"agent_id": agent_id, "to": "+442079460000", "from": NUMBER}

    assert (
        client.post("/api/v1/calls", json={**base, "from": foreign_number["phone_number"]}, headers=auth).status_code
        == 404
    )
    assert client.post("/api/v1/calls", json={**base, "agent_id": "agt_unknown"}, headers=auth).status_code == 404
    twilio.fail_next(400, {"code": 21215, "message": "Geo permission blocks this call", "status": 400})
    refused = client.post("/api/v1/calls", json=base, headers=auth)
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "carrier_refused"
    twilio.fail_next(503, {"code": 20500, "message": "Internal error", "status": 503})
    assert client.post("/api/v1/calls", json=base, headers=auth).status_code == 502
    assert counts(database) == (0, 0)


# -- bad input ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        {},
        {"twilio": {"account_sid": "AC" + "0" * 32, "auth_token": "x" * 32}},
        {"phone_number": "4155550100"},
        {"phone_number": NUMBER, "twilio": {"account_sid": "not-a-sid", "auth_token": "x" * 32}},
        {"phone_number": NUMBER, "twilio": {"account_sid": "AC" + "0" * 32}},
        {"phone_number": NUMBER, "unexpected": True},
    ],
)
def test_bad_number_imports_are_422(client, auth, twilio, database, body) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/api/v1/phone-numbers", json=body, headers=auth)
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(PhoneNumber)) == 0


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"to": "+442079460000", "from": NUMBER},
        {"agent_id": "agt_x", "to": "not a number", "from": NUMBER},
        {"agent_id": "agt_x", "to": "+442079460000", "from": "+1"},
        {"agent_id": "agt_x", "to": "+442079460000", "from": NUMBER, "machine_detection": "maybe"},
        {"agent_id": "agt_x", "to": "+442079460000", "from": NUMBER, "first_message": "x" * 2001},
    ],
)
def test_bad_calls_are_422(client, auth, twilio, database, body) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/api/v1/calls", json=body, headers=auth)
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"
    assert counts(database) == (0, 0)


def test_wrong_content_types_and_oversized_bodies(client, auth, twilio, database) -> None:  # type: ignore[no-untyped-def]
    number = import_number(client, auth, twilio, agent_id=deployed_agent(client, auth, **PHONE_AGENT))
    form = inbound_form(number)
    for path in ("/api/v1/telephony/twilio/voice", "/api/v1/telephony/twilio/status"):
        as_json = client.post(path, json=form)
        assert as_json.status_code == 415 and as_json.json()["error"]["code"] == "unsupported_media_type"
        oversized = client.post(path, content=urlencode({**form, "Padding": "x" * 20_000}), headers=FORM)
        assert oversized.status_code == 413 and oversized.json()["error"]["code"] == "payload_too_large"
        incomplete = post_signed(client, f"{PUBLIC_API}{path}", {"CallSid": form["CallSid"]}, number["auth_token"])
        assert incomplete.status_code == 400 and incomplete.json()["error"]["code"] == "missing_fields"
        undecodable = client.post(path, content=b"CallSid=\xff\xfe", headers=FORM)
        assert undecodable.status_code == 400
    too_big = client.post(
        "/api/v1/calls",
        content=b"{" + b" " * 1_100_000 + b"}",
        headers={**auth, **{"content-type": "application/json"}},
    )
    assert too_big.status_code == 413
    as_text = client.post(
        "/api/v1/phone-numbers", content=b"phone_number=+14155550100", headers={**auth, "content-type": "text/plain"}
    )
    assert 400 <= as_text.status_code < 500
    unknown_status = post_signed(client, STATUS_URL, {**form, "CallStatus": "exploded"}, number["auth_token"])
    assert unknown_status.status_code in (400, 404)
    assert counts(database) == (0, 0)


@pytest.mark.parametrize("body", [{"agent_id": ""}, {"agent_id": 7}, {"friendly_name": "x" * 101}, {"number": NUMBER}])
def test_bad_number_updates_are_422_and_change_nothing(client, auth, twilio, body) -> None:  # type: ignore[no-untyped-def]
    number = import_number(client, auth, twilio, friendly_name="Main line")
    requests_before = len(twilio.requests)
    response = client.put(f"/api/v1/phone-numbers/{number['id']}", json=body, headers=auth)
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"
    unchanged = client.get(f"/api/v1/phone-numbers/{number['id']}", headers=auth).json()
    assert unchanged["friendly_name"] == "Main line" and unchanged["agent_id"] is None
    assert len(twilio.requests) == requests_before  # nothing was sent to Twilio either
