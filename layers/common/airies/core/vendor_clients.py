"""One SDK client per running event loop.

SDK clients hold httpx connection pools bound to the loop that created them, and Lambda may run each invocation in
a fresh loop: a client is built per loop and dropped with it, so connections are reused within a loop only.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

ClientT = TypeVar("ClientT")


class LoopBoundClient(Generic[ClientT]):
    def __init__(self, factory: Callable[[], ClientT]) -> None:
        self._factory = factory
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ClientT] = weakref.WeakKeyDictionary()

    def get(self) -> ClientT:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._factory()
            self._clients[loop] = client
        return client


class SdkVendor:
    """A vendor reached through its SDK: key, endpoint override, timeout, retries, and one client per event loop
    (built by the subclass's ``_build_client``)."""

    def __init__(
        self, api_key: str, *, base_url: str | None = None, timeout: float = 20.0, max_retries: int = 1
    ) -> None:
        self.api_key = api_key
        self.base_url = base_url
        self.timeout = timeout
        self.max_retries = max_retries
        self._clients: LoopBoundClient[Any] = LoopBoundClient(self._build_client)

    def _build_client(self) -> Any:
        raise NotImplementedError

    def _get_client(self) -> Any:
        return self._clients.get()
