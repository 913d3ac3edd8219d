"""Account-owned provider keys, and the registries other capabilities plug into.

* ``register_provider(provider, kind)`` / ``register_key_validator(provider, fn, kind=...)``: a validator is
  ``fn(api_key: str, settings: Settings) -> bool | Awaitable[bool]``: True = the vendor accepts the key,
  False = it rejects it (-> 422); raising ``ProviderError`` = the vendor could not be asked (-> 502). A key is never
  saved without a successful validation; a known provider with no validator registered yet -> 501.
  LLM providers (openai, groq, deepinfra) register themselves here (a ``GET /models`` with the key).
* ``register_provider_status(kind, fn)``: ``fn(settings) -> list[dict]`` rows for ``GET /api/v1/providers``
  (each row at least ``{"provider", "kind", "configured", "status"}``).
* ``ProviderKeyService``: put / delete / list (masked) / get (decrypted, for internal use only).
* ``get_account_provider_key(session, account_id, provider, settings=None) -> str | None`` for other capabilities.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from airies.config import Settings, get_settings
from airies.db.ids import new_id
from airies.db.models import utcnow
from airies.db.models.llm import ProviderKey
from airies.errors import NotAvailableError, NotFoundError, ValidationFailedError
from airies.services.secrets import EnvelopeCipher, Sealed, get_cipher

KeyValidator = Callable[[str, Settings], "bool | Awaitable[bool]"]
StatusReporter = Callable[[Settings], list[dict[str, Any]]]

# provider -> kind. Pre-filled with every vendor the platform plans to support, so a PUT for a vendor whose
# capability has not registered a validator yet says 501 (not built) rather than 404 (never heard of it).
PROVIDER_KINDS: dict[str, str] = {
    "openai": "llm",
    "groq": "llm",
    "deepinfra": "llm",
    "deepgram": "stt",
    "elevenlabs": "tts",
    "azure": "speech",
    "pinecone": "vectors",
    "stripe": "payments",
}
KEY_VALIDATORS: dict[str, KeyValidator] = {}
STATUS_REPORTERS: dict[str, StatusReporter] = {}
MAX_KEY_LENGTH = 4096


def register_provider(provider: str, kind: str) -> None:
    PROVIDER_KINDS[provider] = kind


def register_key_validator(provider: str, fn: KeyValidator, *, kind: str | None = None) -> None:
    if kind is not None:
        PROVIDER_KINDS[provider] = kind
    elif provider not in PROVIDER_KINDS:
        raise ValueError(f"unknown provider {provider!r}: pass kind=")
    KEY_VALIDATORS[provider] = fn


def register_provider_status(kind: str, fn: StatusReporter) -> None:
    STATUS_REPORTERS[kind] = fn


async def run_validator(provider: str, api_key: str, settings: Settings) -> bool:
    validator = KEY_VALIDATORS.get(provider)
    if validator is None:
        raise NotAvailableError(f"keys for '{provider}' cannot be validated yet (its capability is not available)")
    result = validator(api_key, settings)
    if inspect.isawaitable(result):
        result = await result
    return bool(result)


def _context(account_id: str, provider: str) -> dict[str, str]:
    return {"account_id": account_id, "provider": provider, "purpose": "airies-provider-key"}


def _masked(row: ProviderKey) -> dict[str, Any]:
    return {
        "provider": row.provider,
        "kind": row.kind,
        "masked_key": f"****{row.hint}",
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "last_validated_at": row.last_validated_at,
    }


class ProviderKeyService:
    def __init__(self, session: Session, settings: Settings, *, cipher: EnvelopeCipher | None = None) -> None:
        self.session = session
        self.settings = settings
        self.cipher = cipher or get_cipher(settings)

    @staticmethod
    def kind_of(provider: str) -> str:
        kind = PROVIDER_KINDS.get(provider)
        if kind is None:
            raise NotFoundError("provider", provider)
        return kind

    def _row(self, account_id: str, provider: str) -> ProviderKey | None:
        return self.session.scalars(
            select(ProviderKey).where(ProviderKey.account_id == account_id, ProviderKey.provider == provider)
        ).one_or_none()

    async def validate(self, provider: str, api_key: str) -> None:
        self.kind_of(provider)
        api_key = api_key.strip()
        if not api_key or len(api_key) > MAX_KEY_LENGTH or any(ch.isspace() for ch in api_key):
            raise ValidationFailedError(
                "api_key is malformed",
                details=[{"field": "api_key", "code": "malformed", "message": "no spaces, 1-4096 chars"}],
            )
        if not await run_validator(provider, api_key, self.settings):
            raise ValidationFailedError(
                f"{provider} rejected this key",
                details=[
                    {"field": "api_key", "code": "rejected_by_provider", "message": f"{provider} rejected the key"}
                ],
            )

    def store(self, account_id: str, provider: str, api_key: str) -> dict[str, Any]:
        """Save an already validated key (encrypted), replacing any previous one."""
        kind = self.kind_of(provider)
        api_key = api_key.strip()
        sealed = self.cipher.seal(api_key, _context(account_id, provider))
        row = self._row(account_id, provider)
        if row is None:
            row = ProviderKey(id=new_id("pk"), account_id=account_id, provider=provider, kind=kind)
            self.session.add(row)
        row.kind = kind
        row.ciphertext = sealed.ciphertext
        row.encrypted_data_key = sealed.encrypted_data_key
        row.key_ref = sealed.key_ref
        row.hint = api_key[-4:] if len(api_key) >= 12 else ""
        row.last_validated_at = utcnow()
        row.updated_at = utcnow()
        self.session.flush()
        return _masked(row)

    def delete(self, account_id: str, provider: str) -> None:
        self.kind_of(provider)
        row = self._row(account_id, provider)
        if row is None:
            raise NotFoundError("provider key", provider)
        self.session.delete(row)
        self.session.flush()

    def list(self, account_id: str) -> list[dict[str, Any]]:
        rows = self.session.scalars(
            select(ProviderKey).where(ProviderKey.account_id == account_id).order_by(ProviderKey.provider)
        )
        return [_masked(row) for row in rows]

    def get(self, account_id: str, provider: str) -> str | None:
        row = self._row(account_id, provider)
        if row is None:
            return None
        sealed = Sealed(ciphertext=row.ciphertext, encrypted_data_key=row.encrypted_data_key, key_ref=row.key_ref)
        return self.cipher.open(sealed, _context(account_id, provider))

    def keys_of_kind(self, account_id: str, kind: str) -> dict[str, str]:
        rows = self.session.scalars(
            select(ProviderKey).where(ProviderKey.account_id == account_id, ProviderKey.kind == kind)
        )
        out = {}
        for row in rows:
            sealed = Sealed(ciphertext=row.ciphertext, encrypted_data_key=row.encrypted_data_key, key_ref=row.key_ref)
            out[row.provider] = self.cipher.open(sealed, _context(account_id, row.provider))
        return out


def get_account_provider_key(
    session: Session, account_id: str, provider: str, settings: Settings | None = None
) -> str | None:
    """The account's own decrypted key for ``provider``, or None. Internal use only: never return it to a client."""
    return ProviderKeyService(session, settings or get_settings()).get(account_id, provider)
