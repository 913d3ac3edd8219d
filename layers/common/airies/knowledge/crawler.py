"""Same-site web crawler for knowledge-base scrape jobs.

Breadth-first from the start URLs, within ``max_depth`` link hops and ``max_pages`` pages, same scheme+host+port
only, robots.txt respected (fetched once per site; 404 allows all, 401/403/5xx/unreachable disallow all),
redirects followed by hand (at most 5) and re-checked, HTML only, bodies capped. Every URL goes through the URL guard
(``airies.core.url_guard``): HTTPS only outside stage ``local``, hosts resolved and non-public addresses refused
(SSRF), and every fetch connects only to an address that passed. Hosts listed in ``AIRIES_URL_GUARD_ALLOWED_HOSTS``
or in the older scrape-only alias ``kb_scrape_allowed_private_hosts`` are exempt (tests serve a site on 127.0.0.1).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urldefrag, urljoin, urlsplit
from urllib.robotparser import RobotFileParser

from airies.core.config import Settings
from airies.core.guarded_http import guarded_client
from airies.core.url_guard import URLGuard, URLNotAllowed, url_guard
from airies.knowledge.extraction import extract_text_from_html

MAX_PAGE_BYTES = 5 * 1024 * 1024
MAX_REDIRECTS = 5
HTML_TYPES = ("text/html", "application/xhtml+xml")


@dataclass
class CrawledPage:
    url: str
    depth: int
    body: bytes = b""
    title: str | None = None
    error: str | None = None
    error_code: str | None = None


@dataclass
class FetchResult:
    status: int
    headers: dict[str, str]
    body: bytes
    url: str


class _Robots(RobotFileParser):
    # Set by RobotFileParser itself (no robots.txt to honour, or none to trust); the stubs do not declare them.
    allow_all: bool
    disallow_all: bool


Fetcher = Callable[[str], FetchResult]  # url -> the response (HttpxFetcher; tests pass a local one)


class HttpxFetcher:
    """GET through the URL guard's client: the connection goes only to an address that passed the guard."""

    def __init__(self, user_agent: str, timeout: float, guard: URLGuard) -> None:
        self._client = guarded_client(
            guard,
            follow_redirects=False,
            timeout=timeout,
            headers={"User-Agent": user_agent, "Accept": "text/html,*/*;q=0.5"},
        )

    def __call__(self, url: str) -> FetchResult:
        try:
            with self._client.stream("GET", url) as response:
                body = b""
                for part in response.iter_bytes():
                    body += part
                    if len(body) > MAX_PAGE_BYTES:
                        raise PageTooLarge(f"page is larger than {MAX_PAGE_BYTES} bytes")
                headers = {k.lower(): v for k, v in response.headers.items()}
                return FetchResult(response.status_code, headers, body, url)
        except URLNotAllowed as exc:  # the name now resolves elsewhere than when it was checked
            raise BlockedAddress(exc.message) from exc


class PageTooLarge(Exception):
    pass


class BlockedAddress(Exception):
    pass


class UnresolvableHost(ConnectionError):
    """DNS has no address for the host: the page is ``unreachable`` (not ``blocked_address``)."""


def scrape_guard(settings: Settings) -> URLGuard:
    """The URL guard of scrape jobs: the platform's allow-list plus the older scrape-only one."""
    return url_guard(settings, extra_allowed_hosts=settings.kb_scrape_allowed_private_hosts)


def validate_start_url(url: str, settings: Settings, *, field: str = "start_urls") -> None:
    """Refuse a start URL the URL guard refuses (422 ``url_not_allowed``) before a job is saved. A name DNS cannot
    resolve now is accepted: the job reports that page as ``unreachable``."""
    try:
        scrape_guard(settings).check(url, field=field)
    except URLNotAllowed as exc:
        if exc.reason != "unresolvable_host":
            raise


def normalise_url(url: str) -> str:
    url, _ = urldefrag(url)
    parts = urlsplit(url)
    path = parts.path or "/"
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{path}{query}"


