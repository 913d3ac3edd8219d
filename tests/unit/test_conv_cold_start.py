"""What the live functions' init imports: $connect, $disconnect and the sweeper load neither the HTTP client nor the
modules of what a call only reaches later, or never (the agent validator, the LLM and voice vendors); the voice
messages' function loads what a turn's engines are built from while SnapStart initializes (its snapshot), and at
its first turn otherwise. The analysis function loads the conversation service without the turn pipeline."""

from __future__ import annotations

import ast
import os
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


def loaded_at_init(*handlers: str, initialization: str = "on-demand") -> list[str]:
    """Of ``NOT_AT_INIT``, the modules loaded by importing these handler modules (voice_ws or sweeper), in an init
    of the given type (``AWS_LAMBDA_INITIALIZATION_TYPE``)."""
    functions = PROJECT_ROOT / "functions"
    code = (
        "import sys\n"
        f"sys.path[:0] = [{str(functions / 'voice_ws')!r}, {str(functions / 'sweeper')!r}]\n"
        f"import {', '.join(handlers)}\n"
        f"print(sorted(m for m in {NOT_AT_INIT!r} if m in sys.modules))"
    )
    env = {**os.environ, "AWS_LAMBDA_INITIALIZATION_TYPE": initialization}
    if initialization == "snap-start":  # the snapshot builds the service: as for a deployed stage (no local table)
        env.update(
            {
                "AIRIES_STAGE": "snapshot-test",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
            }
        )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    return list(ast.literal_eval(out.strip()))


def test_connect_disconnect_and_the_sweeper_load_without_httpx_or_what_a_call_reaches_later() -> None:
    assert loaded_at_init("connect", "disconnect", "handler") == []


def test_the_voice_messages_snapshot_holds_the_engines_modules() -> None:
    assert {"airies.llm.service", "airies.voice.vendors", "httpx"} <= set(
        loaded_at_init("default", initialization="snap-start")
    )
    assert loaded_at_init("default") == []  # an on-demand container loads them at its first turn


def test_the_analysis_function_loads_neither_the_turn_pipeline_nor_the_conversation_request_bodies() -> None:
    """It reads, ends and analyses conversations: the conversation service without what runs a turn."""
    pipeline = ("airies.conversations.turns", "airies.conversations.engines", "airies.conversations.schemas")
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(PROJECT_ROOT / 'functions' / 'analysis')!r})\n"
        "import handler\n"
        "assert 'airies.conversations.service' in sys.modules\n"
        f"print(sorted(m for m in {pipeline!r} if m in sys.modules))"
    )
    env = {**os.environ, "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert ast.literal_eval(out.strip()) == []
