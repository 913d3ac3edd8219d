"""Whole phone calls over Twilio ConversationRelay: the signed voice webhook answers TwiML naming the relay URL, the
ConversationRelay client double opens it (signed handshake) and talks to the live edge (moto for DynamoDB and the
API Gateway Management API) as Twilio does: setup, prompts answered with streamed text tokens, interrupt with the
heard prefix stored, DTMF, end-call, transfer (``end`` with handoff data, then ``<Dial>`` from the action URL), bad
messages answered with an error and nothing stored, forged handshakes refused."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import boto3
import pytest
from sqlalchemy import select

from airies.billing.models import UsageEventRecord
from airies.conversations.live import WebSocketService
from airies.conversations.protocol import dtmf_text
from airies.conversations.service import ConversationTokens
from airies.conversations.sessions import SessionStore
from airies.core.config import Settings
from airies.llm.vendors.base import LLMEvent, LLMRequest, StreamEnd, TextDelta, ToolCall, Usage
from airies.telephony.relay import RelayHandshake
from tests.doubles.conv_engines import FakeLLM, fake_engines
from tests.doubles.relay_client import RelayClient
from tests.doubles.twilio_server import TwilioDouble, new_sid
from tests.integration.test_conv_api import deployed_agent
from tests.integration.test_conv_handlers import (  # noqa: F401  (aws: the moto fixture)
    ENDPOINT,
    Clock,
    ClosingPoster,
    aws,
    frames_of,
)
from tests.integration.test_telephony_api import (
    PHONE_AGENT,
    PUBLIC_API,
    PUBLIC_WS,
    STATUS_URL,
    VOICE_URL,
    import_number,
    inbound_form,
    post_signed,
    relay_of,
    telephony_settings,
    twilio,  # noqa: F401  (the Twilio double fixture)
)

ACTION_URL = f"{PUBLIC_API}/api/v1/telephony/twilio/relay-action"
SECRET = "k" * 32
REPLY = "We open at nine on weekdays. Anything else?"


class CountingPoster(ClosingPoster):
    """The harness poster, telling who waits when its posts reach a count."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.posted = threading.Condition()

    def post(self, connection_id: str, data: bytes) -> bool:
        try:
            return super().post(connection_id, data)
        finally:
            with self.posted:
                self.posted.notify_all()

    def wait_for(self, posts: int) -> None:
        with self.posted:
            self.posted.wait_for(lambda: self.posts >= posts, timeout=10)


@dataclass
class PacedLLM(FakeLLM):
    """A model slower than the posts: each word is written once the one before it was posted to the relay."""

    poster: CountingPoster | None = None

    async def __call__(self, request: LLMRequest) -> AsyncIterator[LLMEvent]:
        base = self.poster.posts if self.poster is not None else 0
        written = 0
        async for event in super().__call__(request):
            if isinstance(event, TextDelta) and written and self.poster is not None:
                await asyncio.to_thread(self.poster.wait_for, base + written)
            written += isinstance(event, TextDelta)
            yield event


@pytest.fixture
def settings(tmp_path: Path, twilio: TwilioDouble) -> Settings:  # noqa: F811
    return telephony_settings(tmp_path, twilio, ws_management_url=ENDPOINT, ws_token_secret=SECRET)


