"""Phone carriers behind ``base.Carrier``: one explicit table, carrier name -> (client factory, webhook signature
check). Twilio is the only carrier so far (Telnyx's Conversation Relay speaks the same relay protocol)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from airies.core.config import Settings
from airies.telephony.vendors import twilio
from airies.telephony.vendors.base import Carrier, CarrierCredentials, SignatureCheck


class CarrierKind(NamedTuple):
    client: Callable[[CarrierCredentials, Settings], Carrier]
    signature_valid: SignatureCheck


CARRIERS: dict[str, CarrierKind] = {
    "twilio": CarrierKind(twilio.TwilioCarrier, twilio.signature_valid),
}
