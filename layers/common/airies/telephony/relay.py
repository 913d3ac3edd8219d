"""The telephony side of a carrier's relay: who may open one (the signed WebSocket handshake) and where a call the
agent transferred goes (the ``<Connect>`` action's ``<Dial>``).

The live edge (``conversations.relay``) speaks the relay; ``$connect``'s (``conversations.connections``) is built
with :class:`RelayHandshake` by the edges that build the WebSocket service, so the check needs the call's carrier
credentials without the conversations capability knowing about phone numbers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from sqlalchemy import select

from airies.core.config import Settings
from airies.core.database import Database
from airies.core.errors import ForbiddenError
from airies.telephony.models import PhoneCall, PhoneNumber
from airies.telephony.service import TelephonyService
from airies.telephony.signatures import SIGNATURE_HEADER
from airies.tools.schemas import TRANSFER_DESTINATION_PATTERN

DIALLABLE = re.compile(TRANSFER_DESTINATION_PATTERN)  # an E.164 number or a SIP URI, as transfer_call's config


class RelayHandshake:
    """``conversations.connections.HandshakeVerifier``: the relay's ``X-Twilio-Signature`` signs its URL with the auth
    token of the number the conversation's call came through (or was placed from)."""

    def __init__(self, settings: Settings, database: Database) -> None:
        self.settings = settings
        self.database = database

    def __call__(self, conversation_id: str, account_id: str, url: str, headers: Mapping[str, str]) -> None:
        with self.database.session() as session:
            call = session.scalar(
                select(PhoneCall).where(
                    PhoneCall.conversation_id == conversation_id, PhoneCall.account_id == account_id
                )
            )
            number = session.get(PhoneNumber, call.phone_number_id) if call and call.phone_number_id else None
            if number is None:
                raise ForbiddenError("this conversation is not a phone call", code="not_a_phone_call")
            TelephonyService(session, self.settings).verify(number, url, {}, headers.get(SIGNATURE_HEADER))


def transfer_destination(handoff: str | None) -> str | None:
    """The destination of a relay that ended with a transfer (its ``HandoffData``): an E.164 number or a SIP URI;
    None when the relay ended otherwise or names nothing dialable."""
    try:
        data = json.loads(handoff or "")
    except ValueError:
        return None
    destination = data.get("destination") if isinstance(data, dict) else None
    if not isinstance(destination, str):
        return None
    destination = destination.strip()
    return destination if DIALLABLE.match(destination) else None
