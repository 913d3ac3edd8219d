"""The relay handshake: a carrier's ConversationRelay connection (the URL the voice webhook's TwiML names) is refused
with a clear ``relay_not_available`` until the relay protocol is mapped onto the turn service; nothing opens."""

from __future__ import annotations

import json
import uuid

from tests.doubles.conv_engines import fake_engines
from tests.integration.test_conv_handlers import Harness, aws  # noqa: F401


def test_relay_handshake_answers_relay_not_available(aws, database, settings) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    h = Harness(database, settings, fake_engines())
    conversation_id, token = h.start()
    connection_id = uuid.uuid4().hex[:15] + "="
    event = {
        "queryStringParameters": {"conversation_id": conversation_id, "token": token, "relay": "twilio"},
        "requestContext": {
            "routeKey": "$connect",
            "eventType": "CONNECT",
            "connectionId": connection_id,
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "stage": "test",
        },
    }
    response = h.service.handle_connection(event)
    assert response["statusCode"] == 501
    assert json.loads(response["body"])["code"] == "relay_not_available"
    assert h.store.connection(connection_id) is None
    assert h.conversation(conversation_id).status == "created"
    # a forged token is still a 401, before anything is said about the relay
    event["queryStringParameters"] = {"conversation_id": conversation_id, "token": "x.y", "relay": "twilio"}
    assert h.service.handle_connection(event)["statusCode"] == 401
