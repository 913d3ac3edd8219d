"""The embeddable widget in a real browser, on a page of another origin (a business's own site): a publishable key
made in the dashboard, a visitor's call with the fake microphone, no secret key anywhere on the page or the wire,
and a refusal on an origin the key does not name."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import CALLER_SENTENCE
from tests.browser.test_dashboard import AUDIBLE_PEAK, CALL_TIMEOUT_MS, shot
from tests.local_stack import LocalServer

pytestmark = pytest.mark.slow


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    """Two static sites on other ports (other origins): one the key names, one it does not."""
    root = tmp_path / "site"
    root.mkdir()
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root))) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield root, *(f"http://127.0.0.1:{server.server_address[1]}" for server in servers)  # type: ignore[misc]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_widget_on_another_origin_calls_the_agent_with_a_publishable_key(
    browser, server: LocalServer, site: tuple[Path, str, str], artifacts: Path
) -> None:
    root, shop, elsewhere = site
    owner = httpx.post(f"{server.base}/api/v1/accounts", json={"name": "Shop", "email": "owner@shop.example"}).json()
    secret = owner["api_key"]
    headers = {"Authorization": f"Bearer {secret}"}
    agent = httpx.post(
        f"{server.base}/api/v1/agents",
        headers=headers,
        json={
            "name": "Shop assistant",
            "first_message": "Hello, welcome to the shop.",
            "voice": {"provider": "espeak", "voice_id": "en-us"},
            "transcriber": {"provider": "pocketsphinx", "model": "en-us", "keywords": [CALLER_SENTENCE]},
        },
    ).json()
    assert httpx.post(f"{server.base}/api/v1/agents/{agent['id']}/deploy", headers=headers).status_code == 201

    # The owner signs in with the secret key and makes a publishable key for the shop's origin.
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    dashboard = context.new_page()
    dashboard.goto(server.base + "/widget")
    dashboard.locator("[name='api_key']").fill(secret)
    dashboard.get_by_role("button", name="Sign in", exact=True).click()
    form = dashboard.get_by_test_id("publishable-key-form")
    form.get_by_label("Shop assistant").check()
    form.locator("[name='origins']").fill(shop)
    form.get_by_role("button", name="Create publishable key").click()
    snippet = dashboard.locator("pre.snippet").first
    expect(snippet).to_contain_text('data-airies-key="pk_live_')
    shot(dashboard, artifacts, "09-widget-keys")
    snippet_html = snippet.inner_text()
    assert secret not in snippet_html and agent["id"] in snippet_html
    context.close()

    (root / "index.html").write_text(f"<!doctype html><title>Shop</title><h1>Our shop</h1>{snippet_html}")
    visitor = browser.new_context(viewport={"width": 1280, "height": 800})
    page: Page = visitor.new_page()
    sent: list[str] = []
    page.on("request", lambda request: sent.append(f"{request.url} {request.headers} {request.post_data or ''}"))
    page.on("websocket", lambda ws: sent.append(ws.url))
    page.goto(shop + "/")
    widget = page.locator("[data-airies-widget]")
    widget.locator("button").click()
    expect(widget).to_have_attribute("data-state", "live", timeout=30_000)
    # The agent speaks (its greeting, unless the caller already spoke over it, or its reply).
    expect(widget.locator(".line.agent").first).to_contain_text(re.compile(r"\w+"), timeout=CALL_TIMEOUT_MS)
    expect(widget.locator(".line.user", has_text=CALLER_SENTENCE).first).to_be_visible(timeout=CALL_TIMEOUT_MS)
    expect(widget).to_have_attribute("data-output-peak", AUDIBLE_PEAK, timeout=CALL_TIMEOUT_MS)
    shot(page, artifacts, "10-widget-call")
    widget.locator("button").click()  # hang up
    expect(widget).to_have_attribute("data-state", "ended", timeout=30_000)
    assert any("/api/v1/widget/pk_live_" in line for line in sent) and any("/ws?" in line for line in sent)
    assert not [line for line in sent if secret in line or "ak_live_" in line]  # never the secret key
    assert secret not in page.content()
    visitor.close()

    # The same snippet on a site the key does not name: the browser is refused before any call starts.
    refused = browser.new_context()
    page = refused.new_page()
    page.goto(elsewhere + "/")
    widget = page.locator("[data-airies-widget]")
    widget.locator("button").click()
    expect(widget).to_have_attribute("data-state", "failed", timeout=30_000)
    expect(widget.locator(".status")).to_contain_text(re.compile("could not start the call"))
    refused.close()
    listed = httpx.get(f"{server.base}/api/v1/conversations", headers=headers).json()["data"]
    assert len(listed) == 1 and listed[0]["metadata"]["origin"] == shop
