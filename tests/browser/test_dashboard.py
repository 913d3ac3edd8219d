"""The dashboard in a real browser: sign in with the dev key, create and deploy an agent (a validation problem shown
beside its field), call it with the fake microphone, barge in, then find the call among the conversations; the
knowledge-base and usage pages; cloning and deleting agents, filtering conversations. A screenshot of every page goes
to the artifacts folder."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import AGENT_REPLY, CALLER_SENTENCE
from tests.local_stack import LocalServer

pytestmark = pytest.mark.slow
AUDIBLE_PEAK = re.compile(r"^(0\.(0[5-9]|[1-9]\d)\d|1\.\d+)$")  # peak >= 0.050 of full scale
CALL_TIMEOUT_MS = 90_000  # the caller's sentence loops every ~6 s; generous for a loaded 2-core machine


@pytest.fixture
def page(browser, server: LocalServer):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def shot(page: Page, artifacts: Path, name: str) -> None:
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)


def test_sign_in_build_an_agent_call_it_and_find_the_call(page: Page, server: LocalServer, artifacts: Path) -> None:
    page.goto(server.base + "/")
    shot(page, artifacts, "01-sign-in")
    page.get_by_test_id("dev-signin").click()
    expect(page.get_by_test_id("agent-list")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('airies.apiKey')") == server.api_key
    assert page.evaluate("localStorage.length") == 0  # the key is kept for the tab only

    # Create from the blank template (offline voice and transcriber), then edit.
    page.get_by_test_id("create-agent").click()
    expect(page.get_by_test_id("deploy-agent")).to_be_visible()
    agent_id = page.url.rsplit("/", 1)[-1]
    page.locator("[name='name']").fill("Front desk")
    page.locator("[name='llm.model']").fill("no-such-model")
    problem = page.get_by_test_id("problem-llm.model")
    expect(problem).to_be_visible(timeout=10_000)  # the server's validation, beside the field
    shot(page, artifacts, "02-agent-validation")
    page.locator("[name='llm.model']").fill("gpt-4o-mini")
    expect(problem).to_have_count(0, timeout=10_000)
    page.locator("[name='first_message']").fill("Hello, you are through to the clinic front desk.")
    page.locator("[name='transcriber.keywords']").fill(CALLER_SENTENCE)
    page.get_by_test_id("deploy-agent").click()
    expect(page.get_by_test_id("saved")).to_have_text("Deployed version 1.")
    expect(page.get_by_test_id("versions").locator("tbody tr")).to_have_count(1)
    shot(page, artifacts, "03-agent-edit")

    # The call: the fake microphone says the sentence, pauses, says it again over the agent's reply.
    page.goto(f"{server.base}/talk/{agent_id}")
    page.get_by_test_id("call-button").click()
    expect(page.get_by_test_id("call-state")).to_have_text("live", timeout=30_000)
    transcript = page.get_by_test_id("transcript")
    caller = transcript.locator("[data-role='user']", has_text=CALLER_SENTENCE).first
    expect(caller).to_be_visible(timeout=CALL_TIMEOUT_MS)
    # The agent's reply to it: the agent line of the same turn (its text is cut to what was heard once interrupted).
    reply = transcript.locator(f"[data-role='agent'][data-turn-id='{caller.get_attribute('data-turn-id')}']")
    expect(reply).to_be_visible(timeout=CALL_TIMEOUT_MS)
    # Agent audio was played: the playback worklet's output peak (what reached the speakers), not just received.
    expect(page.get_by_test_id("output-peak")).to_have_text(AUDIBLE_PEAK, timeout=CALL_TIMEOUT_MS)
    # Each completed turn's waterfall, with numbers.
    expect(page.get_by_test_id("waterfall-first-audio").first).to_have_text(re.compile(r"^\d+ ms$"))
    assert page.get_by_test_id("waterfall-value").count() >= 2
    # The caller speaks over the long reply: the agent is interrupted, and says so. (The greeting may be cut too:
    # the caller's first words can land while it still plays, after its turn_end.)
    expect(reply.get_by_test_id("interrupted")).to_be_visible(timeout=CALL_TIMEOUT_MS)
    expect(page.get_by_test_id("barge-ins")).to_contain_text(re.compile(r"\d+ ms"))
    shot(page, artifacts, "04-talk")
    conversation_id = page.get_by_test_id("conversation-link").inner_text()
    page.get_by_test_id("hangup-button").click()
    expect(page.get_by_test_id("call-state")).to_have_text("ended", timeout=30_000)

    # The stored conversation: interrupted reply kept only as heard, the caller's words, how it ended.
    headers = {"Authorization": f"Bearer {server.api_key}"}
    detail = httpx.get(f"{server.base}/api/v1/conversations/{conversation_id}", headers=headers, timeout=30).json()
    interrupted = [t for t in detail["turns"] if t["interrupted"]]
    assert interrupted and all(len(t["agent_text"]) < len(AGENT_REPLY) for t in interrupted)
    # The live transcript agrees: each interrupted reply reads as the caller heard it (the `interrupted` frame's
    # heard_text), not as it was generated, and its waterfall is labelled interrupted too.
    for turn in interrupted:
        line = transcript.locator(f"[data-role='agent'][data-turn-id='{turn['id']}']")
        if turn["agent_text"]:
            expect(line.get_by_test_id("line-text")).to_have_text(turn["agent_text"])
            expect(line.get_by_test_id("interrupted")).to_be_visible()
        else:  # cut before any of it was heard (the hang-up can land while the reply is still being thought of)
            expect(line).to_have_count(0)
        waterfall = page.locator(f"[data-testid='turn-latency'][data-turn-id='{turn['id']}']")
        expect(waterfall.get_by_test_id("turn-status")).to_have_text("interrupted")

    page.get_by_role("link", name="Conversations").click()
    row = page.get_by_test_id("conversation-list").locator("tr", has_text=conversation_id)
    expect(row).to_contain_text("ended")
    shot(page, artifacts, "05-conversations")
    row.get_by_role("link", name=conversation_id).click()
    expect(page.get_by_test_id("conversation-transcript")).to_contain_text(CALLER_SENTENCE)
    expect(page.get_by_test_id("end-reason")).to_have_text("caller_ended")
    expect(page.get_by_test_id("cost-breakdown")).to_contain_text("total")
    page.locator("details summary").first.click()
    shot(page, artifacts, "06-conversation-detail")


def test_knowledge_base_upload_and_query_then_usage(page: Page, server: LocalServer, artifacts: Path) -> None:
    page.goto(server.base + "/")
    page.get_by_test_id("dev-signin").click()
    page.get_by_role("link", name="Knowledge").click()
    page.locator("[name='kb_name']").fill("Clinic facts")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_test_id("dropzone")).to_be_visible()
    # A file dropped on the drop zone goes through the presigned POST straight to the bucket.
    page.get_by_test_id("dropzone").evaluate(
        """(zone) => {
            const data = new DataTransfer();
            data.items.add(new File(["Parking is free behind the building. The clinic has a lift."], "parking.txt",
                                    {type: "text/plain"}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
        }"""
    )
    documents = page.get_by_test_id("documents")
    expect(documents).to_contain_text("parking.txt", timeout=30_000)
    expect(documents).to_contain_text("ready", timeout=60_000)
    page.locator("[name='query']").fill("where can I park")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_test_id("passages")).to_contain_text("Parking is free", timeout=30_000)
    shot(page, artifacts, "07-knowledge-base")

    page.get_by_role("link", name="Usage & billing").click()
    expect(page.get_by_test_id("balance")).to_be_visible()
    expect(page.get_by_test_id("ledger")).to_be_visible()
    shot(page, artifacts, "08-usage")


# The blank template of the Agents page: offline voice and transcriber.
BLANK_AGENT = {
    "system_prompt": "You are a helpful voice assistant. Keep replies short.",
    "first_message": "Hello! How can I help you today?",
    "voice": {"provider": "espeak", "voice_id": "en-us"},
    "transcriber": {"provider": "pocketsphinx", "model": "en-us", "language": "en"},
}


def test_clone_and_delete_agents_and_filter_conversations(page: Page, server: LocalServer, artifacts: Path) -> None:
    api = httpx.Client(base_url=f"{server.base}/api/v1", headers={"Authorization": f"Bearer {server.api_key}"})
    agents = {}
    for name in ("Billing line", "Sales line"):
        created = api.post("/agents", json={**BLANK_AGENT, "name": name})
        assert created.status_code == 201, created.text
        agents[name] = created.json()["id"]
        assert api.post(f"/agents/{agents[name]}/deploy").status_code < 300
    billing_call = api.post("/conversations", json={"agent_id": agents["Billing line"]}).json()["id"]
    sales_call = api.post("/conversations", json={"agent_id": agents["Sales line"]}).json()["id"]
    assert api.put(f"/conversations/{sales_call}", json={"status": "ended"}).status_code == 200

    page.goto(server.base + "/")
    page.get_by_test_id("dev-signin").click()
    listed = page.get_by_test_id("agent-list")

    def row(name: str):  # type: ignore[no-untyped-def]
        return listed.locator("tbody tr").filter(has=page.get_by_role("link", name=name, exact=True))

    # Clone: a copy appears in the list, next to its source.
    expect(row("Billing line")).to_have_count(1)
    row("Billing line").get_by_role("button", name="Clone").click()
    expect(row("Billing line (copy)")).to_have_count(1)
    clone_id = row("Billing line (copy)").locator(".muted").inner_text()
    assert clone_id != agents["Billing line"]
    shot(page, artifacts, "11-agents")

    # Delete, after the confirmation: gone from the list and from the API; the source is untouched.
    dialogs: list[str] = []

    def accept(dialog) -> None:  # type: ignore[no-untyped-def]
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    row("Billing line (copy)").get_by_role("button", name="Delete").click()
    expect(row("Billing line (copy)")).to_have_count(0)
    assert dialogs == ["Delete Billing line (copy)?"]
    assert api.get(f"/agents/{clone_id}").status_code == 404
    expect(row("Billing line")).to_have_count(1)

    # The conversations list narrows by agent and by status.
    page.get_by_role("link", name="Conversations").click()
    conversations = page.get_by_test_id("conversation-list")
    billing_row = conversations.locator("tr", has_text=billing_call)
    sales_row = conversations.locator("tr", has_text=sales_call)
    expect(billing_row).to_have_count(1)
    expect(sales_row).to_have_count(1)
    page.get_by_label("agent filter", exact=True).select_option(agents["Sales line"])
    expect(billing_row).to_have_count(0)
    expect(sales_row).to_contain_text("Sales line")
    page.get_by_label("agent filter", exact=True).select_option("")
    page.get_by_label("status", exact=True).select_option("created")
    expect(sales_row).to_have_count(0)
    expect(billing_row).to_contain_text("created")
    page.get_by_label("status", exact=True).select_option("ended")
    expect(billing_row).to_have_count(0)
    expect(sales_row).to_contain_text("ended")
    page.get_by_label("agent filter", exact=True).select_option(agents["Billing line"])
    expect(conversations.locator("tbody tr")).to_have_count(0)
    expect(page.get_by_text("No conversations match.")).to_be_visible()
    api.close()