class Phone:
    """One account with an agent on an imported number, and the live edge a relay connects to."""

    def __init__(self, client: Any, auth: dict[str, str], double: TwilioDouble, database: Any, settings: Settings):
        self.client, self.auth, self.twilio, self.database, self.settings = client, auth, double, database, settings
        self.clock = Clock(time.time())
        self.store = SessionStore(boto3.client("dynamodb", region_name="us-east-1"), "relay-test", clock=self.clock)
        self.store.ensure_table()
        self.poster = CountingPoster(
            boto3.client("apigatewaymanagementapi", endpoint_url=ENDPOINT, region_name="us-east-1")
        )
        self.engines = fake_engines(llm=PacedLLM(reply=REPLY, poster=self.poster))
        self.service = WebSocketService(
            settings,
            database,
            self.store,
            poster_factory=lambda endpoint: self.poster,
            engines=lambda session, account_id, config: self.engines,
            usage_sink=lambda session: None,
            credit_gate=lambda session: lambda account_id: (True, None, None),
            tokens=ConversationTokens(SECRET.encode(), ttl_seconds=300),
            relay_verifier=RelayHandshake(settings, database),
            clock=self.clock,
        )

    def agent(self, **config: Any) -> None:
        self.agent_id = deployed_agent(self.client, self.auth, **{**PHONE_AGENT, **config})
        self.number = import_number(self.client, self.auth, self.twilio, agent_id=self.agent_id)

    def call(self) -> tuple[RelayClient, str]:
        """An inbound call: the signed voice webhook's TwiML, and a relay client for its URL."""
        form = inbound_form(self.number)
        answer = post_signed(self.client, VOICE_URL, form, self.number["auth_token"])
        assert answer.status_code == 200, answer.text
        url = relay_of(answer.text).get("url") or ""
        conversation_id = dict(parse_qsl(urlsplit(url).query))["conversation_id"]
        return self.relay(url, call_sid=form["CallSid"]), conversation_id

    def relay(self, url: str, call_sid: str | None = None) -> RelayClient:
        """A relay client for ``url`` on this number's account (a fresh call SID unless one is given)."""
        return RelayClient(
            self.service,
            url,
            self.number["auth_token"],
            frames_of,
            account_sid=self.number["carrier_account_sid"],
            call_sid=call_sid,
        )

    def connected(self) -> tuple[RelayClient, str]:
        relay, conversation_id = self.call()
        assert relay.connect()["statusCode"] == 200
        assert relay.setup()["statusCode"] == 200
        assert relay.new_frames() == []  # the relay speaks the greeting itself: nothing is posted
        return relay, conversation_id

    def conversation(self, conversation_id: str) -> dict[str, Any]:
        response = self.client.get(f"/api/v1/conversations/{conversation_id}", headers=self.auth)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def turns(self, conversation_id: str) -> list[dict[str, Any]]:
        """The caller's turns and their replies (the greeting's turn left out)."""
        return [t for t in self.conversation(conversation_id)["turns"] if t["input_mode"] != "none"]


@pytest.fixture
def phone(aws, client, auth, twilio, database, settings) -> Phone:  # type: ignore[no-untyped-def]  # noqa: F811
    return Phone(client, auth, twilio, database, settings)


def transfer_llm(destination: str, *, say: str = "") -> Any:
    """An LLM double whose reply calls ``transfer_call`` (after ``say``, when given)."""

    async def stream(request: LLMRequest) -> AsyncIterator[LLMEvent]:
        if say:
            yield TextDelta(say)
        args = json.dumps({"destination": destination, "message": "Transferring you now."})
        yield StreamEnd(
            usage=Usage(prompt_tokens=100, completion_tokens=8),
            finish_reason="tool_calls",
            provider="openai",
            model="gpt-4o-mini",
            tool_calls=(ToolCall("call_1", "transfer_call", args),),
        )

    return stream


# -- a whole call ------------------------------------------------------------------------------------------------------
def test_prompts_stream_tokens_and_record_phone_turns(phone: Phone) -> None:
    phone.agent()
    relay, cid = phone.connected()
    assert phone.conversation(cid)["status"] == "active"

    relay.prompt("When do you", last=False)  # a partial prompt is not a turn
    relay.prompt("When do you open?")
    frames = relay.new_frames()
    tokens = [f for f in frames if f["type"] == "text"]
    assert len(tokens) > 3 and all(f["last"] is False for f in tokens[:-1])  # token by token, as the LLM wrote
    assert tokens[-1] == {"type": "text", "token": "", "last": True}
    assert relay.reply_of(frames) == REPLY
    assert {f["type"] for f in frames} == {"text"}  # no transcript, audio or turn_end frames reach the relay

    relay.prompt("And on Saturday?")
    assert relay.reply_of(relay.new_frames()) == REPLY
    greeting, *turns = phone.conversation(cid)["turns"]
    # the greeting the relay spoke is the agent's first turn (recorded, posted nowhere), once
    assert (greeting["input_mode"], greeting["agent_text"]) == ("none", PHONE_AGENT["first_message"])
    relay.setup()
    assert len(phone.conversation(cid)["turns"]) == 3
    assert [(t["input_mode"], t["user_text"], t["agent_text"]) for t in turns] == [
        ("text", "When do you open?", REPLY),
        ("text", "And on Saturday?", REPLY),
    ]
    first = turns[0]
    assert first["latency"]["first_text_ms"] is not None and first["latency"]["first_audio_ms"] is None
    assert first["usage"]["completion_tokens"] > 0 and first["usage"]["tts_characters"] == 0
    assert first["usage"]["stt_seconds"] == 0 and float(first["cost"]["llm"]) > 0
    # the second turn's LLM call saw the first as history
    llm = phone.engines.llm
    assert isinstance(llm, FakeLLM)
    messages = llm.requests[-1].messages
    assert messages[1] == {"role": "assistant", "content": PHONE_AGENT["first_message"]}
    assert {"role": "user", "content": "When do you open?"} in messages
    assert phone.conversation(cid)["turn_count"] == 3


