"""One guard for every URL or host a tenant supplies (vector-store hosts, LLM endpoints, scrape URLs, webhooks, tools).

Rules:

* ``http``/``https`` only, no credentials in the URL; outside stage ``local`` HTTPS only.
* The host is resolved and **every** address it resolves to must be public. Refused: loopback, private (RFC 1918,
  IPv6 unique-local), link-local, cloud metadata (``169.254.169.254``, ``fd00:ec2::254`` and their neighbours),
  unspecified, multicast, reserved, shared (CGNAT ``100.64.0.0/10``), site-local and anything else that is not
  globally routable. An IPv6 address that carries an IPv4 one (IPv4-mapped ``::ffff:a.b.c.d``, NAT64
  ``64:ff9b::/96``, 6to4 ``2002::/16``) is judged by that IPv4 address; Teredo is refused.
* The operator's allow-list ``AIRIES_URL_GUARD_ALLOWED_HOSTS`` (comma-separated ``host`` or ``host:port``, IPv6 as
  ``[::1]:8080``) exempts those hosts from the address check, for local testing against ``127.0.0.1``; the scheme
  rule still applies.

Use from any capability::

    guard = url_guard(settings)
    guard.check(url, field="webhook_url")              # when the URL is saved: URLNotAllowed (422) when refused
    async with guarded_async_client(guard, timeout=10) as http:  # when it is used: every connection checked again
        await http.post(url, json=payload)

The guarded clients (``airies.core.guarded_http``: apart, so what only checks URLs does not import httpx) resolve
the host themselves, check the addresses and connect to an address that passed.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import anyio.to_thread

from airies.core.errors import AiriesError

if TYPE_CHECKING:
    from airies.core.config import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the addresses it resolves to. Injectable, so tests can make a name resolve anywhere.
Resolver = Callable[[str, int], Sequence[str]]

MAX_URL_LENGTH = 2048
SCHEMES = ("http", "https")
# Instance metadata, time and DNS services of the clouds: named in refusals, whatever range they sit in.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean instance metadata
        "169.254.170.2",  # AWS ECS task metadata and credentials
        "169.254.169.253",  # AWS VPC DNS
        "169.254.169.123",  # AWS time sync
        "168.63.129.16",  # Azure wire server
        "100.100.100.200",  # Alibaba Cloud metadata
        "192.0.0.192",  # Oracle Cloud metadata
        "fd00:ec2::254",  # AWS instance metadata over IPv6
        "fd00:ec2::253",  # AWS VPC DNS over IPv6
        "fd00:ec2::123",  # AWS time sync over IPv6
    )
)
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class URLNotAllowed(AiriesError):
    """A tenant-supplied URL the guard refuses. ``reason``: ``invalid_url``, ``scheme_not_allowed``,
    ``credentials_not_allowed``, ``blocked_address`` or ``unresolvable_host``."""

    status_code = 422
    code = "url_not_allowed"

    def __init__(self, message: str, *, reason: str, field: str = "url") -> None:
        super().__init__(message, details=[{"field": field, "code": reason, "message": message}])
        self.reason = reason
        self.field = field


def address_problem(address: IPAddress) -> str | None:
    """Why a connection to ``address`` is refused (its class), or None for a public address."""
    if address in METADATA_ADDRESSES:
        return "metadata"
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and any(address in prefix for prefix in NAT64_PREFIXES):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return address_problem(embedded)
        if address.teredo is not None:
            return "teredo"
        if address.is_site_local:
            return "site_local"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link_local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and address in SHARED_ADDRESS_SPACE:
        return "shared"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "non_global"
    return None


def parse_allowed_hosts(*lists: str) -> frozenset[tuple[str, int | None]]:
    """``"127.0.0.1:8080, localhost, [::1]:9000"`` -> {(host, port or None)}. A bad entry is a configuration error."""
    allowed: set[tuple[str, int | None]] = set()
    for entries in lists:
        for raw in (entries or "").split(","):
            item = raw.strip().lower()
            if not item:
                continue
            port: str | None = None
            if item.startswith("["):
                host, _, rest = item[1:].partition("]")
                port = rest[1:] if rest.startswith(":") else None
            elif item.count(":") == 1:
                host, port = item.split(":")
            else:
                host = item
            if not host or (port is not None and not port.isdigit()):
                raise ValueError(f"URL guard allow-list entry {raw.strip()!r} is not host or host:port")
            allowed.add((host, int(port) if port is not None else None))
    return frozenset(allowed)


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def as_url(host_or_url: str, *, default_scheme: str = "https") -> str:
    """A bare host (``idx.example.io``, ``10.0.0.1:8080``) as a URL; a URL as it is."""
    value = host_or_url.strip()
    return value if "://" in value else f"{default_scheme}://{value}"


@dataclass(frozen=True)
class CheckedURL:
    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]  # what the host resolved to when checked (empty for an allow-listed host)
    allow_listed: bool


class URLGuard:
    def __init__(
        self,
        *,
        https_only: bool,
        allowed_hosts: Iterable[tuple[str, int | None]] = (),
        resolver: Resolver = system_resolver,
    ) -> None:
        self.https_only = https_only
        self.allowed_hosts = frozenset(allowed_hosts)
        self.resolver = resolver

    @classmethod
    def from_settings(
        cls, settings: Settings, *, extra_allowed_hosts: str = "", resolver: Resolver | None = None
    ) -> URLGuard:
        """The guard of ``settings``; ``extra_allowed_hosts`` adds a capability's own (older) allow-list."""
        return cls(
            https_only=settings.stage != "local",
            allowed_hosts=parse_allowed_hosts(settings.url_guard_allowed_hosts, extra_allowed_hosts),
            resolver=resolver or system_resolver,
        )

    # -- the rules ------------------------------------------------------------------------------------------------
    def is_allowed_host(self, host: str, port: int) -> bool:
        host = host.lower().strip("[]")
        return (host, None) in self.allowed_hosts or (host, port) in self.allowed_hosts

    def check_scheme(self, scheme: str, *, field: str = "url") -> None:
        if scheme not in SCHEMES:
            raise URLNotAllowed(
                f"only http(s) URLs are allowed, not {scheme or 'none'}", reason="invalid_url", field=field
            )
        if self.https_only and scheme != "https":
            raise URLNotAllowed("only https URLs are allowed", reason="scheme_not_allowed", field=field)

    def check_syntax(self, url: str, *, field: str = "url") -> tuple[str, str, int]:
        """(scheme, host, port) of a well-formed URL the rules allow, without resolving it."""
        if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH or any(ch <= " " for ch in url):
            raise URLNotAllowed(
                f"not a URL (1-{MAX_URL_LENGTH} characters, no spaces)", reason="invalid_url", field=field
            )
        try:
            parts = urlsplit(url)
            port = parts.port
            host = parts.hostname or ""
        except ValueError as exc:
            raise URLNotAllowed(f"not a valid URL: {exc}", reason="invalid_url", field=field) from exc
        scheme = parts.scheme.lower()
        self.check_scheme(scheme, field=field)
        if not host:
            raise URLNotAllowed("the URL has no host", reason="invalid_url", field=field)
        if parts.username is not None or parts.password is not None:
            raise URLNotAllowed("URLs with credentials are not allowed", reason="credentials_not_allowed", field=field)
        try:
            host = host.encode("idna").decode("ascii") if not host.isascii() else host
        except UnicodeError as exc:
            raise URLNotAllowed(f"the host {host!r} is not a valid name", reason="invalid_url", field=field) from exc
        return scheme, host, port or (443 if scheme == "https" else 80)

    def checked_addresses(self, host: str, resolved: Sequence[str], *, field: str = "url") -> tuple[str, ...]:
        """``resolved`` when every address is public; else URLNotAllowed naming the first refused one."""
        if not resolved:
            raise URLNotAllowed(f"cannot resolve {host}: no address", reason="unresolvable_host", field=field)
        for text in resolved:
            address = ipaddress.ip_address(text.split("%", 1)[0])  # a link-local answer may carry a zone
            problem = address_problem(address)
            if problem is not None:
                raise URLNotAllowed(
                    f"{host} resolves to a non-public address ({address}: {problem.replace('_', '-')})",
                    reason="blocked_address",
                    field=field,
                )
        return tuple(resolved)

    def lookup(self, host: str, port: int, *, field: str = "url") -> list[str]:
        """What ``host`` resolves to, unchecked (an IP literal is itself); URLNotAllowed when DNS has no answer."""
        try:
            return [str(ipaddress.ip_address(host.strip("[]")))]
        except ValueError:
            pass
        try:
            return list(self.resolver(host, port))
        except (OSError, UnicodeError) as exc:
            raise URLNotAllowed(f"cannot resolve {host}: {exc}", reason="unresolvable_host", field=field) from exc

    def resolve(self, host: str, port: int, *, field: str = "url") -> tuple[str, ...]:
        """The checked addresses of ``host`` (blocking DNS)."""
        return self.checked_addresses(host, self.lookup(host, port, field=field), field=field)

    async def aresolve(self, host: str, port: int, *, field: str = "url") -> tuple[str, ...]:
        """``resolve`` for the event loop (DNS in a worker thread)."""
        return await anyio.to_thread.run_sync(lambda: self.resolve(host, port, field=field))

    def check(self, url: str, *, field: str = "url") -> CheckedURL:
        """Everything the rules say about ``url`` now, DNS included (blocking): call it when the URL is saved."""
        scheme, host, port = self.check_syntax(url, field=field)
        if self.is_allowed_host(host, port):
            return CheckedURL(url, scheme, host, port, (), True)
        return CheckedURL(url, scheme, host, port, self.resolve(host, port, field=field), False)

    async def acheck(self, url: str, *, field: str = "url") -> CheckedURL:
        scheme, host, port = self.check_syntax(url, field=field)
        if self.is_allowed_host(host, port):
            return CheckedURL(url, scheme, host, port, (), True)
        return CheckedURL(url, scheme, host, port, await self.aresolve(host, port, field=field), False)


def url_guard(settings: Settings, *, extra_allowed_hosts: str = "") -> URLGuard:
    """The guard every capability uses for tenant-supplied URLs (see the module docstring)."""
    return URLGuard.from_settings(settings, extra_allowed_hosts=extra_allowed_hosts)
