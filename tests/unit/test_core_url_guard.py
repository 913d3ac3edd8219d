"""The URL guard: address classes, URL rules, DNS answers, the allow-list, and guarded HTTP (redirects, rebinding)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections import deque
from http.server import BaseHTTPRequestHandler

import httpx
import pytest

from airies.core.config import Settings
from airies.core.guarded_http import guarded_async_client, guarded_client
from airies.core.url_guard import URLGuard, URLNotAllowed, address_problem, parse_allowed_hosts, url_guard
from tests.doubles._wire import LocalHttpServer


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("169.254.169.254", "metadata"),
        ("169.254.170.2", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.1.1", "link_local"),
        ("fe80::1", "link_local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "private"),  # reserved (class E); Python files it under private too
        ("255.255.255.255", "private"),
        ("100.64.0.1", "shared"),
        ("100.127.255.254", "shared"),
        ("192.0.2.1", "private"),  # documentation
        ("198.18.0.1", "private"),  # benchmarking
        ("fec0::1", "site_local"),
        ("2001::1", "teredo"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped IPv6 is judged by its IPv4 address
        ("::ffff:169.254.169.254", "metadata"),
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::a9fe:a9fe", "metadata"),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a00:1::1", "private"),  # 6to4 of 10.0.0.1
    ],
)
def test_every_non_public_address_class_is_refused(address, problem):
    assert address_problem(ipaddress.ip_address(address)) == problem


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address):
    assert address_problem(ipaddress.ip_address(address)) is None


def fixed_dns(answers: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list[str]:
        if host not in answers:
            raise OSError(f"[Errno -2] Name or service not known: {host}")
        return answers[host]

    return resolve


def guard(*, https_only: bool = False, allowed: str = "", dns: dict[str, list[str]] | None = None) -> URLGuard:
    return URLGuard(https_only=https_only, allowed_hosts=parse_allowed_hosts(allowed), resolver=fixed_dns(dns or {}))


def refusal(call) -> URLNotAllowed:
    with pytest.raises(URLNotAllowed) as info:
        call()
    assert info.value.status_code == 422 and info.value.code == "url_not_allowed"
    return info.value


def test_url_rules():
    lenient, strict = guard(dns={"api.example.com": ["93.184.216.34"]}), guard(https_only=True)
    assert lenient.check("http://api.example.com/v1").addresses == ("93.184.216.34",)
    assert lenient.check("https://api.example.com:8443/v1").port == 8443
    assert refusal(lambda: strict.check("http://api.example.com/")).reason == "scheme_not_allowed"
    assert refusal(lambda: lenient.check("ftp://api.example.com/")).reason == "invalid_url"
    assert refusal(lambda: lenient.check("file:///etc/passwd")).reason == "invalid_url"
    assert refusal(lambda: lenient.check("https://user:pw@api.example.com/")).reason == "credentials_not_allowed"
    assert refusal(lambda: lenient.check("https:///nohost")).reason == "invalid_url"
    assert refusal(lambda: lenient.check("https://api.example.com:99999/")).reason == "invalid_url"
    assert refusal(lambda: lenient.check("https://api.example.com/ x")).reason == "invalid_url"
    assert refusal(lambda: lenient.check("https://" + "a" * 3000)).reason == "invalid_url"
    assert refusal(lambda: lenient.check("https://no-such-host.test/")).reason == "unresolvable_host"
    field = refusal(lambda: strict.check("http://x.example/", field="base_url")).details[0]["field"]
    assert field == "base_url"


def test_https_only_follows_the_stage():
    assert url_guard(Settings(stage="local")).https_only is False
    assert url_guard(Settings(stage="prod")).https_only is True


@pytest.mark.parametrize(
    ("answers", "problem"),
    [
        (["10.0.0.5"], "private"),
        (["169.254.169.254"], "metadata"),
        (["::ffff:127.0.0.1"], "loopback"),
        (["93.184.216.34", "127.0.0.1"], "loopback"),  # one bad answer is enough
        (["fd00:ec2::254"], "metadata"),
    ],
)
def test_names_resolving_to_non_public_addresses_are_refused(answers, problem):
    checker = guard(dns={"innocent.example.com": answers})
    error = refusal(lambda: checker.check("https://innocent.example.com/"))
    assert error.reason == "blocked_address" and problem.replace("_", "-") in error.message


def test_literal_addresses_are_checked_without_dns():
    checker = guard()  # no DNS answer at all: literals never reach the resolver
    assert refusal(lambda: checker.check("http://[::1]:8080/")).reason == "blocked_address"
    assert refusal(lambda: checker.check("http://169.254.169.254/latest/meta-data/")).reason == "blocked_address"
    assert checker.check("https://8.8.8.8/").addresses == ("8.8.8.8",)


def test_allow_list():
    assert parse_allowed_hosts("127.0.0.1:8080, Localhost ,[::1]:9000,::1") == {
        ("127.0.0.1", 8080),
        ("localhost", None),
        ("::1", 9000),
        ("::1", None),
    }
    with pytest.raises(ValueError):
        parse_allowed_hosts("127.0.0.1:http")
    checker = guard(allowed="127.0.0.1:8080, internal.test", dns={"internal.test": ["10.0.0.9"]})
    assert checker.check("http://127.0.0.1:8080/v1").allow_listed is True
    assert refusal(lambda: checker.check("http://127.0.0.1:8081/v1")).reason == "blocked_address"  # other port
    assert checker.check("http://internal.test:1234/").allow_listed is True  # a host without port: any port
    strict = guard(https_only=True, allowed="127.0.0.1:8080")
    assert refusal(lambda: strict.check("http://127.0.0.1:8080/")).reason == "scheme_not_allowed"


def test_settings_allow_lists_merge():
    settings = Settings(stage="local", url_guard_allowed_hosts="127.0.0.1:1", kb_scrape_allowed_private_hosts="x")
    assert url_guard(settings, extra_allowed_hosts="10.0.0.1").allowed_hosts == {("127.0.0.1", 1), ("10.0.0.1", None)}


# -- guarded HTTP ---------------------------------------------------------------------------------------------------
class Site(LocalHttpServer):
    """Answers 200 "ok", or a redirect to ``redirect_to``; records every request."""

    def __init__(self, redirect_to: str | None = None, set_cookie: str | None = None) -> None:
        self.redirect_to = redirect_to
        self.set_cookie = set_cookie
        self.requests: list[str] = []
        self.cookies: list[str | None] = []

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        self.requests.append(handler.path)
        self.cookies.append(handler.headers.get("cookie"))
        if self.redirect_to:
            handler.send_response(302)
            handler.send_header("location", self.redirect_to)
            handler.send_header("content-length", "0")
            handler.end_headers()
            return
        handler.send_response(200)
        if self.set_cookie:
            handler.send_header("set-cookie", self.set_cookie)
        handler.send_header("content-length", "2")
        handler.end_headers()
        handler.wfile.write(b"ok")


def test_guarded_client_refuses_private_addresses_and_allows_listed_ones():
    with Site() as site:
        with guarded_client(guard()) as http:
            assert refusal(lambda: http.get(site.url + "/")).reason == "blocked_address"
        assert site.requests == []
        with guarded_client(guard(allowed=f"127.0.0.1:{site.port}")) as http:
            assert http.get(site.url + "/").text == "ok"
        assert site.requests == ["/"]


def test_a_guarded_client_sends_no_cookie_a_server_set():
    """One client serves every tenant's URLs (webhooks, tools): a cookie must not carry one tenant's session to the
    next request, whoever makes it."""
    with Site(set_cookie="session=tenant-a; Path=/") as site:
        checker = guard(allowed=f"127.0.0.1:{site.port}")
        with guarded_client(checker) as http:
            assert http.get(site.url + "/a").text == "ok"
            assert http.get(site.url + "/b").text == "ok"
        assert site.cookies == [None, None]


def test_every_redirect_is_checked():
    with (
        Site() as inner,
        Site() as named_inner,
        Site(redirect_to=inner.url + "/secret") as outer,
        Site(redirect_to=f"http://internal.test:{named_inner.port}/") as via_dns,
    ):
        allowed = f"127.0.0.1:{outer.port},127.0.0.1:{via_dns.port}"
        checker = guard(allowed=allowed, dns={"internal.test": ["127.0.0.1"]})
        with guarded_client(checker, follow_redirects=True) as http:
            assert refusal(lambda: http.get(outer.url + "/")).reason == "blocked_address"
            assert refusal(lambda: http.get(via_dns.url + "/")).reason == "blocked_address"
        assert outer.requests == ["/"] and via_dns.requests == ["/"]
    assert inner.requests == [] and named_inner.requests == []


def test_connections_go_to_the_address_that_was_checked():
    """The guard resolves the name itself and connects there: the system resolver (which cannot resolve ``.test``)
    is never asked, so a second, different DNS answer cannot be used behind the guard's back."""
    with Site() as site:
        checker = guard(allowed="llm.example.test", dns={"llm.example.test": ["127.0.0.1"]})
        with guarded_client(checker) as http:
            assert http.get(f"http://llm.example.test:{site.port}/v1").text == "ok"
        assert site.requests == ["/v1"]