def test_interrupt_keeps_what_the_relay_spoke(phone: Phone) -> None:
    phone.agent()
    relay, cid = phone.connected()
    relay.prompt("When do you open?")
    relay.new_frames()
    relay.interrupt("We open at nine", 1400)
    assert [f for f in relay.new_frames() if f["type"] != "text"] == []  # nothing the relay does not speak
    (turn,) = phone.turns(cid)
    assert turn["agent_text"] == "We open at nine" and turn["interrupted"] is True
    assert phone.conversation(cid)["interruption_count"] == 1
    # the next reply's history is what the caller heard
    relay.prompt("Sorry, what time?")
    llm = phone.engines.llm
    assert isinstance(llm, FakeLLM)
    assert {"role": "assistant", "content": "We open at nine"} in llm.requests[-1].messages
    # the relay's word is exact: a second report of less shortens the turn again, and counts once
    relay.interrupt("We open", 600)
    relay.interrupt("We", 200)
    turns = phone.turns(cid)
    assert turns[-1]["agent_text"] == "We" and phone.conversation(cid)["interruption_count"] == 2


def test_dtmf_reaches_the_agent_as_text(phone: Phone) -> None:
    phone.agent()
    relay, cid = phone.connected()
    relay.dtmf("5")
    assert relay.reply_of(relay.new_frames()) == REPLY
    (turn,) = phone.turns(cid)
    assert turn["user_text"] == dtmf_text("5") == "(the caller pressed 5 on the keypad)"
    llm = phone.engines.llm
    assert isinstance(llm, FakeLLM) and llm.requests[-1].messages[-1] == {"role": "user", "content": dtmf_text("5")}


def test_end_call_sends_end_and_ends_the_conversation(phone: Phone) -> None:
    phone.agent()
    phone.engines.llm = FakeLLM(reply="Goodbye!", end_call_tool=True)
    relay, cid = phone.connected()
    relay.prompt("That's everything, thanks.")
    frames = relay.new_frames()
    assert relay.reply_of(frames) == "Goodbye!"
    assert frames[-1] == {"type": "end"}
    conversation = phone.conversation(cid)
    assert conversation["status"] == "ended" and conversation["end_reason"] == "end_call_tool"
    assert phone.store.connection(relay.connection_id) is None


@pytest.mark.parametrize("destination", ["+14155550123", "sip:frontdesk@pbx.example.com"])
def test_transfer_ends_the_relay_and_the_action_url_dials(phone: Phone, destination: str) -> None:
    phone.agent(builtin_tools={"transfer_call": {"enabled": True, "destinations": [destination]}})
    phone.engines.llm = transfer_llm(destination)
    relay, cid = phone.connected()
    relay.prompt("Can I talk to a person?")
    frames = relay.new_frames()
    assert relay.reply_of(frames) == "Transferring you now."
    end = frames[-1]
    assert end["type"] == "end"
    handoff = json.loads(end["handoffData"])
    assert handoff == {"reason": "transferred", "conversation_id": cid, "destination": destination}
    conversation = phone.conversation(cid)
    assert conversation["status"] == "ended" and conversation["end_reason"] == "transferred"

    # Twilio then requests the <Connect> action URL with the handoff data: <Dial> the destination
    form = {
        "AccountSid": relay.account_sid,
        "CallSid": relay.call_sid,
        "SessionId": new_sid("VX"),
        "SessionStatus": "ended",
        "SessionDuration": "42",
        "HandoffData": end["handoffData"],
    }
    answer = post_signed(phone.client, ACTION_URL, form, phone.number["auth_token"])
    assert answer.status_code == 200, answer.text
    dial = ET.fromstring(answer.text).find("Dial")
    assert dial is not None
    (target,) = list(dial)
    assert (target.tag, target.text) == (("Sip" if destination.startswith("sip:") else "Number"), destination)
    # a forged action request is refused; one without a transfer hangs up
    forged = post_signed(phone.client, ACTION_URL, form, "not-the-token")
    assert forged.status_code == 403
    plain = post_signed(phone.client, ACTION_URL, {**form, "HandoffData": ""}, phone.number["auth_token"])
    assert [child.tag for child in ET.fromstring(plain.text)] == ["Hangup"]
    bad = post_signed(
        phone.client, ACTION_URL, {**form, "HandoffData": '{"destination": "not a number"}'}, phone.number["auth_token"]
    )
    assert [child.tag for child in ET.fromstring(bad.text)] == ["Hangup"]


