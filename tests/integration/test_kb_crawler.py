"""Web scrape jobs against a local HTTP site (127.0.0.1 only): robots.txt, depth and page limits, same-site links,
HTML cleaning, failures as failed documents, and the SQS path through ScrapeWorkerFunction."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest

from airies.core.url_guard import URLNotAllowed
from airies.knowledge.service import build_knowledge_service
from tests.kb_support import (
    FakeLambdaContext,
    RecordingPublisher,
    drain,
    kb_settings,
    load_function,
    moto_bucket,
    new_account,
    sqs_event,
)

PAGES = {
    "/robots.txt": ("text/plain", "User-agent: *\nDisallow: /private/\n"),
    "/": (
        "text/html",
        "<html><head><title>Acme Home</title><script>var tracking = 1;</script></head><body>"
        "<nav><a href='/about'>About</a> | <a href='/docs/a#top'>Docs</a></nav>"
        "<main><h1>Welcome to Acme</h1><p>Acme sells <b>industrial kettles</b> since 1952.</p>"
        "<a href='/private/secret'>secret</a> <a href='http://example.com/away'>away</a> <a href='mailto:x@y.z'>mail</a>"
        "<a href='/missing'>missing</a> <a href='/manual.pdf'>manual</a> <a href='/redirect'>moved</a></main>"
        "<footer>Copyright Acme</footer></body></html>",
    ),
    "/about": (
        "text/html",
        "<title>About</title><p>Our kettles boil water in 90 seconds.</p><a href='/deep1'>more</a>",
    ),
    "/docs/a": ("text/html", "<title>Docs A</title><p>Descale the kettle monthly with citric acid.</p>"),
    "/deep1": ("text/html", "<title>Deep 1</title><p>Depth one page about warranty.</p><a href='/deep2'>next</a>"),
    "/deep2": ("text/html", "<title>Deep 2</title><p>Depth two page about spare parts.</p><a href='/deep3'>next</a>"),
    "/deep3": ("text/html", "<title>Deep 3</title><p>Depth three page: too deep.</p>"),
    "/private/secret": ("text/html", "<p>must never be fetched</p>"),
    "/manual.pdf": ("application/pdf", "%PDF-1.4 not html"),
}


class Site:
    def __init__(self) -> None:
        self.requested: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                site.requested.append(self.path)
                if self.path == "/redirect":
                    self.send_response(301)
                    self.send_header("Location", "/about")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                page = PAGES.get(self.path)
                if page is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = page[1].encode()
                self.send_response(200)
                self.send_header("Content-Type", page[0] + "; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site():
    s = Site()
    yield s
    s.close()


@pytest.fixture
def kb_env(database, tmp_path):
    with moto_bucket():
        settings = kb_settings(tmp_path)
        service = build_knowledge_service(settings, database, usage_publisher=RecordingPublisher())
        account = new_account(database)
        kb = service.create_knowledge_base(account, "Site")
        yield service, account, kb, settings


def test_crawl_respects_robots_depth_and_site(kb_env, site):
    service, account, kb, _ = kb_env
    job = service.create_web_scrape_job(account, kb.id, [site.url + "/"], max_depth=2, max_pages=20)
    job = service.run_scrape_job(job.id)
    assert job.status == "completed"
    docs, _ = service.list_documents(account, kb.id, limit=100)
    by_url = {d.source_url.removeprefix(site.url): d for d in docs}
    ready = {url for url, d in by_url.items() if d.status == "ready"}
    assert ready == {"/", "/about", "/docs/a", "/deep1"}  # /deep1 is depth 2 (via /about)
    assert "/deep2" not in site.requested  # depth 3
    assert "/private/secret" not in site.requested  # robots.txt
    assert not any(p.startswith("/away") for p in site.requested)
    assert (by_url["/missing"].status, by_url["/missing"].error_code) == ("failed", "http_404")
    assert job.pages_crawled == 4 and job.pages_failed == 1 and job.pages_skipped >= 2  # robots + pdf
    home = by_url["/"]
    assert home.name == "Acme Home" and home.content_type == "text/html"
    text = service.get_document_chunks(account, kb.id, home.id)[0].text
    assert "industrial kettles" in text and "tracking" not in text and "Copyright" not in text
    hits = service.query_knowledge_base(account, kb.id, "how do I descale the kettle", top_k=1)
    assert hits[0].source_url == site.url + "/docs/a"
    # A redelivered message of the finished job does nothing.
    assert service.run_scrape_job(job.id).pages_crawled == 4
    assert len(service.list_documents(account, kb.id, limit=100)[0]) == len(docs)


def test_page_limit(kb_env, site):
    service, account, kb, _ = kb_env
    job = service.run_scrape_job(
        service.create_web_scrape_job(account, kb.id, [site.url + "/"], max_depth=5, max_pages=2).id
    )
    assert job.pages_crawled + job.pages_failed == 2


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_and_private_urls_fail_clearly(kb_env, database, tmp_path):
    service, account, kb, _ = kb_env
    job = service.run_scrape_job(
        service.create_web_scrape_job(account, kb.id, [f"http://127.0.0.1:{_closed_port()}/"]).id
    )
    assert job.status == "failed" and "could not fetch" in job.error
    docs, _ = service.list_documents(account, kb.id)
    assert [(d.status, d.error_code) for d in docs] == [("failed", "unreachable")]

    # A name DNS cannot resolve (.invalid never resolves, RFC 6761) is unreachable, not a blocked address.
    dns = service.run_scrape_job(service.create_web_scrape_job(account, kb.id, ["http://no-such-host.invalid/"]).id)
    assert dns.status == "failed" and "cannot resolve no-such-host.invalid" in dns.error
    failed = service.list_documents(account, kb.id)[0]
    assert [(d.source_url, d.error_code) for d in failed if d.scrape_job_id == dns.id] == [
        ("http://no-such-host.invalid/", "unreachable")
    ]

    strict = build_knowledge_service(kb_settings(tmp_path, kb_scrape_allowed_private_hosts=""), database)
    with pytest.raises(URLNotAllowed) as refused:  # refused before the job is saved
        strict.create_web_scrape_job(account, kb.id, ["http://no-such-host.invalid/", "http://localhost:9/"])
    assert refused.value.status_code == 422 and refused.value.details[0]["field"] == "start_urls.1"
    assert len(strict.list_scrape_jobs(account, kb.id)) == 2  # the two jobs above, nothing new
    # A job saved while its host was allowed is checked again when it runs.
    job = strict.run_scrape_job(service.create_web_scrape_job(account, kb.id, ["http://127.0.0.1:9/"]).id)
    assert job.status == "failed" and "non-public address" in job.error
    blocked = [d for d in service.list_documents(account, kb.id)[0] if d.scrape_job_id == job.id]
    assert [d.error_code for d in blocked] == ["blocked_address"]


def test_scrape_job_through_the_queue(kb_env, site):
    service, account, kb, settings = kb_env
    sqs = boto3.client("sqs", region_name="us-east-1")
    queue_url = sqs.create_queue(QueueName="kb-scrape")["QueueUrl"]
    settings.kb_scrape_queue_url = queue_url
    job = service.create_web_scrape_job(account, kb.id, [site.url + "/about"], max_depth=0, max_pages=5)
    assert service.enqueue_scrape_job(job) is True
    worker = load_function("scrape")
    worker.service.set(service)
    try:
        messages = drain(sqs, queue_url)
        assert len(messages) == 1
        result = worker.handler(sqs_event(messages), FakeLambdaContext())
    finally:
        worker.service.set(None)
    assert result == {"batchItemFailures": []}
    done = service.get_scrape_job(account, kb.id, job.id)
    assert (done.status, done.pages_crawled) == ("completed", 1)
