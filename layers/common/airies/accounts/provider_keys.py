"""Account-owned provider keys, and the tables other capabilities plug into.

Accounts sits below every capability, so it never imports one: the vendors' validators are handed in.

* ``register_provider(provider, kind)`` / ``register_key_validator(provider, fn, kind=...)``: a validator is a
  :class:`ProviderKeyValidator`, ``fn(api_key: str, settings: Settings) -> bool | Awaitable[bool]``: True = the
  vendor accepts the key, False = it rejects it (-> 422); raising ``ProviderError`` = the vendor could not be asked
  (-> 502). A key is never saved without a successful validation; a known provider with no validator yet -> 501.
  The API edge (``airies.api.provider_keys``) installs every vendor's: the LLM and voice vendors' from their
  capabilities' key-probe tables, Pinecone (``list_indexes``) and Stripe (balance) from their vendor modules.
* ``register_provider_status(kind, fn)``: ``fn(settings) -> list[dict]`` rows for ``GET /api/v1/providers``
  (each row at least ``{"provider", "kind", "configured", "status"}``).
* ``ProviderKeyService``: put / delete / list (masked) / get (decrypted, for internal use only).
* ``get_account_provider_key(session, account_id, provider, settings=None) -> str | None`` for other capabilities;
  ``get_account_provider_credentials`` also returns the key's options.
* Key options (``KEY_OPTIONS``): a few vendors need more than the key, e.g. Azure Speech keys belong to a region.
  Such options are sealed together with the key (so, like the key, they are never returned by the API) and are
  handed to the validator as the Settings field it reads (``azure_speech_region``). Options naming a host
  (``HOST_OPTIONS``: Pinecone's ``index_host``) pass the URL guard (``airies.core.url_guard``) before anything is
  called or stored; whoever uses a stored host checks it again.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from airies.accounts.models import ProviderKey
from airies.core.config import Settings, get_settings
from airies.core.errors import NotAvailableError, NotFoundError, ValidationFailedError
from airies.core.ids import new_id
from airies.core.models import utcnow
from airies.core.secrets import EnvelopeCipher, Sealed, get_cipher
from airies.core.url_guard import as_url, url_guard


class ProviderKeyValidator(Protocol):
    """Asks the vendor whether it accepts ``api_key`` (the Settings carry the key's options, e.g. a region)."""

    def __call__(self, api_key: str, settings: Settings, /) -> bool | Awaitable[bool]: ...


KeyValidator = ProviderKeyValidator
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
# provider -> {option: the Settings field a validator/provider reads for it}
KEY_OPTIONS: dict[str, dict[str, str]] = {
    "azure": {"region": "azure_speech_region"},
    "pinecone": {"index_host": "pinecone_index_host"},
}
# Options that name a host the platform will call with the key: tenant-supplied, so they pass the URL guard.
HOST_OPTIONS = frozenset({"index_host"})
# A key never contains whitespace, so a sealed value starting with a newline is a key with options (JSON).
_OPTIONS_MARK = "\n"


def _pack(api_key: str, options: dict[str, str]) -> str:
    if not options:
        return api_key
    return _OPTIONS_MARK + json.dumps({"api_key": api_key, "options": options}, sort_keys=True)


def _unpack(plaintext: str) -> tuple[str, dict[str, str]]:
    if plaintext.startswith(_OPTIONS_MARK):
        data = json.loads(plaintext[len(_OPTIONS_MARK) :])
        return str(data["api_key"]), {str(k): str(v) for k, v in (data.get("options") or {}).items()}
    return plaintext, {}


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


async def run_validator(provider: str, api_key: str, settings: Settings, options: dict[str, str] | None = None) -> bool:
    validator = KEY_VALIDATORS.get(provider)
    if validator is None:
        raise NotAvailableError(f"keys for '{provider}' cannot be validated yet (its capability is not available)")
    if options:
        fields = KEY_OPTIONS.get(provider, {})
        settings = settings.model_copy(update={fields[name]: value for name, value in options.items()})
    result = validator(api_key, settings)
    if inspect.isawaitable(result):
        result = await result
    return bool(result)


def _context(account_id: str, provider: str) -> dict[str, str]:
    return {"account_id": account_id, "provider": provider, "purpose": "airies-provider-key"}


def _fill(row: ProviderKey, kind: str, sealed: Sealed, api_key: str) -> None:
    row.kind = kind
    row.ciphertext = sealed.ciphertext
    row.encrypted_data_key = sealed.encrypted_data_key
    row.key_ref = sealed.key_ref
    row.hint = api_key[-4:] if len(api_key) >= 12 else ""
    row.last_validated_at = utcnow()
    row.updated_at = utcnow()


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

    def check_options(self, provider: str, options: dict[str, str] | None) -> dict[str, str]:
        """The options a key of ``provider`` may carry (422 for any other), without empty values."""
        options = {name: value for name, value in (options or {}).items() if value}
        allowed = KEY_OPTIONS.get(provider, {})
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValidationFailedError(
                f"{provider} keys take no {', '.join(unknown)}",
                details=[
                    {"field": name, "code": "not_allowed", "message": f"only for {_providers_with(name)}"}
                    for name in unknown
                ],
            )
        return options

    async def validate(self, provider: str, api_key: str, options: dict[str, str] | None = None) -> None:
        self.kind_of(provider)
        options = self.check_options(provider, options)
        guard = url_guard(self.settings)
        for name in sorted(HOST_OPTIONS & set(options)):  # before any call that would carry the key there
            await guard.acheck(as_url(options[name]), field=name)
        api_key = api_key.strip()
        if not api_key or len(api_key) > MAX_KEY_LENGTH or any(ch.isspace() for ch in api_key):
            raise ValidationFailedError(
                "api_key is malformed",
                details=[{"field": "api_key", "code": "malformed", "message": "no spaces, 1-4096 chars"}],
            )
        if not await run_validator(provider, api_key, self.settings, options):
            raise ValidationFailedError(
                f"{provider} rejected this key",
                details=[
                    {"field": "api_key", "code": "rejected_by_provider", "message": f"{provider} rejected the key"}
                ],
            )

    def store(
        self, account_id: str, provider: str, api_key: str, options: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Save an already validated key (encrypted, with its options), replacing any previous one.

        Two first-time PUTs for the same provider may race: the loser's INSERT hits the unique constraint inside a
        savepoint (so the caller's transaction survives, PostgreSQL included) and is retried as an update."""
        kind = self.kind_of(provider)
        options = self.check_options(provider, options)
        api_key = api_key.strip()
        sealed = self.cipher.seal(_pack(api_key, options), _context(account_id, provider))
        row = self._row(account_id, provider)
        if row is None:
            row = ProviderKey(id=new_id("pk"), account_id=account_id, provider=provider, kind=kind)
            _fill(row, kind, sealed, api_key)
            try:
                with self.session.begin_nested():
                    self.session.add(row)
            except IntegrityError:
                # The savepoint's rollback expunged our pending row; the concurrent one is committed now.
                row = self._row(account_id, provider)
                if row is None:
                    raise
            else:
                return _masked(row)
        _fill(row, kind, sealed, api_key)
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
        credentials = self.get_with_options(account_id, provider)
        return credentials[0] if credentials else None

    def get_with_options(self, account_id: str, provider: str) -> tuple[str, dict[str, str]] | None:
        row = self._row(account_id, provider)
        if row is None:
            return None
        sealed = Sealed(ciphertext=row.ciphertext, encrypted_data_key=row.encrypted_data_key, key_ref=row.key_ref)
        return _unpack(self.cipher.open(sealed, _context(account_id, provider)))

    def keys_of_kind(self, account_id: str, kind: str) -> dict[str, str]:
        rows = self.session.scalars(
            select(ProviderKey).where(ProviderKey.account_id == account_id, ProviderKey.kind == kind)
        )
        out = {}
        for row in rows:
            sealed = Sealed(ciphertext=row.ciphertext, encrypted_data_key=row.encrypted_data_key, key_ref=row.key_ref)
            out[row.provider] = _unpack(self.cipher.open(sealed, _context(account_id, row.provider)))[0]
        return out


def get_account_provider_key(
    session: Session, account_id: str, provider: str, settings: Settings | None = None
) -> str | None:
    """The account's own decrypted key for ``provider``, or None. Internal use only: never return it to a client."""
    return ProviderKeyService(session, settings or get_settings()).get(account_id, provider)


def stored_providers(session: Session, account_id: str) -> set[str]:
    """The providers this account has a key stored for: names only, nothing decrypted (one query)."""
    return set(session.scalars(select(ProviderKey.provider).where(ProviderKey.account_id == account_id)))


def get_account_provider_credentials(
    session: Session, account_id: str, provider: str, settings: Settings | None = None
) -> tuple[str, dict[str, str]] | None:
    """The account's own decrypted key and its options (e.g. ``{"region": ...}`` for Azure), or None."""
    return ProviderKeyService(session, settings or get_settings()).get_with_options(account_id, provider)


def _providers_with(option: str) -> str:
    return ", ".join(sorted(p for p, fields in KEY_OPTIONS.items() if option in fields)) or "no provider"