def test_twiml_names_the_action_url(phone: Phone) -> None:
    phone.agent()
    form = inbound_form(phone.number)
    answer = post_signed(phone.client, VOICE_URL, form, phone.number["auth_token"])
    connect = ET.fromstring(answer.text).find("Connect")
    assert connect is not None and connect.get("action") == ACTION_URL


# -- bad input ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("not json", "malformed_json"),
        ("[1, 2]", "malformed_json"),
        ('{"type": "media"}', "unknown_type"),
        ('{"action": "text", "text": "hi"}', "unknown_type"),  # protocol v1 is not spoken on a relay connection
        ('{"type": "prompt", "last": true}', "invalid_message"),
        ('{"type": "dtmf", "digit": "55"}', "invalid_message"),
        ('{"type": "interrupt", "durationUntilInterruptMs": -1}', "invalid_message"),
        ('{"type": "setup"}', "invalid_message"),
    ],
)
def test_bad_messages_get_an_error_and_store_nothing(phone: Phone, body: str, code: str) -> None:
    phone.agent()
    relay, cid = phone.connected()
    assert relay.send(body)["statusCode"] == 200
    (error,) = relay.new_frames()
    assert error["type"] == "error" and error["code"] == code and error["message"]
    assert phone.turns(cid) == [] and phone.conversation(cid)["status"] == "active"


def test_setup_of_another_call_is_refused(phone: Phone) -> None:
    phone.agent()
    relay, cid = phone.call()
    assert relay.connect()["statusCode"] == 200
    relay.setup(callSid=new_sid("CA"))
    (error,) = relay.new_frames()
    assert error["code"] == "call_mismatch" and phone.turns(cid) == []


def test_forged_or_missing_handshake_signature_is_refused(phone: Phone) -> None:
    phone.agent()
    relay, cid = phone.call()
    for signature in (None, "forged", relay_signature_of_other_url(relay)):
        response = relay.connect(signature=signature)
        assert response["statusCode"] == 403 and json.loads(response["body"])["code"] == "invalid_signature"
        assert phone.store.connection(relay.connection_id) is None
    assert phone.conversation(cid)["status"] == "created"
    # a forged conversation token is refused before the signature is looked at
    forged = relay.url.replace("token=", "token=x")
    assert relay.connect(url=forged)["statusCode"] == 401


def relay_signature_of_other_url(relay: RelayClient) -> str:
    from tests.doubles.twilio_server import twilio_signature

    return twilio_signature(relay.auth_token, relay.url.replace(PUBLIC_WS, "wss://elsewhere.example/live"), {})


def test_a_web_conversation_cannot_open_a_relay(phone: Phone) -> None:
    phone.agent()
    response = phone.client.post("/api/v1/conversations", json={"agent_id": phone.agent_id}, headers=phone.auth)
    assert response.status_code == 201, response.text
    started = response.json()
    url = f"{PUBLIC_WS}?conversation_id={started['id']}&token={started['token']}&relay=twilio"
    relay = phone.relay(url)
    answer = relay.connect()
    assert answer["statusCode"] == 403 and json.loads(answer["body"])["code"] == "not_a_phone_call"


def test_without_a_verifier_the_relay_is_not_available(phone: Phone) -> None:
    phone.agent()
    relay, cid = phone.call()
    relay.service = WebSocketService(
        phone.settings,
        phone.database,
        phone.store,
        poster_factory=lambda endpoint: phone.poster,
        tokens=ConversationTokens(SECRET.encode(), ttl_seconds=300),
    )
    response = relay.connect()
    assert response["statusCode"] == 501 and json.loads(response["body"])["code"] == "relay_not_available"
    assert phone.conversation(cid)["status"] == "created"


def test_outbound_call_relay_records_its_own_greeting(phone: Phone) -> None:
    phone.agent()
    greeting = "Hello, this is Acme calling about your renewal."
    body = {"agent_id": phone.agent_id, "to": "+442079460000", "from": phone.number["phone_number"]}
    response = phone.client.post("/api/v1/calls", json={**body, "first_message": greeting}, headers=phone.auth)
    assert response.status_code == 201, response.text
    call = response.json()
    url = relay_of(phone.twilio.calls[call["call_sid"]]["form"]["Twiml"][0]).get("url") or ""
    relay = phone.relay(url, call_sid=call["call_sid"])
    assert relay.connect()["statusCode"] == 200
    relay.setup(direction="outbound-api")
    relay.prompt("Yes, go on.")
    assert relay.reply_of(relay.new_frames()) == REPLY
    first, second = phone.conversation(call["conversation_id"])["turns"]
    assert (first["input_mode"], first["agent_text"]) == ("none", greeting)
    assert (second["user_text"], second["agent_text"]) == ("Yes, go on.", REPLY)


