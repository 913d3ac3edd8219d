"""LLMService: the one entry point every capability uses to talk to a language model.

``build_llm_service(settings, database, account_id=None)`` wires it: the platform's providers (OpenAI, Groq,
DeepInfra when their keys are set; any OpenAI-compatible endpoint via ``AIRIES_LLM_CUSTOM_BASE_URL``), the account's
own keys (they replace the platform key of that provider for that account) and its own OpenAI-compatible endpoints
(``airies.llm.custom_endpoints``: provider ``custom:<name>``, called through the URL guard), the router with the container-wide health
tracker (shared through ``provider_health``), and — only when no LLM provider is configured at all — the offline
responder (``providers/llm/offline.py``), which is not a language model and says so in ``StreamEnd.metadata``.

Streaming contract: ``stream_response`` yields ``TextDelta`` / ``ToolCallDelta`` events and then exactly one
``StreamEnd`` carrying usage (summed over failover attempts), exact ``cost`` (Decimal) and ``cost_usd`` (float),
``ttft_ms`` (from the call to the first delta the caller saw), provider, model and metadata
(``is_language_model``, ``key_source`` = platform | account | none, ``attempts``, ``failover``). Act on
``StreamEnd.tool_calls`` (complete, assembled), not on the deltas.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from airies.accounts.provider_keys import ProviderKeyService
from airies.core.config import Settings
from airies.core.database import unit_of_work
from airies.core.errors import NotFoundError
from airies.core.money import format_usd
from airies.core.secrets import platform_key
from airies.core.url_guard import URLGuard, url_guard
from airies.llm import catalog
from airies.llm.catalog import OFFLINE_PROVIDER
from airies.llm.cost import token_cost
from airies.llm.custom_endpoints import CustomEndpointService, endpoint_catalog, provider_name
from airies.llm.health import DatabaseHealthStore, HealthTracker
from airies.llm.router import LLMRouter, collect_response
from airies.llm.router_config import RouterConfig
from airies.llm.vendors.base import LLMEvent, LLMProvider, LLMRequest, LLMResponse, Usage
from airies.llm.vendors.offline import OfflineResponder
from airies.llm.vendors.openai_compat import OpenAICompatibleProvider
from airies.llm.vendors.table import LLM_VENDORS

# ---------------------------------------------------------------------------------------------------------------
# catalog (data file + the custom endpoint's models)
# ---------------------------------------------------------------------------------------------------------------
custom_models = catalog.custom_llm_models
all_models = catalog.all_llm_models


class SessionSource(Protocol):
    """What the LLM service needs of a database: units of work, and the engine the health statistics are shared
    through (a ``Database``, or a session's engine)."""

    @property
    def engine(self) -> Engine: ...

    def session(self) -> AbstractContextManager[Session]: ...


# ---------------------------------------------------------------------------------------------------------------
# providers
# ---------------------------------------------------------------------------------------------------------------
_provider_cache: dict[tuple[Any, ...], OpenAICompatibleProvider] = {}
_cache_lock = threading.Lock()


def _provider(
    settings: Settings,
    name: str,
    base_url: str,
    api_key: str | None,
    *,
    key_source: str,
    models: list[str],
    stream_usage: bool = True,
    guard: URLGuard | None = None,
) -> OpenAICompatibleProvider:
    # Reused per container, so HTTP connections (and their TLS handshakes) survive between requests.
    digest = hashlib.sha256((api_key or "").encode()).hexdigest()
    key = (
        name,
        base_url,
        digest,
        key_source,
        stream_usage,
        settings.llm_connect_timeout_s,
        settings.llm_stream_idle_timeout_s,
        (guard.https_only, guard.allowed_hosts) if guard is not None else None,
    )
    with _cache_lock:
        provider = _provider_cache.get(key)
        if provider is None:
            import openai  # noqa: F401  -- pay the SDK import here, not inside the first request's TTFT

            provider = LLM_VENDORS.get(name, OpenAICompatibleProvider)(
                name,
                base_url=base_url,
                api_key=api_key,
                models=models,
                connect_timeout=settings.llm_connect_timeout_s,
                read_timeout=settings.llm_stream_idle_timeout_s,
                stream_usage=stream_usage,
                key_source=key_source,
                url_guard=guard,
            )
            _provider_cache[key] = provider
    return provider


def vendor_base_url(settings: Settings, vendor: str) -> str:
    return str(getattr(settings, f"{vendor}_base_url"))


def platform_providers(settings: Settings) -> dict[str, LLMProvider]:
    providers: dict[str, LLMProvider] = {}
    for vendor in LLM_VENDORS:
        key = platform_key(settings, f"{vendor}_api_key")
        if key:
            models = [m.model for m in catalog.llm_models() if m.provider == vendor]
            providers[vendor] = _provider(
                settings, vendor, vendor_base_url(settings, vendor), key, key_source="platform", models=models
            )
    if settings.llm_custom_base_url:
        name = settings.llm_custom_name
        key = platform_key(settings, "llm_custom_api_key")
        models = [m.model for m in custom_models(settings)]
        providers[name] = _provider(
            settings,
            name,
            settings.llm_custom_base_url,
            key,
            key_source="platform",
            models=models,
            stream_usage=settings.llm_custom_stream_usage,
        )
    return providers


def account_providers(
    settings: Settings, database: SessionSource | None, account_id: str, *, session: Session | None = None
) -> tuple[dict[str, LLMProvider], list[catalog.LLMModel]]:
    """The account's own providers (its vendor keys, its custom endpoints) and the catalog entries of its endpoints."""
    if session is not None:
        keys = ProviderKeyService(session, settings).keys_of_kind(account_id, "llm")
        endpoints = CustomEndpointService(session, settings).callable_endpoints(account_id)
    elif database is not None:
        with database.session() as own:
            keys = ProviderKeyService(own, settings).keys_of_kind(account_id, "llm")
            endpoints = CustomEndpointService(own, settings).callable_endpoints(account_id)
    else:
        raise ValueError("the account's providers are read through a session or a database")
    providers: dict[str, LLMProvider] = {}
    for vendor, key in keys.items():
        if vendor in LLM_VENDORS:
            models = [m.model for m in catalog.llm_models() if m.provider == vendor]
            providers[vendor] = _provider(
                settings, vendor, vendor_base_url(settings, vendor), key, key_source="account", models=models
            )
    guard = url_guard(settings)  # tenant-supplied URLs: every connection checked
    for endpoint in endpoints:
        providers[endpoint.provider] = _provider(
            settings,
            endpoint.provider,
            endpoint.base_url,
            endpoint.api_key,
            key_source="account",
            models=list(endpoint.models),
            stream_usage=endpoint.stream_usage,
            guard=guard,
        )
    return providers, endpoint_catalog(endpoints)


def configured_llm_providers(settings: Settings, session: Session, account_id: str, stored: set[str]) -> set[str]:
    """The LLM providers ``build_llm_service`` would give this account (platform keys, the operator's custom
    endpoint, the account's own keys among the providers it has ``stored`` keys for, and its endpoints), found
    without building them (no key decrypted, no SDK)."""
    names = {vendor for vendor in LLM_VENDORS if platform_key(settings, f"{vendor}_api_key")}
    if settings.llm_custom_base_url:
        names.add(settings.llm_custom_name)
    names.update(stored.intersection(LLM_VENDORS))
    names.update(provider_name(row.name) for row in CustomEndpointService(session, settings).list(account_id))
    return names


# ---------------------------------------------------------------------------------------------------------------
# container-wide health trackers (one per database)
# ---------------------------------------------------------------------------------------------------------------
_trackers: dict[str, HealthTracker] = {}


def get_health_tracker(settings: Settings, database: SessionSource | None) -> HealthTracker:
    engine = getattr(database, "engine", None)
    key = engine.url.render_as_string(hide_password=False) if engine is not None else "memory"
    tracker = _trackers.get(key)
    if tracker is None:
        store = DatabaseHealthStore(database) if database is not None else None
        tracker = _trackers[key] = HealthTracker(RouterConfig.from_settings(settings), store=store)
    return tracker


def reset_health_trackers() -> None:
    """Forget every container-local statistic (tests; the shared table is untouched)."""
    _trackers.clear()


# ---------------------------------------------------------------------------------------------------------------
# the service
# ---------------------------------------------------------------------------------------------------------------
class LLMService:
    def __init__(self, router: LLMRouter, *, settings: Settings, account_id: str | None = None) -> None:
        self.router = router
        self.settings = settings
        self.account_id = account_id

    @property
    def offline(self) -> bool:
        return set(self.router.providers) == {OFFLINE_PROVIDER}

    async def stream_response(self, request: LLMRequest, *, account_id: str | None = None) -> AsyncIterator[LLMEvent]:
        # account_id is accepted for symmetry with the factory; the account's keys were bound when it was built.
        async with contextlib.aclosing(self.router.stream(request)) as events:  # close upstream at once on barge-in
            async for event in events:
                yield event

    async def generate_response(
        self, request: LLMRequest, *, account_id: str | None = None, stream: bool = False
    ) -> LLMResponse:
        """The whole reply at once. ``stream=True`` collects a stream instead of a non-streaming call."""
        if stream:
            return await collect_response(self.router.stream(request))
        return await self.router.complete(request)

    def get_available_models(self) -> list[dict[str, Any]]:
        """Catalog models of the configured providers (with prices), per provider."""
        out = []
        for model in self.router.catalog.models:
            if model.provider not in self.router.providers:
                continue
            provider = self.router.providers[model.provider]
            out.append(
                {
                    "provider": model.provider,
                    "model": model.model,
                    "model_class": model.model_class,
                    "context_window": model.context_window,
                    # USD per million tokens; the catalog's floats through their shortest repr, never binary noise
                    "input_per_mtok": format_usd(Decimal(repr(model.input_per_mtok))),
                    "cached_input_per_mtok": format_usd(Decimal(repr(model.cached_input_per_mtok))),
                    "output_per_mtok": format_usd(Decimal(repr(model.output_per_mtok))),
                    "key_source": getattr(provider, "key_source", "platform"),
                    "is_language_model": model.provider != OFFLINE_PROVIDER,
                }
            )
        return out

    def calculate_token_cost(self, provider: str, model: str, usage: Usage) -> Decimal:
        return calculate_token_cost(provider, model, usage, settings=self.settings)

    async def validate_api_key(self, provider: str, api_key: str) -> bool:
        if provider not in LLM_VENDORS:
            raise NotFoundError("llm provider", provider)
        return await validate_llm_key(provider, api_key, self.settings)

    def get_provider_status(self) -> list[dict[str, Any]]:
        health = self.router.get_provider_health()
        rows = []
        for name, provider in self.router.providers.items():
            snap = health[name]
            status = "healthy"
            if name == OFFLINE_PROVIDER:
                status = "offline"
            elif snap["breaker"] == "open":
                status = "unavailable"
            elif snap["retry_after_s"] > 0:
                status = "rate_limited"
            elif snap["breaker"] == "half_open" or snap["error_rate"] >= 0.2:
                status = "degraded"
            elif not snap["samples"]:
                status = "unknown"  # configured, but no call measured yet: no evidence either way
            rows.append(
                {
                    "provider": name,
                    "kind": "llm",
                    "configured": True,
                    "status": status,
                    "key_source": getattr(provider, "key_source", "platform"),
                    "base_url": getattr(provider, "base_url", None),
                    "is_language_model": name != OFFLINE_PROVIDER,
                    "health": {k: v for k, v in snap.items() if k != "weight"},
                    "weight": snap["weight"],
                }
            )
        return rows


def calculate_token_cost(provider: str, model: str, usage: Usage, *, settings: Settings | None = None) -> Decimal:
    """Exact USD cost of ``usage`` at the catalog's prices (0 for unknown or self-hosted models)."""
    models = all_models(settings) if settings is not None else list(catalog.llm_models())
    entry = next((m for m in models if m.provider == provider and m.model == model), None)
    return token_cost(entry, usage)


class _EngineDatabase:
    """The bits of ``Database`` the health store needs, from a session's engine (when only a session is given)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.url = str(engine.url)
        self.session_factory = sessionmaker(engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def session(self) -> AbstractContextManager[Session]:
        return unit_of_work(self.session_factory)


def build_llm_service(
    settings: Settings,
    database: SessionSource | None = None,
    account_id: str | None = None,
    *,
    session: Session | None = None,
    tracker: HealthTracker | None = None,
    rng: random.Random | None = None,
) -> LLMService:
    """Wire an LLMService. Pass ``database`` (a ``Database``) or, inside a unit of work, ``session``: the account's
    keys are read through it, and the health statistics are shared through its engine."""
    if database is None and session is not None:
        bind = session.get_bind()
        database = _EngineDatabase(bind if isinstance(bind, Engine) else bind.engine)
    providers = platform_providers(settings)
    models = all_models(settings)
    if account_id and (database is not None or session is not None):
        own, endpoint_models = account_providers(settings, database, account_id, session=session)
        providers.update(own)
        models += endpoint_models
    if not providers:
        providers = {OFFLINE_PROVIDER: OfflineResponder()}
    router = LLMRouter(
        providers,
        models=models,
        config=RouterConfig.from_settings(settings),
        tracker=tracker or get_health_tracker(settings, database),
        rng=rng,
        account_id=account_id,
    )
    return LLMService(router, settings=settings, account_id=account_id)


# ---------------------------------------------------------------------------------------------------------------
# registrations: LLM key validators and the LLM rows of GET /api/v1/providers
# ---------------------------------------------------------------------------------------------------------------
async def validate_llm_key(provider: str, api_key: str, settings: Settings) -> bool:
    probe = LLM_VENDORS[provider](
        provider,
        base_url=vendor_base_url(settings, provider),
        api_key=api_key,
        connect_timeout=settings.llm_connect_timeout_s,
        read_timeout=settings.llm_first_token_timeout_s,
    )
    return await probe.validate_api_key(api_key)


def _llm_validator(provider: str) -> Callable[[str, Settings], Awaitable[bool]]:
    async def validate(api_key: str, settings: Settings) -> bool:
        return await validate_llm_key(provider, api_key, settings)

    return validate


# The LLM vendors' key probes (provider -> validator), from the vendor table.
KEY_VALIDATORS = {vendor: _llm_validator(vendor) for vendor in LLM_VENDORS}


def llm_provider_status(settings: Settings, database: SessionSource | None = None) -> list[dict[str, Any]]:
    service = build_llm_service(settings, database)
    rows = service.get_provider_status()
    configured = {row["provider"] for row in rows}
    for vendor in LLM_VENDORS:
        if vendor not in configured:
            rows.append({"provider": vendor, "kind": "llm", "configured": False, "status": "not_configured"})
    return rows
