"""A number's telephony mode: ``media_stream`` numbers answer ``<Connect><Stream>`` to the media bridge (the
conversation and its token as ``<Parameter>``s), only while the platform runs the bridge; ``relay`` stays the
default. The real twilio SDK against the local Twilio double, webhooks signed as Twilio signs them."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from decimal import Decimal
from pathlib import Path

import pytest

from airies.conversations.service import ConversationTokens, token_secret
from airies.core.config import Settings
from tests.doubles.twilio_server import TwilioDouble
from tests.integration.test_conv_api import deployed_agent
from tests.integration.test_telephony_api import (
    NUMBER,
    PHONE_AGENT,
    PUBLIC_WS,
    STATUS_URL,
    VOICE_URL,
    counts,
    import_number,
    inbound_form,
    post_signed,
    relay_of,
    telephony_settings,
    twilio,  # noqa: F401  (the Twilio double fixture)
)

BRIDGE = "wss://bridge.example.test/twilio"


@pytest.fixture
def settings(tmp_path: Path, twilio: TwilioDouble) -> Settings:  # noqa: F811
    return telephony_settings(tmp_path, twilio, media_bridge_url=BRIDGE)


def stream_of(twiml: str) -> tuple[str, dict[str, str]]:
    root = ET.fromstring(twiml)
    (connect,) = list(root)
    assert connect.tag == "Connect"
    (stream,) = list(connect)
    assert stream.tag == "Stream"
    return stream.get("url", ""), {p.get("name", ""): p.get("value", "") for p in stream if p.tag == "Parameter"}


def test_media_stream_numbers_connect_calls_to_the_bridge(client, auth, twilio, settings) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    agent_id = deployed_agent(client, auth, **{**PHONE_AGENT, "interruption": {"voice_seconds": 0.3}})
    number = import_number(client, auth, twilio, agent_id=agent_id, telephony_mode="media_stream")
    assert number["telephony_mode"] == "media_stream"
    form = inbound_form(number)
    answer = post_signed(client, VOICE_URL, form, number["auth_token"])
    assert answer.status_code == 200, answer.text
    url, parameters = stream_of(answer.text)
    assert url == BRIDGE
    assert parameters["barge_in_ms"] == "300" and parameters["backoff_ms"] == "1000"
    claims = ConversationTokens(token_secret(settings)).verify(parameters["token"], parameters["conversation_id"])
    assert claims["c"] == parameters["conversation_id"]
    conversation = client.get(f"/api/v1/conversations/{parameters['conversation_id']}", headers=auth).json()
    assert conversation["agent_id"] == agent_id and conversation["metadata"]["source"] == "phone"
    done = {**form, "CallStatus": "completed", "CallDuration": "61"}
    assert post_signed(client, STATUS_URL, done, number["auth_token"]).status_code == 204
    # Twilio's minutes: the voice leg only (2 whole minutes at pricing.json's twilio/voice_inbound), no relay
    cost = client.get(f"/api/v1/conversations/{parameters['conversation_id']}/cost", headers=auth).json()
    assert cost["components"]["telephony"] == f"{2 * Decimal('0.0085'):.9f}" and cost["usage"]["telephony_minutes"] == 2

    # back to the relay: the same number answers ConversationRelay again
    updated = client.put(f"/api/v1/phone-numbers/{number['id']}", json={"telephony_mode": "relay"}, headers=auth)
    assert updated.status_code == 200 and updated.json()["telephony_mode"] == "relay"
    relayed = post_signed(client, VOICE_URL, inbound_form(number), number["auth_token"])
    assert relay_of(relayed.text).get("url", "").startswith(PUBLIC_WS)


def test_an_agent_that_cannot_be_interrupted_streams_with_barge_in_off(client, auth, twilio) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    agent_id = deployed_agent(client, auth, **PHONE_AGENT)  # interruption disabled
    number = import_number(client, auth, twilio, agent_id=agent_id)
    assert number["telephony_mode"] == "relay"  # the default
    set_mode = client.put(
        f"/api/v1/phone-numbers/{number['id']}", json={"telephony_mode": "media_stream"}, headers=auth
    )
    assert set_mode.status_code == 200, set_mode.text
    _, parameters = stream_of(post_signed(client, VOICE_URL, inbound_form(number), number["auth_token"]).text)
    assert parameters["barge_in_ms"] == "0"


def test_outbound_media_stream_calls_dial_the_bridge(client, auth, twilio, database) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    agent_id = deployed_agent(client, auth, **PHONE_AGENT)
    import_number(client, auth, twilio, agent_id=agent_id, telephony_mode="media_stream")
    body = {"agent_id": agent_id, "to": "+442079460000", "from": NUMBER}
    before = counts(database)
    refused = client.post("/api/v1/calls", json={**body, "first_message": "Hi from Acme"}, headers=auth)
    assert refused.status_code == 422 and refused.json()["error"]["details"][0]["field"] == "first_message"
    assert counts(database) == before and twilio.calls == {}
    placed = client.post("/api/v1/calls", json=body, headers=auth)
    assert placed.status_code == 201, placed.text
    url, parameters = stream_of(twilio.calls[placed.json()["call_sid"]]["form"]["Twiml"][0])
    assert url == BRIDGE and parameters["conversation_id"] == placed.json()["conversation_id"]


@pytest.mark.parametrize("mode", ["media", "MEDIA_STREAM", "", 1])
def test_unknown_modes_are_422(client, auth, twilio, mode) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    account_sid, token = twilio.add_account()
    twilio.add_number(account_sid, NUMBER)
    payload = {"phone_number": NUMBER, "twilio": {"account_sid": account_sid, "auth_token": token}}
    response = client.post("/api/v1/phone-numbers", json={**payload, "telephony_mode": mode}, headers=auth)
    assert response.status_code == 422
    assert client.get("/api/v1/phone-numbers", headers=auth).json()["data"] == []


class TestWithoutTheBridge:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"media_bridge_url": None})

    def test_media_stream_mode_is_409_and_nothing_changes(self, client, auth, twilio) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
        account_sid, token = twilio.add_account()
        twilio.add_number(account_sid, NUMBER)
        payload = {"phone_number": NUMBER, "twilio": {"account_sid": account_sid, "auth_token": token}}
        refused = client.post("/api/v1/phone-numbers", json={**payload, "telephony_mode": "media_stream"}, headers=auth)
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "media_bridge_not_configured"
        assert client.get("/api/v1/phone-numbers", headers=auth).json()["data"] == []
        (at_twilio,) = twilio.numbers.values()
        assert not at_twilio.get("voice_url")  # the carrier was not touched either

        created = client.post("/api/v1/phone-numbers", json=payload, headers=auth).json()
        update = client.put(
            f"/api/v1/phone-numbers/{created['id']}", json={"telephony_mode": "media_stream"}, headers=auth
        )
        assert update.status_code == 409 and update.json()["error"]["code"] == "media_bridge_not_configured"
        assert client.get(f"/api/v1/phone-numbers/{created['id']}", headers=auth).json()["telephony_mode"] == "relay"
