"""The carrier interface: what the telephony service needs from a phone carrier's REST API and webhooks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class CarrierCredentials:
    account_sid: str
    auth_token: str


@dataclass(frozen=True)
class CarrierNumber:
    sid: str
    number: str  # E.164
    voice_url: str | None = None
    status_callback: str | None = None


@dataclass(frozen=True)
class OutboundCall:
    to: str
    from_: str
    twiml: str
    status_callback: str
    machine_detection: bool = False


class Carrier(Protocol):
    """One carrier account's REST API (numbers, calls) and its webhook signatures. Failures raise
    ``ValidationFailedError`` (the carrier refused the credentials or the input: the client can fix it) or
    ``ProviderError`` (the carrier could not be reached or failed)."""

    name: str

    def find_number(self, number: str) -> CarrierNumber | None: ...

    def configure_number(self, sid: str, *, voice_url: str, status_callback: str) -> CarrierNumber: ...

    def place_call(self, call: OutboundCall) -> str: ...

    def hang_up(self, call_sid: str) -> None: ...


class SignatureCheck(Protocol):
    """Whether ``signature`` signs the request to ``url`` with ``params`` (every value of every form field)."""

    def __call__(
        self, auth_token: str, url: str, params: Mapping[str, Sequence[str]], signature: str | None, /
    ) -> bool: ...
