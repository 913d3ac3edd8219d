"""What the live functions' init imports (the voice WebSocket handlers, the sweeper): not the HTTP client, nor the
modules of what a call only reaches later, or never (the agent validator, the LLM and voice vendors)."""

from __future__ import annotations

import subprocess
import sys

from airies.core.config import PROJECT_ROOT

NOT_AT_INIT = (
    "httpx",
    "httpcore",
    "airies.accounts.provider_keys",
    "airies.agents.service",
    "airies.core.guarded_http",
    "airies.llm.service",
    "airies.llm.vendors.openai_compat",
    "airies.voice.vendors",
    "airies.webhooks.delivery",
)


def test_the_live_handlers_load_without_httpx_or_the_capabilities_a_call_reaches_later() -> None:
    functions = PROJECT_ROOT / "functions"
    code = (
        "import sys\n"
        f"sys.path[:0] = [{str(functions / 'voice_ws')!r}, {str(functions / 'sweeper')!r}]\n"
        "import connect, default, disconnect, handler\n"
        f"print(sorted(m for m in {NOT_AT_INIT!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
