"""Running a coroutine from synchronous code (a sync FastAPI route, a Lambda handler, the WebSocket turn).

``run_sync(fn, *args)`` is the one way to do it:

* inside an AnyIO worker thread (where FastAPI runs sync routes) the coroutine runs on the app's event loop, so
  per-loop HTTP clients are reused;
* anywhere else it runs on the calling thread's own kept event loop: no new loop and thread pool per call (a Lambda
  container has one thread; the local gateway runs invocations on several). Nothing of one call keeps running into
  the next: tasks left pending are cancelled, as ``asyncio.run`` does.

After a SnapStart restore the kept loops (and their executor threads) are stale: ``reset_event_loops`` makes every
thread build a fresh one on its next call.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

import anyio.from_thread

P = ParamSpec("P")
T = TypeVar("T")

_loops = threading.local()
_generation = 0  # bumped by reset_event_loops: every thread builds a fresh loop on its next call
LOOP_EXECUTOR_WORKERS = 8


def run_sync(fn: Callable[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call the coroutine function ``fn(*args, **kwargs)`` and wait for its result."""
    try:
        return anyio.from_thread.run(functools.partial(fn, *args, **kwargs))
    except anyio.NoEventLoopError:
        return _run_on_thread_loop(fn(*args, **kwargs))


def reset_event_loops() -> None:
    """Make every thread build a new event loop on its next ``run_sync`` (SnapStart restore hook)."""
    global _generation
    _generation += 1


def _thread_loop() -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop | None = getattr(_loops, "loop", None)
    if loop is not None and getattr(_loops, "generation", 0) != _generation:
        stale, loop = loop, None  # built before a SnapStart snapshot: its executor threads are not to be trusted
        if not stale.is_closed() and not stale.is_running():
            stale.close()
    if loop is None or loop.is_closed():
        loop = _loops.loop = asyncio.new_event_loop()
        _loops.generation = _generation
        loop.set_default_executor(ThreadPoolExecutor(max_workers=LOOP_EXECUTOR_WORKERS, thread_name_prefix="aio"))
    return loop


def _run_on_thread_loop(coro: Coroutine[Any, Any, T]) -> T:
    loop = _thread_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(coro)
    finally:
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        asyncio.set_event_loop(None)