def test_a_name_that_changes_its_answer_after_the_check_is_refused_when_used():
    answers = deque([["93.184.216.34"], ["127.0.0.1"]])  # public when saved, loopback when used (DNS rebinding)
    checker = URLGuard(https_only=False, resolver=lambda host, port: answers.popleft())
    with Site() as site:
        url = f"http://rebind.example.com:{site.port}/"
        assert checker.check(url).addresses == ("93.184.216.34",)
        with guarded_client(checker) as http:
            assert refusal(lambda: http.get(url)).reason == "blocked_address"
        assert site.requests == []


def test_async_client_and_unresolvable_names():
    async def run() -> None:
        with Site() as site:
            async with guarded_async_client(guard()) as http:
                with pytest.raises(URLNotAllowed):
                    await http.get(site.url + "/")
                with pytest.raises(httpx.ConnectError, match="cannot resolve"):
                    await http.get("http://no-such-host.test/")
            async with guarded_async_client(guard(allowed=f"127.0.0.1:{site.port}")) as http:
                assert (await http.get(site.url + "/")).text == "ok"
            assert site.requests == ["/"]
            checker = guard(dns={"innocent.example.com": ["10.0.0.1"]})
            error = await _refused_async(checker.acheck("https://innocent.example.com/"))
            assert error.reason == "blocked_address"

    asyncio.run(run())


async def _refused_async(awaitable) -> URLNotAllowed:
    with pytest.raises(URLNotAllowed) as info:
        await awaitable
    return info.value
