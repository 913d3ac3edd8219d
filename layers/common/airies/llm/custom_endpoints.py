"""Accounts' own OpenAI-compatible LLM endpoints (a customer's vLLM, Ollama, LiteLLM or fine-tuned model server).

An endpoint is a name, a base URL, an optional API key and the models its ``GET {base_url}/models`` listed. Agents
select it as provider ``custom:<name>`` (``llm.provider`` and ``llm.fallbacks``), with any of those models; the
router treats it like any other provider of the account (``key_source="account"``: its failures count for that
account only). The base URL is tenant-supplied, so it passes the URL guard (``airies.core.url_guard``) when saved,
and every call goes through the guard's HTTP client (each connection to a checked public address, redirects too).

Saving (create, and every update) asks the endpoint for its models with the key: refused URL, rejected key,
unreachable endpoint, an answer that is not an OpenAI model list, or no model at all -> 422 with the field and a
code, and nothing is stored. The key is sealed like provider keys (``airies.core.secrets.EnvelopeCipher``: KMS
on AWS, the local key file otherwise, the account and endpoint ids as authenticated data); only its last 4
characters (of keys of 12 or more) are kept in clear, and no route returns it. The name is the agents' reference to
the endpoint, so it cannot change; an endpoint that an agent's draft or published version uses cannot be deleted
(409 ``endpoint_in_use``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from airies.core.aio import run_sync
from airies.core.config import Settings
from airies.core.errors import ConflictError, NotFoundError, ProviderError, ValidationFailedError
from airies.core.ids import new_id
from airies.core.models import utcnow
from airies.core.secrets import EnvelopeCipher, Sealed, get_cipher
from airies.core.url_guard import URLGuard, URLNotAllowed, url_guard
from airies.llm import catalog
from airies.llm.models import LLMCustomEndpoint
from airies.llm.vendors.openai_compat import OpenAICompatibleProvider

PROVIDER_PREFIX = "custom:"
MAX_MODELS = 500
MAX_MODEL_ID_LENGTH = 200
NO_KEY = "not-needed"  # what the SDK sends to an endpoint that takes no key
# (session, account_id, provider) -> ids of the account's agents configured to call ``provider``: the agents
# capability answers it (the API edge passes ``airies.agents.service.agents_using_provider``).
EndpointUsers = Callable[[Session, str, str], list[str]]


def provider_name(endpoint_name: str) -> str:
    """The provider name agents use for the endpoint: ``custom:<name>``."""
    return f"{PROVIDER_PREFIX}{endpoint_name}"


@dataclass(frozen=True)
class AccountEndpoint:
    """An endpoint ready to call: decrypted, for internal use only (never returned to a client)."""

    provider: str
    base_url: str
    api_key: str | None
    models: tuple[str, ...]
    model_class: str
    stream_usage: bool


def endpoint_catalog(endpoints: list[AccountEndpoint]) -> list[catalog.LLMModel]:
    """The endpoints' models as catalog entries: no price (the customer runs them), context window unknown (0)."""
    return [
        catalog.LLMModel(
            provider=endpoint.provider,
            model=model,
            model_class=endpoint.model_class,
            context_window=0,
            input_per_mtok=0.0,
            cached_input_per_mtok=0.0,
            output_per_mtok=0.0,
        )
        for endpoint in endpoints
        for model in endpoint.models
    ]


def account_endpoint_models(session: Session, account_id: str) -> list[catalog.LLMModel]:
    """The catalog entries of the account's endpoints (no key is decrypted)."""
    rows = session.scalars(select(LLMCustomEndpoint).where(LLMCustomEndpoint.account_id == account_id))
    return [
        catalog.LLMModel(provider_name(row.name), str(model), row.model_class, 0, 0.0, 0.0, 0.0)
        for row in rows
        for model in row.models or []
    ]


