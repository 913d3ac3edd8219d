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

No duplicated text after a mid-stream failure: the next provider gets the request plus the text already spoken as a
partial assistant message and an instruction to continue from there; whatever it sends is passed through
``PrefixSuppressor``, which drops a restart of the already-spoken text (the whole prefix, or a word-aligned overlap of
its tail), so a provider that ignores the instruction and starts over is not heard twice. Once a tool-call delta has
been emitted there is no failover (a half-built tool call cannot be continued): the error is raised.

Usage and cost of a failed-over reply are the sum over attempts (a partial attempt's usage is estimated);
``StreamEnd.metadata["attempts"]`` lists each attempt.

Health sharing: each container keeps statistics in memory (no DB work per request) and at most every
``llm_health_flush_interval_s`` merges its new samples into the ``provider_health`` table with one small upsert per
provider, reading back the merged figures of every container; a breaker opening is flushed at once.

Account-owned keys: a call made with an account's own key says nothing about the platform's key (its quota, its
rate limit, whether it was revoked), so its statistics are kept apart, per (provider, account), in this container's
memory only (``account_health_key``): they drive that account's breaker, Retry-After and weights, and never reach
the shared ``provider_health`` row that every other account routes by.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from airies.core.config import Settings
from airies.core.errors import NotAvailableError, ProviderError, RateLimitedError
from airies.core.money import format_usd
from airies.llm import catalog
from airies.llm.cost import token_cost
from airies.llm.models import ProviderHealth
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

PRIOR_TTFT_MS = 600.0  # assumed until a provider has been measured
EWMA_ALPHA = 0.2
ACCOUNT_SCOPE = "@account:"  # health keys of account-owned keys: "<provider>@account:<account id>", never shared
CONTINUE_INSTRUCTION = (
    "Your previous reply was cut off after the text above. Continue it exactly where it stopped, "
    "without repeating anything already said."
)


# ---------------------------------------------------------------------------------------------------------------
# configuration and pricing
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RouterConfig:
    first_token_timeout_s: float = 8.0
    stream_idle_timeout_s: float = 15.0
    breaker_failures: int = 3
    breaker_cooldown_s: float = 30.0
    max_retry_after_wait_s: float = 2.0
    flush_interval_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RouterConfig:
        return cls(
            first_token_timeout_s=settings.llm_first_token_timeout_s,
            stream_idle_timeout_s=settings.llm_stream_idle_timeout_s,
            breaker_failures=settings.llm_breaker_failures,
            breaker_cooldown_s=settings.llm_breaker_cooldown_s,
            max_retry_after_wait_s=settings.llm_max_retry_after_wait_s,
            flush_interval_s=settings.llm_health_flush_interval_s,
        )


def account_health_key(provider: str, account_id: str | None) -> str:
    """The statistics key of ``provider`` called with an account's own key (container-local, never shared)."""
    return f"{provider}{ACCOUNT_SCOPE}{account_id or 'unknown'}"


def is_shared_health_key(key: str) -> bool:
    """Platform-key statistics are shared across containers; account-key statistics are not."""
    return ACCOUNT_SCOPE not in key


def blended_price(model: catalog.LLMModel | None) -> float:
    if model is None:
        return 0.0
    return 0.75 * model.input_per_mtok + 0.25 * model.output_per_mtok


# ---------------------------------------------------------------------------------------------------------------
# health: in-memory per container, merged into provider_health periodically
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class ProviderStats:
    ttft_ms: float | None = None
    error_rate: float = 0.0
    samples: int = 0
    consecutive_failures: int = 0
    breaker_open_until: float = 0.0  # epoch seconds
    retry_after_until: float = 0.0
    half_open_trial: float = 0.0  # epoch when the half-open trial call was admitted (0 = none in flight)
    # since the last flush
    pending_success: int = 0
    pending_failure: int = 0
    pending_ttft_sum: float = 0.0
    pending_ttft_n: int = 0
    dirty: bool = False

    def breaker_state(self, now: float) -> str:
        if self.breaker_open_until > now:
            return "open"
        if self.breaker_open_until > 0 and self.consecutive_failures > 0:
            return "half_open"
        return "closed"


class HealthTracker:
    """Per-container statistics of every provider, optionally backed by a shared store."""

    def __init__(self, config: RouterConfig, *, store: Any = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.stats: dict[str, ProviderStats] = {}
        self._last_sync = 0.0
        self._loaded = False
        self._flush_now = False  # a breaker opened: tell the other containers without waiting for the interval
        self._account_keys: list[str] = []  # account-scoped entries, oldest first

    MAX_ACCOUNT_ENTRIES = 1024  # account-key statistics kept per container (the oldest go first)

    def get(self, provider: str) -> ProviderStats:
        stats = self.stats.get(provider)
        if stats is None:
            if not is_shared_health_key(provider):
                self._account_keys.append(provider)
                while len(self._account_keys) > self.MAX_ACCOUNT_ENTRIES:
                    self.stats.pop(self._account_keys.pop(0), None)
            stats = self.stats[provider] = ProviderStats()
        return stats

    # -- breaker ----------------------------------------------------------------------------------------
    def available(self, provider: str) -> bool:
        """May the router call this provider now? Half-open admits exactly one trial call."""
        stats = self.get(provider)
        now = self.clock()
        if stats.retry_after_until > now:
            return False
        state = stats.breaker_state(now)
        if state == "open":
            return False
        if state == "half_open":
            # One trial at a time; a trial that never reported back (its caller was cancelled) expires.
            trial_limit = self.config.first_token_timeout_s + self.config.stream_idle_timeout_s
            if stats.half_open_trial and now - stats.half_open_trial < trial_limit:
                return False
            stats.half_open_trial = now
        return True

    def record_success(self, provider: str, ttft_ms: float | None) -> None:
        stats = self.get(provider)
        if ttft_ms is not None:
            stats.ttft_ms = (
                ttft_ms if stats.ttft_ms is None else (1 - EWMA_ALPHA) * stats.ttft_ms + EWMA_ALPHA * ttft_ms
            )
            stats.pending_ttft_sum += ttft_ms
            stats.pending_ttft_n += 1
        stats.error_rate = (1 - EWMA_ALPHA) * stats.error_rate
        stats.samples += 1
        stats.pending_success += 1
        stats.consecutive_failures = 0
        stats.breaker_open_until = 0.0
        stats.half_open_trial = 0.0
        stats.dirty = True

    def record_failure(self, provider: str, error: ProviderError) -> bool:
        """Count a failure; returns True when this failure opened the breaker."""
        stats = self.get(provider)
        now = self.clock()
        reason = (error.details or {}).get("reason")
        stats.dirty = True
        if reason == "rate_limited":
            # A 429 is back-pressure, not ill health: skip the provider for Retry-After (default 1 s).
            stats.retry_after_until = max(stats.retry_after_until, now + (error.retry_after or 1.0))
            return False
        stats.error_rate = (1 - EWMA_ALPHA) * stats.error_rate + EWMA_ALPHA
        stats.samples += 1
        stats.pending_failure += 1
        stats.consecutive_failures += 1
        was_half_open = bool(stats.half_open_trial)
        stats.half_open_trial = 0.0
        if was_half_open or stats.consecutive_failures >= self.config.breaker_failures:
            stats.breaker_open_until = now + self.config.breaker_cooldown_s
            self._flush_now = self._flush_now or is_shared_health_key(provider)
            return True
        return False

    # -- sharing ----------------------------------------------------------------------------------------
    def due(self) -> bool:
        return self.store is not None and (
            not self._loaded or self._flush_now or self.clock() - self._last_sync >= self.config.flush_interval_s
        )

    def take_pending(self) -> dict[str, ProviderStats]:
        """Copies of the changed providers' stats, and reset their pending counters (on the event loop's thread).
        Account-key statistics stay in this container: they are never part of an update."""
        updates = {
            name: dataclasses.replace(s) for name, s in self.stats.items() if s.dirty and is_shared_health_key(name)
        }
        for name in updates:
            stats = self.stats[name]
            stats.pending_success = stats.pending_failure = stats.pending_ttft_n = 0
            stats.pending_ttft_sum = 0.0
            stats.dirty = False
        self._flush_now = False
        self._last_sync = self.clock()
        return updates

    def sync(self) -> None:
        """Merge pending samples into the store and adopt the merged figures (one upsert per changed provider)."""
        if self.store is None:
            return
        self.apply(self.store.merge(self.take_pending(), now=self.clock()))

    async def sync_async(self) -> None:
        """``sync`` with the database work on a worker thread; a failing store never breaks a reply."""
        if self.store is None:
            return
        updates = self.take_pending()
        try:
            merged = await asyncio.to_thread(self.store.merge, updates, now=self.clock())
        except Exception:
            import logging

            logging.getLogger(__name__).warning("provider health sync failed", exc_info=True)
            self._put_back(updates)
            self._loaded = True  # retry at the next interval, not on every request
            return
        self.apply(merged)

    def _put_back(self, updates: dict[str, ProviderStats]) -> None:
        """A flush failed: keep its samples pending for the next one."""
        for name, taken in updates.items():
            stats = self.get(name)
            stats.pending_success += taken.pending_success
            stats.pending_failure += taken.pending_failure
            stats.pending_ttft_sum += taken.pending_ttft_sum
            stats.pending_ttft_n += taken.pending_ttft_n
            stats.dirty = True
        if any(taken.breaker_open_until for taken in updates.values()):
            self._flush_now = True

    def apply(self, merged: dict[str, dict[str, Any]]) -> None:
        for name, row in merged.items():
            stats = self.get(name)
            if row.get("ttft_ms") is not None:
                stats.ttft_ms = row["ttft_ms"]
            stats.error_rate = row.get("error_rate", stats.error_rate)
            stats.samples = max(stats.samples, row.get("samples", 0))
            stats.retry_after_until = max(stats.retry_after_until, row.get("retry_after_until") or 0.0)
            shared_open_until = row.get("breaker_open_until") or 0.0
            if shared_open_until == 0.0:
                # Closed everywhere: our own failures were merged into the row just now, and a breaker we opened
                # would be in it; so a closed row means a success somewhere since. Adopt it.
                stats.breaker_open_until = 0.0
                stats.half_open_trial = 0.0
                stats.consecutive_failures = row.get("consecutive_failures", 0)
            else:
                stats.breaker_open_until = max(stats.breaker_open_until, shared_open_until)
                stats.consecutive_failures = max(stats.consecutive_failures, row.get("consecutive_failures", 0), 1)
        self._loaded = True

    def snapshot(self, provider: str) -> dict[str, Any]:
        stats = self.get(provider)
        now = self.clock()
        return {
            "ttft_ms": None if stats.ttft_ms is None else round(stats.ttft_ms, 2),
            "error_rate": round(stats.error_rate, 4),
            "samples": stats.samples,
            "consecutive_failures": stats.consecutive_failures,
            "breaker": stats.breaker_state(now),
            "retry_after_s": round(max(0.0, stats.retry_after_until - now), 3),
        }


class DatabaseHealthStore:
    """``provider_health`` rows: merged figures of every container."""

    def __init__(self, database: Any) -> None:
        self.database = database

    LOCK_WAIT_MS = 300  # never queue behind another writer for long: the figures can wait for the next flush

    def merge(self, updates: dict[str, ProviderStats], *, now: float) -> dict[str, dict[str, Any]]:
        from sqlalchemy.exc import IntegrityError

        for attempt in range(2):
            try:
                return self._merge_once(updates)
            except IntegrityError:  # two containers inserted the same provider at once: merge again
                if attempt:
                    raise
        return {}

    def _merge_once(self, updates: dict[str, ProviderStats]) -> dict[str, dict[str, Any]]:
        from sqlalchemy import select
        from sqlalchemy.orm import Session

        engine = self.database.engine
        dialect = engine.dialect.name
        with engine.connect() as conn:
            previous_busy = None
            if dialect == "sqlite":
                # A caller's unit of work may hold SQLite's single write lock until its reply ends: do not wait 30 s.
                previous_busy = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
                conn.exec_driver_sql(f"PRAGMA busy_timeout = {self.LOCK_WAIT_MS}")
                conn.commit()  # end the autobegun (empty) transaction so ours can begin
            try:
                with conn.begin():
                    if dialect == "postgresql":
                        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{self.LOCK_WAIT_MS}ms'")
                    session = Session(bind=conn)
                    query = select(ProviderHealth)
                    if updates and dialect == "postgresql":
                        query = query.with_for_update()
                    rows = {row.provider: row for row in session.scalars(query)}
                    for name, stats in updates.items():
                        row = rows.get(name)
                        if row is None:
                            row = ProviderHealth(
                                provider=name, ttft_ms=None, error_rate=0.0, samples=0, consecutive_failures=0
                            )
                            session.add(row)
                            rows[name] = row
                        _merge_row(row, stats)
                    session.flush()
                    merged = {name: _row_dict(row) for name, row in rows.items()}
                    session.close()
                return merged
            finally:
                if previous_busy is not None:
                    conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(previous_busy)}")
                    conn.commit()


def _epoch(value: datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0


def _dt(epoch: float) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch > 0 else None


def _merge_row(row: Any, stats: ProviderStats) -> None:
    new = stats.pending_success + stats.pending_failure
    if new:
        # Old figures count as at most 50 samples so the shared average keeps moving.
        old_weight = min(row.samples or 0, 50)
        failures_rate = stats.pending_failure / new
        row.error_rate = ((row.error_rate or 0.0) * old_weight + failures_rate * new) / (old_weight + new)
        if stats.pending_ttft_n:
            mean = stats.pending_ttft_sum / stats.pending_ttft_n
            if row.ttft_ms is None:
                row.ttft_ms = mean
            else:
                weight = min(row.samples or 0, 50)
                row.ttft_ms = (row.ttft_ms * weight + mean * stats.pending_ttft_n) / (weight + stats.pending_ttft_n)
        row.samples = (row.samples or 0) + new
    row.consecutive_failures = stats.consecutive_failures
    if stats.breaker_open_until > _epoch(row.breaker_open_until):
        row.breaker_open_until = _dt(stats.breaker_open_until)
    elif stats.pending_success and stats.breaker_open_until == 0.0:
        row.breaker_open_until = None  # this container just got a success: the provider works again
    if stats.retry_after_until > _epoch(row.retry_after_until):
        row.retry_after_until = _dt(stats.retry_after_until)


def _row_dict(row: Any) -> dict[str, Any]:
    return {
        "ttft_ms": row.ttft_ms,
        "error_rate": row.error_rate or 0.0,
        "samples": row.samples or 0,
        "consecutive_failures": row.consecutive_failures or 0,
        "breaker_open_until": _epoch(row.breaker_open_until),
        "retry_after_until": _epoch(row.retry_after_until),
    }


# ---------------------------------------------------------------------------------------------------------------
# no duplicated text after failover
# ---------------------------------------------------------------------------------------------------------------
class PrefixSuppressor:
    """Drops a restart of ``spoken`` from the start of a new provider's output.

    Buffers at most ``len(spoken)`` characters: once the buffer diverges from ``spoken`` (a real continuation) or
    covers it (a restart), it decides and passes everything after through unbuffered.
    """

    MIN_OVERLAP = 12  # a shorter shared tail is a coincidence, not a repeat

    def __init__(self, spoken: str) -> None:
        self.spoken = spoken
        self.buffer = ""
        self.decided = not spoken

    def feed(self, text: str) -> str:
        if self.decided:
            return text
        self.buffer += text
        if self.spoken.startswith(self.buffer):
            if len(self.buffer) < len(self.spoken):
                return ""  # still possibly a restart: hold
            self.decided = True
            return ""  # exactly the spoken text again: drop it
        if self._may_repeat_tail():
            return ""  # may still be a repeat of the last words: hold
        return self._decide()

    def _may_repeat_tail(self) -> bool:
        spoken, buffer = self.spoken, self.buffer
        for start in range(1, len(spoken) - self.MIN_OVERLAP + 1):
            if spoken[start - 1].isspace() and spoken[start:].startswith(buffer):
                return True
        return False

    def finish(self) -> str:
        if self.decided:
            return ""
        if self.spoken.startswith(self.buffer):
            self.decided = True
            return ""  # the new reply is a prefix of what was said: nothing new
        return self._decide()

    def _decide(self) -> str:
        self.decided = True
        buffer, spoken = self.buffer, self.spoken
        if buffer.startswith(spoken):
            return buffer[len(spoken) :]
        overlap = _tail_overlap(spoken, buffer) or _common_prefix(spoken, buffer)
        return buffer[overlap:]


def _tail_overlap(spoken: str, new: str) -> int:
    """Length of the longest word-aligned suffix of ``spoken`` that ``new`` starts with."""
    limit = min(len(spoken), len(new))
    for size in range(limit, PrefixSuppressor.MIN_OVERLAP - 1, -1):
        start = len(spoken) - size
        if (start == 0 or spoken[start - 1].isspace()) and new.startswith(spoken[start:]):
            return size
    return 0


def _common_prefix(spoken: str, new: str) -> int:
    """A restart that diverged part-way: the word-aligned shared beginning, if long enough to be a repeat."""
    size = 0
    for a, b in zip(spoken, new, strict=False):
        if a != b:
            break
        size += 1
    while size and not (size == len(new) or new[size - 1].isspace()):
        size -= 1
    return size if size >= PrefixSuppressor.MIN_OVERLAP else 0


def continuation_request(request: LLMRequest, spoken: str) -> LLMRequest:
    messages = [
        *request.messages,
        {"role": "assistant", "content": spoken},
        {"role": "system", "content": CONTINUE_INSTRUCTION},
    ]
    return dataclasses.replace(request, messages=messages)


# ---------------------------------------------------------------------------------------------------------------
# the router
# ---------------------------------------------------------------------------------------------------------------
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


def run_async(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a coroutine function from sync code (a sync FastAPI route, a Lambda handler).

    Inside an AnyIO worker thread (where FastAPI runs sync routes) the coroutine runs on the app's event loop, so
    per-loop HTTP clients are reused; anywhere else it gets a fresh loop.
    """
    import functools

    import anyio.from_thread

    try:
        return anyio.from_thread.run(functools.partial(fn, *args, **kwargs))
    except anyio.NoEventLoopError:
        return asyncio.run(fn(*args, **kwargs))


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