# -- carrier minutes ---------------------------------------------------------------------------------------------------
def test_carrier_minutes_are_booked_once_when_the_call_completes(phone: Phone) -> None:
    phone.agent()
    relay, cid = phone.connected()
    relay.prompt("When do you open?")
    turns_cost = Decimal(phone.client.get(f"/api/v1/conversations/{cid}/cost", headers=phone.auth).json()["total"])
    status = {
        "CallSid": relay.call_sid,
        "AccountSid": relay.account_sid,
        "From": relay.from_,
        "To": relay.to,
        "CallStatus": "completed",
        "CallDuration": "61",  # Twilio bills whole minutes: 2
    }
    for _ in range(2):  # Twilio retries a callback: booked once
        assert post_signed(phone.client, STATUS_URL, status, phone.number["auth_token"]).status_code == 204
    cost = phone.client.get(f"/api/v1/conversations/{cid}/cost", headers=phone.auth).json()
    per_minute = Decimal("0.07") + Decimal("0.0085")  # pricing.json: twilio/conversation_relay + twilio/voice_inbound
    assert cost["components"]["telephony"] == f"{2 * per_minute:.9f}" == "0.157000000"
    assert Decimal(cost["total"]) == turns_cost + 2 * per_minute and cost["usage"]["telephony_minutes"] == 2
    conversation = phone.conversation(cid)
    assert conversation["status"] == "ended" and Decimal(conversation["cost_usd"]) == Decimal(cost["total"])
    with phone.database.session() as session:
        rows = session.scalars(
            select(UsageEventRecord).where(
                UsageEventRecord.conversation_id == cid, UsageEventRecord.component == "telephony_minutes"
            )
        ).all()
        booked = sorted((r.provider, r.model, r.quantity_micro, r.cost_picousd, r.credits_micros > 0) for r in rows)
    assert booked == [
        ("twilio", "conversation_relay", 2_000_000, 140_000_000_000, True),
        ("twilio", "voice_inbound", 2_000_000, 17_000_000_000, True),
    ]


def test_a_call_that_never_connected_books_no_minutes(phone: Phone) -> None:
    phone.agent()
    relay, cid = phone.call()
    status = {
        "CallSid": relay.call_sid,
        "AccountSid": relay.account_sid,
        "CallStatus": "no-answer",
        "CallDuration": "0",
    }
    assert post_signed(phone.client, STATUS_URL, status, phone.number["auth_token"]).status_code == 204
    cost = phone.client.get(f"/api/v1/conversations/{cid}/cost", headers=phone.auth).json()
    assert cost["components"]["telephony"] == "0.000000000" and cost["usage"]["telephony_minutes"] == 0


def test_a_call_ended_over_rest_ends_the_relay(phone: Phone) -> None:
    phone.agent()
    relay, cid = phone.connected()
    phone.client.app.state.live_sessions = phone.service  # the API's facade to live calls, with the harness poster
    response = phone.client.put(f"/api/v1/conversations/{cid}", json={"status": "ended"}, headers=phone.auth)
    assert response.status_code == 200, response.text
    assert relay.new_frames() == [{"type": "end"}]  # in the relay's words, not protocol v1's "ended"
    assert phone.store.connection(relay.connection_id) is None


def test_a_silence_reminder_on_a_phone_call_is_text_the_relay_speaks(phone: Phone) -> None:
    phone.agent()
    relay, cid = phone.connected()
    phone.clock.now += 31  # past the agent's 30 s silence timeout
    session = phone.store.get(cid)
    assert session is not None
    assert phone.service.check_timers(session) == "reminder"
    frames = relay.new_frames()
    assert relay.reply_of(frames) == "Are you still there?" and frames[-1] == {
        "type": "text",
        "token": "",
        "last": True,
    }
    tts = phone.engines.tts
    assert tts is not None and tts.sentences == []  # nothing synthesised on our side
    reminder = phone.conversation(cid)["turns"][-1]
    assert reminder["agent_text"] == "Are you still there?" and reminder["usage"]["tts_characters"] == 0
