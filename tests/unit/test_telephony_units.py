"""Telephony's pure parts: the API origin the carrier is given, SIP numbers, TwiML from an agent config."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from airies.agents.config import AgentConfig
from airies.core.config import Settings
from airies.telephony import signatures, twiml
from airies.telephony.service import dialled_number

EVENT = {"requestContext": {"domainName": "abc123.execute-api.us-east-1.amazonaws.com"}}


def test_api_origin_prefers_the_setting_then_api_gateways_domain() -> None:
    assert signatures.api_origin(Settings(public_api_url="https://api.acme.example/"), EVENT) == (
        "https://api.acme.example"
    )
    assert signatures.api_origin(Settings(), EVENT) == "https://abc123.execute-api.us-east-1.amazonaws.com"
    assert signatures.api_origin(Settings(), None) == "http://127.0.0.1:8000"
    url = signatures.public_url("https://x.example", Settings(), signatures.STATUS_PATH, "a=1")
    assert url == "https://x.example/api/v1/telephony/twilio/status?a=1"


def test_sip_calls_reach_the_number_in_the_user_part() -> None:
    assert dialled_number("+14155550100") == "+14155550100"
    assert dialled_number("sip:+14155550100@acme.sip.twilio.com") == "+14155550100"
    assert dialled_number("sips:+14155550100@acme.sip.twilio.com;transport=tls") == "+14155550100"


def test_relay_twiml_without_relay_voices_leaves_twilios_defaults() -> None:
    config = AgentConfig.model_validate(
        {
            "name": "A",
            "first_message": "Hello",
            "first_message_mode": "assistant_waits_for_user",
            "voice": {"provider": "espeak", "voice_id": "en-us"},
            "transcriber": {"provider": "pocketsphinx", "model": "en-us", "language": "pt-PT"},
            "end_call_phrases": [],
        }
    )
    relay = ET.fromstring(twiml.relay_twiml(config, "wss://x/ws?a=1&b=2"))[0][0]
    assert relay.get("url") == "wss://x/ws?a=1&b=2" and relay.get("language") == "pt-PT"
    for absent in ("welcomeGreeting", "ttsProvider", "voice", "transcriptionProvider", "hints"):
        assert relay.get(absent) is None
    assert relay.get("interruptible") == "any"
    hangup = ET.fromstring(twiml.unavailable_twiml())
    assert [child.tag for child in hangup] == ["Say", "Hangup"]
