"""Provider health: in-memory per container, merged into ``provider_health`` periodically.

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
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from airies.core.errors import ProviderError
from airies.llm.models import ProviderHealth
from airies.llm.router_config import RouterConfig, is_shared_health_key

log = logging.getLogger(__name__)
PRIOR_TTFT_MS = 600.0  # assumed until a provider has been measured
EWMA_ALPHA = 0.2


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
            log.warning("provider health sync failed", exc_info=True)
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
        for attempt in range(2):
            try:
                return self._merge_once(updates)
            except IntegrityError:  # two containers inserted the same provider at once: merge again
                if attempt:
                    raise
        return {}

    def _merge_once(self, updates: dict[str, ProviderStats]) -> dict[str, dict[str, Any]]:
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
