"""What a Lambda container builds once: per-container singletons and SnapStart restore hooks.

A handler module declares ``service = PerContainer(build_service)`` and calls ``service.get()`` in its handler: the
first invocation of a container builds it, later ones reuse it. A function with SnapStart also calls
``service.prime_for_snapshot()`` at import: when Lambda initializes a published version for its snapshot, the
service is built then, so every container restored from the snapshot starts with it (boto3, its clients, the wired
service) instead of building it in a caller's first invocation. Tests and the local stack hand in an instance built
with their own doubles through ``set``.

Every handler module begins with ``pause_collector_for_init()`` and ends with ``init_done()``: an init builds
thousands of long-lived objects (modules, SQLAlchemy mappers, pydantic validators) and frees almost none, so the
cyclic garbage collector's passes over the growing heap during the imports are pure cost (7-17% of an init,
measured in the cold-start benchmark).
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

# AWS_LAMBDA_INITIALIZATION_TYPE while Lambda initializes a published version to take its SnapStart snapshot
# (otherwise "on-demand" or "provisioned-concurrency"; unset outside Lambda).
SNAPSHOT_INITIALIZATION = "snap-start"


# Set by Lambda for its runtime interface client; unset in tests, benchmarks and the local stack.
LAMBDA_RUNTIME_API = "AWS_LAMBDA_RUNTIME_API"


def pause_collector_for_init() -> None:
    """First statement of a handler module: no garbage-collector passes while the init imports and builds."""
    gc.disable()


def init_done() -> None:
    """Last statement of a handler module. On Lambda, what the init built is frozen out of the collector's sight
    first: a full collection otherwise walks all of it and pauses an invocation. A test process's heap is left as
    it is (freezing it would keep its garbage for good)."""
    if os.environ.get(LAMBDA_RUNTIME_API):
        if initializing_snapshot():
            gc.collect()  # what the init left unreachable stays out of the snapshot (no request waits for this)
        gc.freeze()
    gc.enable()


def initializing_snapshot() -> bool:
    return os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") == SNAPSHOT_INITIALIZATION


class PerContainer(Generic[T]):
    """One ``T`` per container, built on first use."""

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._value: T | None = None

    def get(self) -> T:
        if self._value is None:
            self._value = self._build()
        return self._value

    def prime_for_snapshot(self) -> None:
        """Build now if this init is SnapStart's: what the snapshot holds, no restored container builds again.
        Nothing built here may connect to a database or read a secret (both wait for first use), so the snapshot
        holds no connection and no password; boto3 clients resolve the execution role's credentials, which
        refresh themselves after a restore."""
        if initializing_snapshot():
            self.get()

    @property
    def built(self) -> T | None:
        """The instance if one was built or set, without building it."""
        return self._value

    def set(self, value: T | None) -> None:
        """Replace the instance (``None``: build again on next use)."""
        self._value = value


def after_snapstart_restore(hook: Callable[[], None]) -> None:
    """Run ``hook`` after a SnapStart restore: what the snapshot froze (pooled connections, SDK clients' sockets)
    is stale then. The runtime module only exists on Lambda with SnapStart; elsewhere this does nothing."""
    try:
        from snapshot_restore_py import register_after_restore  # type: ignore[import-not-found]
    except ImportError:
        return
    register_after_restore(hook)
