"""HTTP to tenant-supplied URLs through the URL guard (``airies.core.url_guard``): httpx clients and transports
whose every connection is checked.

    async with guarded_async_client(guard, timeout=10) as http:  # every connection is checked again
        await http.post(url, json=payload)
    guarded_client(guard, timeout=10)                            # the same for synchronous code
    guarded_transport(guard) / guarded_async_transport(guard)    # to hand to an SDK that takes an httpx client

The guarded clients resolve the host themselves, check the addresses and connect to an address that passed (TLS
still verifies the certificate against the host name), so a DNS answer that changes between the check and the
connection (rebinding) cannot reach a private address. Every redirect is a new request through the same checks.
They ignore proxy environment variables (a proxy would be the address checked, not the target).

Apart from the guard's rules so that what only checks URLs (when an agent, endpoint or knowledge base is saved)
does not import httpx and httpcore.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Sequence
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import anyio.to_thread
import httpcore
import httpx

from airies.core.url_guard import URLGuard, URLNotAllowed

# What a guarded request raises when the server cannot be reached or the exchange fails (httpx's), for modules that
# import this one at first use.
HTTPError = httpx.HTTPError


def guarded_transport(
    guard: URLGuard, *, verify: ssl.SSLContext | bool = True, limits: httpx.Limits | None = None
) -> GuardedTransport:
    return GuardedTransport(guard, verify=verify, limits=limits)


def guarded_async_transport(
    guard: URLGuard, *, verify: ssl.SSLContext | bool = True, limits: httpx.Limits | None = None
) -> AsyncGuardedTransport:
    return AsyncGuardedTransport(guard, verify=verify, limits=limits)


def guarded_client(guard: URLGuard, **kwargs: Any) -> httpx.Client:
    """An ``httpx.Client`` whose every connection goes through ``guard`` (kwargs: timeout, headers, ...).
    It keeps no cookies unless given a jar: one client serves many tenants' URLs (webhooks, tools), and a cookie
    one tenant's server sets must never travel with another tenant's request to the same host."""
    kwargs.setdefault("cookies", no_cookies())
    return httpx.Client(transport=guarded_transport(guard), trust_env=False, **kwargs)


def guarded_async_client(guard: URLGuard, **kwargs: Any) -> httpx.AsyncClient:
    kwargs.setdefault("cookies", no_cookies())
    return httpx.AsyncClient(transport=guarded_async_transport(guard), trust_env=False, **kwargs)


def no_cookies() -> CookieJar:
    """A cookie jar that keeps nothing. (A jar, not ``httpx.Cookies``: httpx copies the latter into a jar of its
    own, policy lost.)"""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


def connect_addresses(guard: URLGuard, host: str, port: int) -> Sequence[str]:
    """Where a new connection to ``host`` may go: its checked addresses (an allow-listed host's, unchecked).
    A refused address raises URLNotAllowed; a name DNS cannot resolve is a connection error."""
    try:
        if guard.is_allowed_host(host, port):
            return guard.lookup(host, port)
        return guard.resolve(host, port)
    except URLNotAllowed as exc:
        if exc.reason == "unresolvable_host":
            raise httpcore.ConnectError(exc.message) from exc
        raise


# -- connections to checked addresses only ------------------------------------------------------------------------
class _GuardedBackend(httpcore.NetworkBackend):
    """Resolves and checks the host of every new connection, then connects to an address that passed."""

    def __init__(self, guard: URLGuard) -> None:
        self.guard = guard
        self.inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = connect_addresses(self.guard, host, port)
        last: Exception | None = None
        for address in addresses:
            try:
                return self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        raise last or httpcore.ConnectError(f"cannot resolve {host}")

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed for tenant-supplied URLs")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class _AsyncGuardedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, guard: URLGuard) -> None:
        self.guard = guard
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await anyio.to_thread.run_sync(connect_addresses, self.guard, host, port)
        last: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        raise last or httpcore.ConnectError(f"cannot resolve {host}")

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed for tenant-supplied URLs")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def _pool_options(verify: ssl.SSLContext | bool, limits: httpx.Limits | None) -> dict[str, Any]:
    """What httpx hands its connection pool (httpx takes no network backend argument, so the pool is ours)."""
    context = verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify=verify, trust_env=False)
    limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)
    return {
        "ssl_context": context,
        "max_connections": limits.max_connections,
        "max_keepalive_connections": limits.max_keepalive_connections,
        "keepalive_expiry": limits.keepalive_expiry,
    }


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport with a guarded connection pool: scheme checked per request, addresses per connection."""

    def __init__(self, guard: URLGuard, *, verify: ssl.SSLContext | bool = True, limits: httpx.Limits | None = None):
        options = _pool_options(verify, limits)
        super().__init__(verify=options["ssl_context"], trust_env=False)
        self.guard = guard
        self._pool = httpcore.ConnectionPool(**options, network_backend=_GuardedBackend(guard))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.guard.check_scheme(request.url.scheme)
        return super().handle_request(request)


class AsyncGuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, guard: URLGuard, *, verify: ssl.SSLContext | bool = True, limits: httpx.Limits | None = None):
        options = _pool_options(verify, limits)
        super().__init__(verify=options["ssl_context"], trust_env=False)
        self.guard = guard
        self._pool = httpcore.AsyncConnectionPool(**options, network_backend=_AsyncGuardedBackend(guard))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.guard.check_scheme(request.url.scheme)
        return await super().handle_async_request(request)