def _site(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


class Crawler:
    def __init__(self, settings: Settings, fetcher: Fetcher | None = None) -> None:
        self.settings = settings
        self.user_agent = settings.kb_scrape_user_agent
        self.guard = scrape_guard(settings)
        self.fetch = fetcher or HttpxFetcher(self.user_agent, settings.kb_scrape_timeout_s, self.guard)
        self.skipped = 0
        self.first_error: str | None = None
        self._robots: dict[str, RobotFileParser | None] = {}
        self._checked_hosts: dict[str, Exception | None] = {}
        self._site_errors: dict[str, str] = {}  # sites whose robots.txt could not be fetched at all

    def _check_host(self, url: str) -> None:
        """The guard's verdict on this URL's site, asked once per site (the fetch re-checks every connection)."""
        site = _site(url)
        if site not in self._checked_hosts:
            problem: Exception | None = None
            try:
                self.guard.check(url)
            except URLNotAllowed as exc:
                unresolvable = exc.reason == "unresolvable_host"
                problem = UnresolvableHost(exc.message) if unresolvable else BlockedAddress(exc.message)
            self._checked_hosts[site] = problem
        problem = self._checked_hosts[site]
        if problem is not None:
            raise type(problem)(str(problem))

    def _get(self, url: str) -> FetchResult:
        for _ in range(MAX_REDIRECTS + 1):
            self._check_host(url)
            result = self.fetch(url)
            if result.status in (301, 302, 303, 307, 308) and result.headers.get("location"):
                target = normalise_url(urljoin(url, result.headers["location"]))
                if _site(target) != _site(url):
                    raise BlockedAddress(f"redirect leaves the site: {target}")
                url = target
                continue
            result.url = url
            return result
        raise BlockedAddress("too many redirects")

    def _robots_for(self, url: str) -> RobotFileParser | None:
        site = _site(url)
        if site not in self._robots:
            parser = _Robots()
            try:
                result = self._get(site + "/robots.txt")
            except BlockedAddress:
                raise
            except Exception as exc:
                parser.disallow_all = True  # robots.txt unreachable: assume we may not crawl
                self._site_errors[site] = f"could not fetch {site}/robots.txt: {type(exc).__name__}: {exc}"
            else:
                if result.status in (401, 403) or result.status >= 500:
                    parser.disallow_all = True
                elif result.status >= 400:
                    parser.allow_all = True
                else:
                    parser.parse(result.body.decode("utf-8", errors="replace").splitlines())
            self._robots[site] = parser
        return self._robots[site]

    def allowed(self, url: str) -> bool:
        robots = self._robots_for(url)
        return robots is None or robots.can_fetch(self.user_agent, url)

    def crawl(self, start_urls: list[str], *, max_depth: int, max_pages: int) -> Iterator[CrawledPage]:
        sites = {_site(u) for u in start_urls}
        queue: deque[tuple[str, int]] = deque((normalise_url(u), 0) for u in start_urls)
        seen = {url for url, _ in queue}
        fetched: set[str] = set()
        emitted = 0
        while queue and emitted < max_pages:
            url, depth = queue.popleft()
            try:
                if not self.allowed(url):
                    if _site(url) in self._site_errors:
                        raise ConnectionError(self._site_errors[_site(url)])
                    self.skipped += 1
                    continue
                result = self._get(url)
            except BlockedAddress as exc:
                emitted += 1
                self.first_error = self.first_error or str(exc)
                yield CrawledPage(url, depth, error=str(exc), error_code="blocked_address")
                continue
            except PageTooLarge as exc:
                emitted += 1
                yield CrawledPage(url, depth, error=str(exc), error_code="too_large")
                continue
            except Exception as exc:  # connection refused, timeout, TLS: the page fails, the crawl goes on
                emitted += 1
                message = f"could not fetch {url}: {type(exc).__name__}: {exc}"
                self.first_error = self.first_error or message
                yield CrawledPage(url, depth, error=message, error_code="unreachable")
                continue
            if result.status >= 400:
                emitted += 1
                message = f"{url} answered HTTP {result.status}"
                self.first_error = self.first_error or message
                yield CrawledPage(url, depth, error=message, error_code=f"http_{result.status}")
                continue
            content_type = result.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if content_type not in HTML_TYPES:
                self.skipped += 1
                continue
            final = normalise_url(result.url)
            if final in fetched:  # a redirect to a page already taken
                self.skipped += 1
                continue
            fetched.add(final)
            seen.add(final)
            html = result.body.decode("utf-8", errors="replace")
            parsed = extract_text_from_html(html)
            emitted += 1
            yield CrawledPage(final, depth, body=result.body, title=parsed.title)
            if depth >= max_depth:
                continue
            for href in parsed.links:
                target = normalise_url(urljoin(final, href.strip()))
                if not target.startswith(("http://", "https://")) or _site(target) not in sites or target in seen:
                    continue
                seen.add(target)
                queue.append((target, depth + 1))