def _context(account_id: str, endpoint_id: str) -> dict[str, str]:
    return {"account_id": account_id, "endpoint_id": endpoint_id, "purpose": "airies-llm-custom-endpoint"}


def _problem(field: str, code: str, message: str) -> ValidationFailedError:
    return ValidationFailedError(message, details=[{"field": field, "code": code, "message": message}])


def endpoint_out(row: LLMCustomEndpoint) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "provider": provider_name(row.name),
        "base_url": row.base_url,
        "has_key": row.ciphertext is not None,
        "masked_key": f"****{row.hint}" if row.ciphertext is not None else None,
        "models": list(row.models or []),
        "model_class": row.model_class,
        "stream_usage": row.stream_usage,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "last_validated_at": row.last_validated_at,
    }


class CustomEndpointService:
    def __init__(
        self,
        session: Session,
        settings: Settings,
        *,
        cipher: EnvelopeCipher | None = None,
        guard: URLGuard | None = None,
    ) -> None:
        self.session = session
        self.settings = settings
        self.cipher = cipher or get_cipher(settings)
        self.guard = guard or url_guard(settings)

    # -- reads ----------------------------------------------------------------------------------------------------
    def list(self, account_id: str) -> list[LLMCustomEndpoint]:
        query = select(LLMCustomEndpoint).where(LLMCustomEndpoint.account_id == account_id)
        return list(self.session.scalars(query.order_by(LLMCustomEndpoint.name)))

    def get(self, account_id: str, endpoint_id: str) -> LLMCustomEndpoint:
        row = self.session.scalar(
            select(LLMCustomEndpoint).where(
                LLMCustomEndpoint.id == endpoint_id, LLMCustomEndpoint.account_id == account_id
            )
        )
        if row is None:
            raise NotFoundError("custom endpoint", endpoint_id)
        return row

    def api_key(self, row: LLMCustomEndpoint) -> str | None:
        if row.ciphertext is None or row.encrypted_data_key is None or row.key_ref is None:
            return None
        sealed = Sealed(ciphertext=row.ciphertext, encrypted_data_key=row.encrypted_data_key, key_ref=row.key_ref)
        return self.cipher.open(sealed, _context(row.account_id, row.id))

    def callable_endpoints(self, account_id: str) -> list[AccountEndpoint]:
        """Every endpoint of the account with its key decrypted (internal use only)."""
        return [
            AccountEndpoint(
                provider=provider_name(row.name),
                base_url=row.base_url,
                api_key=self.api_key(row),
                models=tuple(str(model) for model in row.models or []),
                model_class=row.model_class,
                stream_usage=row.stream_usage,
            )
            for row in self.list(account_id)
        ]

    # -- validation -----------------------------------------------------------------------------------------------
    async def probe(self, base_url: str, api_key: str | None) -> list[str]:
        """The model ids the endpoint lists for this key; 422 (``URLNotAllowed`` or ``ValidationFailedError``) when
        the URL is refused, the key rejected, the endpoint unreachable or not OpenAI-compatible, or it lists none.
        Nothing the endpoint answered is quoted back: only what failed."""
        await self.guard.acheck(base_url, field="base_url")
        probe = OpenAICompatibleProvider(
            "custom endpoint",
            base_url=base_url,
            api_key=api_key,
            connect_timeout=self.settings.llm_connect_timeout_s,
            read_timeout=self.settings.llm_first_token_timeout_s,
            url_guard=self.guard,
        )
        try:
            models = await probe.list_models(api_key or NO_KEY)
        except ProviderError as exc:
            reason = (exc.details or {}).get("reason")
            status = exc.upstream_status
            if reason == "auth":
                raise _problem(
                    "api_key", "rejected_by_provider", f"the endpoint rejected the key (HTTP {status})"
                ) from None
            refused = exc.__cause__
            if isinstance(refused, URLNotAllowed):  # a redirect, or a DNS answer changed since the check
                raise URLNotAllowed(refused.message, reason=refused.reason, field="base_url") from None
            if reason in ("connection", "timeout", "connect_timeout"):
                raise _problem("base_url", "unreachable", f"the endpoint could not be reached ({reason})") from None
            answer = f"HTTP {status}" if status else "an answer that is not a model list"
            raise _problem(
                "base_url", "not_openai_compatible", f"GET {base_url.rstrip('/')}/models gave {answer}"
            ) from None
        models = [model for model in models if 0 < len(model) <= MAX_MODEL_ID_LENGTH][:MAX_MODELS]
        if not models:
            raise _problem("base_url", "no_models", "the endpoint lists no model")
        return models

    # -- writes ---------------------------------------------------------------------------------------------------
    def _seal(self, row: LLMCustomEndpoint, api_key: str | None) -> None:
        if api_key is None:
            row.ciphertext = row.encrypted_data_key = row.key_ref = None
            row.hint = ""
            return
        sealed = self.cipher.seal(api_key, _context(row.account_id, row.id))
        row.ciphertext, row.encrypted_data_key, row.key_ref = (
            sealed.ciphertext,
            sealed.encrypted_data_key,
            sealed.key_ref,
        )
        row.hint = api_key[-4:] if len(api_key) >= 12 else ""

    def create(
        self,
        account_id: str,
        *,
        name: str,
        base_url: str,
        api_key: str | None,
        model_class: str = "fast",
        stream_usage: bool = True,
    ) -> LLMCustomEndpoint:
        self._check_new_name(account_id, name)
        models = run_sync(self.probe, base_url, api_key)
        row = LLMCustomEndpoint(
            id=new_id("lce"),
            account_id=account_id,
            name=name,
            base_url=base_url,
            models=models,
            model_class=model_class,
            stream_usage=stream_usage,
            last_validated_at=utcnow(),
        )
        self._seal(row, api_key)
        try:
            with self.session.begin_nested():  # a concurrent create of the same name loses here, not with a 500
                self.session.add(row)
        except IntegrityError:
            raise ConflictError(f"a custom endpoint named '{name}' exists", code="endpoint_exists") from None
        return row

    def _check_new_name(self, account_id: str, name: str) -> None:
        taken = self.session.scalar(
            select(LLMCustomEndpoint.id).where(
                LLMCustomEndpoint.account_id == account_id, LLMCustomEndpoint.name == name
            )
        )
        if taken is not None:
            raise ConflictError(f"a custom endpoint named '{name}' exists", code="endpoint_exists")

    def update(self, account_id: str, endpoint_id: str, changes: dict[str, Any]) -> LLMCustomEndpoint:
        """Change the base URL, key (``None`` removes it), model class or usage streaming; the endpoint is asked for
        its models again (so an update also refreshes them)."""
        row = self.get(account_id, endpoint_id)
        base_url = changes.get("base_url", row.base_url)
        api_key = changes["api_key"] if "api_key" in changes else self.api_key(row)
        models = run_sync(self.probe, base_url, api_key)
        row.base_url = base_url
        row.models = models
        if "api_key" in changes:
            self._seal(row, api_key)
        for field in ("model_class", "stream_usage"):
            if changes.get(field) is not None:
                setattr(row, field, changes[field])
        row.last_validated_at = row.updated_at = utcnow()
        self.session.flush()
        return row

    def delete(self, account_id: str, endpoint_id: str, *, users_of: EndpointUsers) -> None:
        """Delete an endpoint no agent uses (409 ``endpoint_in_use`` naming the agents that do)."""
        row = self.get(account_id, endpoint_id)
        users = users_of(self.session, account_id, provider_name(row.name))
        if users:
            raise ConflictError(
                f"agents use this endpoint: {', '.join(users)}; point them elsewhere first",
                code="endpoint_in_use",
                details={"agent_ids": users},
            )
        self.session.delete(row)
        self.session.flush()
