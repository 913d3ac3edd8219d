"""The LLM router: which provider answers, and what happens when it fails.

Routing (``route_request``) builds an ordered plan of (provider, model) candidates:
  1. the model class: the catalog class of (request.provider, request.model), else of ``request.model`` under any
     provider, else ``request.model_class``, else ``request.model`` itself when it names a class ("fast", "smart");
  2. the pinned provider (``request.provider``) first when it is configured and its breaker admits a call;
     then ``request.fallbacks`` in order; then every other configured provider serving the class, with the model the
     catalog lists first for that provider and class. With no pinned provider the first candidate is a weighted random
     choice; the rest follow by weight. A class with no configured provider falls back to every configured provider.
  Weights (``update_provider_weights``): ``(1 - error_rate)^2 * 1000 / (ttft_ms + 100) / sqrt(1 + price)``, where
  ttft_ms and error_rate are moving averages measured by this router (shared across containers, see below) and
  price is the blended list price (3:1 input:output) per million tokens. An open breaker or a Retry-After window
  makes the weight 0.

Failover (``handle_failover``) on connection errors, connect timeouts, first-token timeouts, idle-stream timeouts,
5xx, 429 (the provider is skipped until its Retry-After passes), 401/403/404 and dropped streams; never on 400/422.
A breaker per provider opens after ``llm_breaker_failures`` consecutive failures for ``llm_breaker_cooldown_s``,
then lets one trial call through (half-open): success closes it, failure reopens it.

Usage and cost of a failed-over reply are the sum over attempts (a partial attempt's usage is estimated);
``StreamEnd.metadata["attempts"]`` lists each attempt.

The pieces: ``router_config`` (settings, health keys, prices), ``health`` (breakers, Retry-After, measured TTFT and
error rate, shared through ``provider_health``), ``continuation`` (no text said twice after a mid-stream failover).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from airies.core.errors import NotAvailableError, ProviderError, RateLimitedError
from airies.core.money import format_usd
from airies.llm import catalog
from airies.llm.continuation import PrefixSuppressor, continuation_request
from airies.llm.cost import token_cost
from airies.llm.health import PRIOR_TTFT_MS, HealthTracker, ProviderStats
from airies.llm.router_config import RouterConfig, account_health_key, blended_price
from airies.llm.vendors.base import (
    LLMEvent,
    LLMProvider,
    LLMRequest,
    LLMResponse,
    StreamEnd,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from airies.llm.vendors.openai_compat import estimate_usage


def requested_provider(request: LLMRequest) -> tuple[str | None, list[tuple[str, str]]]:
    """The pinned provider and fallbacks: the request fields, else ``metadata["provider"]`` / ``["fallbacks"]``
    (a list of ``{"provider", "model"}`` dicts or pairs), which is how agent configs pass them through."""
    pinned = request.provider or request.metadata.get("provider") or None
    raw = list(request.fallbacks) or list(request.metadata.get("fallbacks") or [])
    fallbacks: list[tuple[str, str]] = []
    for item in raw:
        if isinstance(item, dict) and item.get("provider") and item.get("model"):
            fallbacks.append((str(item["provider"]), str(item["model"])))
        elif isinstance(item, list | tuple) and len(item) == 2:
            fallbacks.append((str(item[0]), str(item[1])))
    return pinned, fallbacks


@dataclass(frozen=True)
class Candidate:
    provider: str
    model: str
    model_class: str | None
    price: float  # blended USD per million tokens


@dataclass
class Attempt:
    candidate: Candidate
    error: str | None = None
    reason: str | None = None
    emitted_chars: int = 0
    usage: Usage | None = None
    cost: Decimal = Decimal(0)
    ttft_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "provider": self.candidate.provider,
            "model": self.candidate.model,
            "error": self.error,
            "reason": self.reason,
            "emitted_chars": self.emitted_chars,
            "ttft_ms": None if self.ttft_ms is None else round(self.ttft_ms, 2),
            "cost_usd": format_usd(self.cost),
        }


@dataclass
class _Catalog:
    models: list[catalog.LLMModel] = field(default_factory=list)

    def find(self, provider: str, model: str) -> catalog.LLMModel | None:
        for entry in self.models:
            if entry.provider == provider and entry.model == model:
                return entry
        return None

    def class_of(self, provider: str | None, model: str) -> str | None:
        if provider:
            entry = self.find(provider, model)
            if entry:
                return entry.model_class
        for entry in self.models:
            if entry.model == model:
                return entry.model_class
        return None

    def classes(self) -> set[str]:
        return {entry.model_class for entry in self.models}

    def first_model(self, provider: str, model_class: str) -> catalog.LLMModel | None:
        for entry in self.models:
            if entry.provider == provider and entry.model_class == model_class:
                return entry
        return None

    def any_model(self, provider: str) -> catalog.LLMModel | None:
        for entry in self.models:
            if entry.provider == provider:
                return entry
        return None


class LLMRouter:
    def __init__(
        self,
        providers: dict[str, LLMProvider],
        *,
        models: list[catalog.LLMModel],
        config: RouterConfig | None = None,
        tracker: HealthTracker | None = None,
        rng: random.Random | None = None,
        account_id: str | None = None,
    ) -> None:
        self.providers = providers
        self.account_id = account_id  # scopes the statistics of the account's own keys
        self.catalog = _Catalog(list(models))
        self.config = config or RouterConfig()
        self.tracker = tracker or HealthTracker(self.config)
        self.rng = rng or random.Random()

    def health_key(self, provider: str) -> str:
        """Where ``provider``'s statistics live: the shared per-provider figures for a platform key; a per-account,
        container-local entry for an account's own key (its 429s and errors must not make other accounts skip
        the provider)."""
        if getattr(self.providers.get(provider), "key_source", "platform") == "account":
            return account_health_key(provider, self.account_id)
        return provider

    def _available(self, provider: str) -> bool:
        return self.tracker.available(self.health_key(provider))

    def _stats(self, provider: str) -> ProviderStats:
        return self.tracker.get(self.health_key(provider))

    # -- routing ----------------------------------------------------------------------------------------
    def requested_class(self, request: LLMRequest) -> str | None:
        found = self.catalog.class_of(requested_provider(request)[0], request.model)
        if found:
            return found
        if request.model_class:
            return request.model_class
        return request.model if request.model in self.catalog.classes() else None

    def _candidate(self, provider: str, model: str, model_class: str | None) -> Candidate:
        entry = self.catalog.find(provider, model)
        return Candidate(provider, model, entry.model_class if entry else model_class, blended_price(entry))

    def update_provider_weights(self, candidates: list[Candidate] | None = None) -> dict[str, float]:
        """Current weight of each candidate (default: each configured provider at its first catalog model)."""
        if candidates is None:
            candidates = []
            for name in self.providers:
                entry = self.catalog.any_model(name)
                candidates.append(
                    self._candidate(name, entry.model if entry else name, entry.model_class if entry else None)
                )
        now = self.tracker.clock()
        weights: dict[str, float] = {}
        for cand in candidates:
            stats = self._stats(cand.provider)
            if stats.breaker_state(now) == "open" or stats.retry_after_until > now:
                weights[cand.provider] = 0.0
                continue
            ttft = stats.ttft_ms if stats.ttft_ms is not None else PRIOR_TTFT_MS
            reliability = max(0.0, 1.0 - stats.error_rate) ** 2
            weights[cand.provider] = reliability * 1000.0 / (ttft + 100.0) / math.sqrt(1.0 + cand.price)
        return weights

    def route_request(self, request: LLMRequest) -> list[Candidate]:
        """The ordered plan of candidates for this request (not yet filtered by breaker state)."""
        model_class = self.requested_class(request)
        plan: list[Candidate] = []
        seen: set[str] = set()

        def add(provider: str, model: str) -> None:
            if provider in self.providers and provider not in seen:
                seen.add(provider)
                plan.append(self._candidate(provider, model, model_class))

        pinned, fallbacks = requested_provider(request)
        if pinned:
            add(pinned, request.model)
        for provider, model in fallbacks:
            add(provider, model)
        peers: list[Candidate] = []
        for name in self.providers:
            if name in seen:
                continue
            entry = self.catalog.first_model(name, model_class) if model_class else None
            if entry is None and not pinned and self.catalog.find(name, request.model):
                entry = self.catalog.find(name, request.model)
            if entry is not None:
                peers.append(self._candidate(name, entry.model, model_class))
        if not plan and not peers:
            # Nothing serves the class: any configured provider, at its first catalog model (or the asked model).
            for name in self.providers:
                entry = self.catalog.any_model(name)
                peers.append(self._candidate(name, entry.model if entry else request.model, model_class))
        if peers:
            weights = self.update_provider_weights(peers)
            peers.sort(key=lambda cand: -weights[cand.provider])
            if not plan:
                total = sum(weights.values())
                if total > 0:
                    pick = self.rng.random() * total
                    for index, cand in enumerate(peers):
                        pick -= weights[cand.provider]
                        if pick <= 0:
                            peers.insert(0, peers.pop(index))
                            break
            for cand in peers:
                add(cand.provider, cand.model)
        return plan

    def handle_failover(self, failed: Candidate, error: ProviderError, remaining: list[Candidate]) -> Candidate | None:
        """Record the failure (breaker, Retry-After) and return the next candidate that may be called, if any."""
        reason = (error.details or {}).get("reason")
        # A bad request says nothing about the provider. Failures seen with an account's own key (a rejected key,
        # its exhausted quota) count for that account only: see ``health_key``.
        if reason != "bad_request":
            self.tracker.record_failure(self.health_key(failed.provider), error)
        if not error.retryable:
            return None
        while remaining:
            nxt = remaining.pop(0)
            if self._available(nxt.provider):
                return nxt
        return None

    def get_provider_health(self) -> dict[str, dict[str, Any]]:
        weights = self.update_provider_weights()
        out = {}
        for name in self.providers:
            snap = self.tracker.snapshot(self.health_key(name))
            snap["weight"] = round(weights.get(name, 0.0), 4)
            out[name] = snap
        return out

    # -- execution --------------------------------------------------------------------------------------
    async def _attempt(self, cand: Candidate, request: LLMRequest, attempt: Attempt) -> AsyncIterator[LLMEvent]:
        """One provider call with the first-token and idle timeouts applied around the provider's stream."""
        provider = self.providers[cand.provider]
        routed = dataclasses.replace(request, model=cand.model)
        agen = provider.stream(routed).__aiter__()
        started = time.perf_counter()
        first = True
        try:
            while True:
                limit = self.config.first_token_timeout_s if first else self.config.stream_idle_timeout_s
                try:
                    async with asyncio.timeout(limit):
                        event = await agen.__anext__()
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    reason = "first_token_timeout" if first else "idle_timeout"
                    raise ProviderError(
                        f"{cand.provider} sent nothing for {limit:g} s",
                        provider=cand.provider,
                        retryable=True,
                        details=reason,
                    ) from None
                if first and not isinstance(event, StreamEnd):
                    attempt.ttft_ms = (time.perf_counter() - started) * 1000
                first = False
                yield event
        finally:
            await agen.aclose()

    async def stream(self, request: LLMRequest) -> AsyncIterator[LLMEvent]:
        plan = self.route_request(request)
        if not plan:
            raise NotAvailableError(
                "no LLM provider is configured for this request",
                details={"model": request.model, "provider": request.provider},
            )
        remaining = list(plan)
        started = time.perf_counter()
        spoken = ""
        tool_emitted = False
        ttft_ms: float | None = None
        attempts: list[Attempt] = []
        last_error: ProviderError | None = None
        waited_for_retry_after = False
        current = self._next_available(remaining)
        while True:
            if current is None:
                current = await self._retry_after_or_give_up(plan, tool_emitted, waited_for_retry_after, last_error)
                waited_for_retry_after = True
            attempt = Attempt(current)
            attempts.append(attempt)
            suppressor = PrefixSuppressor(spoken) if spoken else None
            routed = continuation_request(request, spoken) if spoken else request
            attempt_text: list[str] = []
            end: StreamEnd | None = None
            try:
                # aclosing: when our caller stops early (barge-in), the provider's stream is closed now, not at GC.
                async with contextlib.aclosing(self._attempt(current, routed, attempt)) as events:
                    async for event in events:
                        if isinstance(event, TextDelta):
                            attempt_text.append(event.text)
                            text = suppressor.feed(event.text) if suppressor else event.text
                            if text:
                                if ttft_ms is None:
                                    ttft_ms = (time.perf_counter() - started) * 1000
                                spoken += text
                                attempt.emitted_chars += len(text)
                                yield TextDelta(text)
                        elif isinstance(event, ToolCallDelta):
                            if ttft_ms is None:
                                ttft_ms = (time.perf_counter() - started) * 1000
                            tool_emitted = True
                            yield event
                        elif isinstance(event, StreamEnd):
                            end = event
                if end is None:
                    raise ProviderError(
                        f"{current.provider} ended without a result",
                        provider=current.provider,
                        retryable=True,
                        details="dropped",
                    )
            except ProviderError as exc:
                last_error = exc
                attempt.error = exc.message
                attempt.reason = (exc.details or {}).get("reason")
                attempt.usage = estimate_usage(routed, "".join(attempt_text)) if attempt_text else None
                attempt.cost = (
                    token_cost(self.catalog.find(current.provider, current.model), attempt.usage)
                    if attempt.usage
                    else Decimal(0)
                )
                if tool_emitted:
                    self.handle_failover(current, exc, [])  # record it; a half-built tool call cannot fail over
                    raise
                current = self.handle_failover(current, exc, remaining)
                if current is None and not exc.retryable:
                    raise
                continue
            if suppressor is not None:
                tail = suppressor.finish()
                if tail:
                    spoken += tail
                    yield TextDelta(tail)
            self.tracker.record_success(self.health_key(current.provider), attempt.ttft_ms)
            attempt.usage = end.usage
            attempt.cost = token_cost(self.catalog.find(end.provider, end.model), end.usage)
            if self.tracker.due():
                await self.tracker.sync_async()
            yield self._final(end, attempts, ttft_ms, started, spoken)
            return

    def _next_available(self, remaining: list[Candidate]) -> Candidate | None:
        while remaining:
            cand = remaining.pop(0)
            if self._available(cand.provider):
                return cand
        return None

    async def _retry_after_or_give_up(
        self, plan: list[Candidate], tool_emitted: bool, already_waited: bool, last_error: ProviderError | None
    ) -> Candidate:
        """No candidate is left: the one to retry after a short Retry-After, or raise why the request failed."""
        current = await self._wait_for_retry_after(plan, tool_emitted, already_waited)
        if current is None:
            if self.tracker.due():  # e.g. a breaker just opened: share it even though this request failed
                await self.tracker.sync_async()
            raise self._exhausted(last_error, plan)
        return current

    async def _wait_for_retry_after(
        self, plan: list[Candidate], tool_emitted: bool, already_waited: bool
    ) -> Candidate | None:
        """Every candidate is rate limited: wait out a short Retry-After once, then retry that provider."""
        if already_waited or tool_emitted:
            return None
        now = self.tracker.clock()
        waits = []
        for cand in plan:
            stats = self._stats(cand.provider)
            if stats.retry_after_until > now and stats.breaker_state(now) != "open":
                waits.append((stats.retry_after_until - now, cand))
        if not waits:
            return None
        wait, cand = min(waits, key=lambda item: item[0])
        if wait > self.config.max_retry_after_wait_s:
            return None
        await asyncio.sleep(wait)
        self._stats(cand.provider).retry_after_until = 0.0
        return cand

    def _exhausted(self, last_error: ProviderError | None, plan: list[Candidate]) -> Exception:
        now = self.tracker.clock()
        limited = [self._stats(c.provider).retry_after_until - now for c in plan]
        limited = [value for value in limited if value > 0]
        if limited and len(limited) == len(plan):
            return RateLimitedError("every LLM provider is rate limited", retry_after=min(limited))
        if last_error is not None:
            return last_error
        return ProviderError(
            "every LLM provider for this request is unavailable (circuit open)",
            provider=",".join(c.provider for c in plan),
            retryable=True,
            details="circuit_open",
        )

    def _final(
        self, end: StreamEnd, attempts: list[Attempt], ttft_ms: float | None, started: float, spoken: str
    ) -> StreamEnd:
        usage = end.usage
        cost = Decimal(0)
        for attempt in attempts:
            cost += attempt.cost
            if attempt is not attempts[-1] and attempt.usage is not None:
                usage = Usage(
                    prompt_tokens=usage.prompt_tokens + attempt.usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens + attempt.usage.completion_tokens,
                    cached_tokens=usage.cached_tokens + attempt.usage.cached_tokens,
                    estimated=True,
                )
        metadata = dict(end.metadata)
        metadata["attempts"] = [a.as_dict() for a in attempts]
        metadata["failover"] = len(attempts) > 1
        return dataclasses.replace(
            end,
            usage=usage,
            ttft_ms=ttft_ms,
            total_ms=(time.perf_counter() - started) * 1000,
            cost=cost,
            cost_usd=float(cost),
            metadata=metadata,
        )

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """Non-streaming, with the same plan and failover; providers without ``complete`` are streamed."""
        plan = self.route_request(request)
        if not plan:
            raise NotAvailableError("no LLM provider is configured for this request", details={"model": request.model})
        remaining = list(plan)
        started = time.perf_counter()
        attempts: list[Attempt] = []
        last_error: ProviderError | None = None
        current = self._next_available(remaining)
        waited = False
        while True:
            if current is None:
                current = await self._retry_after_or_give_up(plan, False, waited, last_error)
                waited = True
            attempt = Attempt(current)
            attempts.append(attempt)
            provider = self.providers[current.provider]
            routed = dataclasses.replace(request, model=current.model)
            try:
                if hasattr(provider, "complete"):
                    limit = self.config.first_token_timeout_s + self.config.stream_idle_timeout_s
                    try:
                        async with asyncio.timeout(limit):
                            response = await provider.complete(routed)
                    except TimeoutError:
                        raise ProviderError(
                            f"{current.provider} sent nothing for {limit:g} s",
                            provider=current.provider,
                            retryable=True,
                            details="timeout",
                        ) from None
                else:
                    response = await collect_response(self._attempt(current, routed, attempt))
            except ProviderError as exc:
                last_error = exc
                attempt.error, attempt.reason = exc.message, (exc.details or {}).get("reason")
                current = self.handle_failover(current, exc, remaining)
                if current is None and not exc.retryable:
                    raise
                continue
            attempt.ttft_ms = response.end.ttft_ms
            attempt.usage = response.end.usage
            attempt.cost = token_cost(self.catalog.find(response.end.provider, response.end.model), response.end.usage)
            self.tracker.record_success(self.health_key(current.provider), response.end.ttft_ms)
            if self.tracker.due():
                await self.tracker.sync_async()
            end = self._final(response.end, attempts, response.end.ttft_ms, started, response.text)
            return LLMResponse(text=response.text, tool_calls=response.tool_calls, end=end)


async def collect_response(events: AsyncIterator[LLMEvent]) -> LLMResponse:
    parts: list[str] = []
    end: StreamEnd | None = None
    async for event in events:
        if isinstance(event, TextDelta):
            parts.append(event.text)
        elif isinstance(event, StreamEnd):
            end = event
    if end is None:
        raise ProviderError("stream ended without a result", provider="unknown", retryable=True, details="dropped")
    return LLMResponse(text="".join(parts), tool_calls=tuple(end.tool_calls), end=end)
