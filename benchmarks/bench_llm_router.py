"""Router overhead on time-to-first-token: ``LLMService.stream_response`` vs a direct SDK call, same run.

Both sides stream the same reply from the same local Chat Completions double (tests/doubles/openai_server.py) over
a kept-alive HTTP/1.1 connection, on one event loop, interleaved request by request so machine noise hits both
alike. Direct = ``AsyncOpenAI.chat.completions.create(stream=True, stream_options=include_usage)`` and iterate to the
first content delta. Router = a pre-built ``LLMService`` (two providers in the class, in-memory health tracker,
per-container client) and iterate ``stream_response`` to the first ``TextDelta``. Both then drain the stream.
Also measured: ``build_llm_service`` (platform providers only, no database) per call.
Target: median TTFT overhead (router - direct, paired per iteration) < 2 ms.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from benchmarks import harness

WARMUP = 30
DEFAULT_RUNS = 300
REPLY = "Our opening hours are nine to six from Monday to Saturday, and we are closed on Sundays."


async def _measure(base_url: str, runs: int) -> dict[str, Any]:
    import openai

    from airies.core.config import Settings
    from airies.llm.health import HealthTracker
    from airies.llm.router_config import RouterConfig
    from airies.llm.service import build_llm_service
    from airies.llm.vendors.base import LLMRequest, TextDelta

    settings = Settings(
        stage="local",
        openai_api_key="sk-bench",
        openai_base_url=base_url,
        groq_api_key="gsk-bench",
        groq_base_url=base_url,
    )
    service = build_llm_service(settings, None, tracker=HealthTracker(RouterConfig.from_settings(settings)))
    direct = openai.AsyncOpenAI(
        api_key="sk-bench",
        base_url=base_url,
        max_retries=0,
        timeout=openai.Timeout(settings.llm_stream_idle_timeout_s, connect=settings.llm_connect_timeout_s),
    )
    messages = [{"role": "system", "content": "You are a receptionist."}, {"role": "user", "content": "Hours?"}]
    request = LLMRequest(model="gpt-4o-mini", provider="openai", messages=messages)

    async def direct_ttft() -> float:
        started = time.perf_counter()
        first = None
        stream = await direct.chat.completions.create(
            model="gpt-4o-mini",
            messages=messages,
            temperature=0.7,
            max_tokens=300,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = (time.perf_counter() - started) * 1000
        assert first is not None
        return first

    async def router_ttft() -> float:
        started = time.perf_counter()
        first = None
        async for event in service.stream_response(request):
            if first is None and isinstance(event, TextDelta):
                first = (time.perf_counter() - started) * 1000
        assert first is not None
        return first

    for _ in range(WARMUP):
        await direct_ttft()
        await router_ttft()
    direct_ms, router_ms, paired = [], [], []
    for index in range(runs):
        # alternate the order so neither side always runs on a warmer connection
        if index % 2:
            d = await direct_ttft()
            r = await router_ttft()
        else:
            r = await router_ttft()
            d = await direct_ttft()
        direct_ms.append(d)
        router_ms.append(r)
        paired.append(r - d)
    await direct.close()

    build_ms = []
    for _ in range(200):
        started = time.perf_counter()
        build_llm_service(settings, None, tracker=service.router.tracker)
        build_ms.append((time.perf_counter() - started) * 1000)
    build_account_ms = _build_with_account_keys(settings, service.router.tracker)
    return {
        "runs": runs,
        "direct_ttft": harness.latency_stats(direct_ms),
        "router_ttft": harness.latency_stats(router_ms),
        "overhead_paired": harness.latency_stats(paired),
        "overhead_of_medians_ms": round(harness.median(router_ms) - harness.median(direct_ms), 3),
        "build_llm_service": harness.latency_stats(build_ms),
        "build_llm_service_with_account_key_sqlite": harness.latency_stats(build_account_ms),
    }


def _build_with_account_keys(settings: Any, tracker: Any) -> list[float]:
    """``build_llm_service`` for an account that has its own key: one SELECT + a decrypt (data key cached)."""
    import tempfile
    from pathlib import Path

    from airies.accounts.provider_keys import ProviderKeyService
    from airies.accounts.service import AccountService
    from airies.core.database import Database
    from airies.llm.service import build_llm_service
    from airies.migrations.runner import upgrade_head

    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'bench.db'}"
        upgrade_head(url)
        local = settings.model_copy(update={"data_dir": Path(folder)})
        database = Database(url)
        with database.session() as session:
            account, _issued = AccountService(session).signup(name="Bench", email="bench@example.com")
            account_id = account.id
            ProviderKeyService(session, local).store(account_id, "groq", "gsk-bench-account-key-0000")
        timings = []
        for _ in range(200):
            started = time.perf_counter()
            built = build_llm_service(local, database, account_id, tracker=tracker)
            timings.append((time.perf_counter() - started) * 1000)
        assert built.router.providers["groq"].key_source == "account"
        database.dispose()
    return timings


def run(args: Any = None) -> dict[str, Any]:
    sys.path.insert(0, str(harness.ROOT))
    from tests.doubles.openai_server import OpenAIDouble, Reply

    runs = getattr(args, "runs", None) or DEFAULT_RUNS
    with OpenAIDouble() as server:
        server.default = Reply(text=REPLY, words_per_chunk=2)
        figures = asyncio.run(_measure(server.base_url, runs))
    print(
        f"  direct TTFT p50 {figures['direct_ttft']['p50_ms']} ms, router TTFT p50 {figures['router_ttft']['p50_ms']} ms, "
        f"paired overhead p50 {figures['overhead_paired']['p50_ms']} ms (p95 {figures['overhead_paired']['p95_ms']} ms); "
        f"build_llm_service p50 {figures['build_llm_service']['p50_ms']} ms "
        f"(with an account key on SQLite: {figures['build_llm_service_with_account_key_sqlite']['p50_ms']} ms)"
    )
    figures["targets"] = [
        harness.target("router TTFT overhead (paired median)", figures["overhead_paired"]["p50_ms"], 2.0, "ms")
    ]
    return figures
