"""Router behaviour through real SDK calls to local doubles: failover, Retry-After, breaker, weights, no duplicates."""

from __future__ import annotations

import asyncio
import random

import pytest

from airies.core.errors import ProviderError, RateLimitedError
from airies.llm import catalog
from airies.llm.continuation import CONTINUE_INSTRUCTION
from airies.llm.health import DatabaseHealthStore, HealthTracker
from airies.llm.router import LLMRouter
from airies.llm.router_config import RouterConfig, account_health_key
from airies.llm.vendors.base import LLMRequest, StreamEnd, TextDelta, ToolCallDelta
from airies.llm.vendors.openai_compat import OpenAICompatibleProvider
from tests.doubles.openai_server import OpenAIDouble, Reply

SENTENCE = "The store opens at nine in the morning and closes at six in the evening."


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def a():
    with OpenAIDouble() as server:
        yield server


@pytest.fixture
def b():
    with OpenAIDouble() as server:
        yield server


def make_router(a: OpenAIDouble, b: OpenAIDouble | None = None, *, clock=None, store=None, **overrides) -> LLMRouter:
    providers = {"openai": OpenAICompatibleProvider("openai", base_url=a.base_url, api_key="k", connect_timeout=1.0)}
    if b is not None:
        providers["groq"] = OpenAICompatibleProvider("groq", base_url=b.base_url, api_key="k", connect_timeout=1.0)
    config = RouterConfig(
        **{
            "first_token_timeout_s": 3.0,
            "stream_idle_timeout_s": 3.0,
            "breaker_failures": 3,
            "breaker_cooldown_s": 30.0,
            **overrides,
        }
    )
    tracker = HealthTracker(config, clock=clock or FakeClock(), store=store)
    return LLMRouter(providers, models=list(catalog.llm_models()), config=config, tracker=tracker, rng=random.Random(7))


def pinned(**kwargs) -> LLMRequest:
    return LLMRequest(
        model="gpt-4o-mini", provider="openai", messages=[{"role": "user", "content": "When do you open?"}], **kwargs
    )


def run(router: LLMRouter, req: LLMRequest) -> tuple[str, StreamEnd, list]:
    async def go():
        return [event async for event in router.stream(req)]

    events = asyncio.run(go())
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert isinstance(events[-1], StreamEnd) and sum(isinstance(e, StreamEnd) for e in events) == 1
    return text, events[-1], events


def test_plan_pins_provider_then_class_peers(a, b):
    router = make_router(a, b)
    plan = router.route_request(pinned())
    assert [(c.provider, c.model) for c in plan] == [("openai", "gpt-4o-mini"), ("groq", "llama-3.1-8b-instant")]
    explicit = router.route_request(pinned(fallbacks=(("groq", "llama-3.3-70b-versatile"),)))
    assert explicit[1].model == "llama-3.3-70b-versatile"
    # the conversation capability passes provider/fallbacks through metadata
    via_meta = router.route_request(
        LLMRequest(
            model="gpt-4o-mini",
            messages=[],
            metadata={"provider": "groq", "fallbacks": [{"provider": "openai", "model": "gpt-4o"}]},
        )
    )
    assert [(c.provider, c.model) for c in via_meta] == [("groq", "gpt-4o-mini"), ("openai", "gpt-4o")]


def test_streams_from_primary_with_usage_and_cost(a, b):
    a.script(Reply(text=SENTENCE, prompt_tokens=1000, completion_tokens=500, cached_tokens=400))
    text, end, _ = run(make_router(a, b), pinned())
    assert text == SENTENCE
    assert end.provider == "openai" and end.metadata["failover"] is False
    # 600 uncached * 0.15 + 400 cached * 0.075 + 500 * 0.60 per million
    assert str(end.cost) == "0.00042"
    assert end.ttft_ms is not None and end.ttft_ms <= end.total_ms
    assert len(b.chat_requests) == 0


def test_failover_on_5xx(a, b):
    a.script(Reply(status=503))
    b.script(Reply(text="From the backup."))
    text, end, _ = run(make_router(a, b), pinned())
    assert text == "From the backup."
    assert end.provider == "groq" and end.model == "llama-3.1-8b-instant"
    assert [(x["provider"], x["reason"]) for x in end.metadata["attempts"]] == [
        ("openai", "server_error"),
        ("groq", None),
    ]


def test_failover_on_connection_refused(b):
    with OpenAIDouble() as closed:
        pass  # stopped: its port now refuses connections
    text, end, _ = run(make_router(closed, b), pinned())
    assert end.provider == "groq" and text == "Hello from the test double."


def test_429_fails_over_and_skips_provider_until_retry_after(a, b):
    clock = FakeClock()
    router = make_router(a, b, clock=clock)
    a.script(Reply(status=429, retry_after=30))
    assert run(router, pinned())[1].provider == "groq"
    assert run(router, pinned())[1].provider == "groq"
    assert len(a.chat_requests) == 1  # not asked again inside its Retry-After window
    assert router.get_provider_health()["openai"]["retry_after_s"] == 30
    assert router.get_provider_health()["openai"]["weight"] == 0
    clock.now += 31
    assert run(router, pinned())[1].provider == "openai"


def test_429_on_the_only_provider_waits_a_short_retry_after(a):
    a.script(Reply(status=429, retry_after=0.2), Reply(text="After waiting."))
    text, _, _ = run(make_router(a, clock=None), pinned())
    assert text == "After waiting." and len(a.chat_requests) == 2


def test_429_with_long_retry_after_is_reported(a):
    a.script(Reply(status=429, retry_after=60))
    with pytest.raises(RateLimitedError) as info:
        run(make_router(a), pinned())
    assert info.value.retry_after == pytest.approx(60)


def test_slow_first_token_times_out_and_fails_over(a, b):
    a.script(Reply(text="too late", first_token_delay_s=10))
    b.script(Reply(text="Fast answer."))
    text, end, _ = run(make_router(a, b, first_token_timeout_s=1.0), pinned())
    assert text == "Fast answer."
    assert end.metadata["attempts"][0]["reason"] == "first_token_timeout"


def test_slow_response_headers_also_count_as_first_token_timeout(a, b):
    a.script(Reply(headers_delay_s=10))
    _, end, _ = run(make_router(a, b, first_token_timeout_s=1.0), pinned())
    assert end.provider == "groq"


def test_bad_request_does_not_fail_over(a, b):
    a.script(Reply(status=400, error_type="invalid_request_error"))
    with pytest.raises(ProviderError) as info:
        run(make_router(a, b), pinned())
    assert info.value.details["reason"] == "bad_request"
    assert len(b.chat_requests) == 0


@pytest.mark.parametrize("drop_mode", ["reset", "eof"])
def test_dropped_stream_restarted_by_backup_is_not_duplicated(a, b, drop_mode):
    a.script(Reply(text=SENTENCE, drop_after_chunks=5, drop_mode=drop_mode))
    b.script(Reply(text=SENTENCE))  # the backup ignores the instruction and starts over
    text, end, _ = run(make_router(a, b), pinned())
    assert text == SENTENCE
    assert end.provider == "groq" and end.metadata["failover"] is True
    assert end.metadata["attempts"][0]["emitted_chars"] == len("The store opens at nine ")
    assert end.usage.estimated is True  # the partial attempt's tokens are estimated and added


def test_dropped_stream_continued_by_backup(a, b):
    spoken = "The store opens at nine "
    a.script(Reply(text=SENTENCE, drop_after_chunks=5))

    def continue_it(body):
        messages = body["messages"]
        assert messages[-2] == {"role": "assistant", "content": spoken}
        assert messages[-1] == {"role": "system", "content": CONTINUE_INSTRUCTION}
        return Reply(text=SENTENCE[len(spoken) :])

    b.responder = continue_it
    text, _, _ = run(make_router(a, b), pinned())
    assert text == SENTENCE
    assert len(b.chat_requests) == 1


def test_backup_repeating_the_tail_is_trimmed(a, b):
    a.script(Reply(text=SENTENCE, drop_after_chunks=8))  # "The store opens at nine in the morning "
    b.script(Reply(text="nine in the morning and closes at six in the evening."))
    text, _, _ = run(make_router(a, b), pinned())
    assert text == SENTENCE


def test_no_failover_after_a_tool_call_started(a, b):
    a.script(
        Reply(
            text="", tool_calls=[{"name": "end_call", "arguments": '{"reason": "caller is done"}'}], drop_after_chunks=3
        )
    )
    with pytest.raises(ProviderError):
        run(make_router(a, b), pinned())
    assert len(b.chat_requests) == 0


def test_tool_calls_pass_through_the_router(a, b):
    a.script(Reply(text="Bye.", tool_calls=[{"name": "end_call", "arguments": "{}"}]))
    _, end, events = run(make_router(a, b), pinned(tools=[{"type": "function", "function": {"name": "end_call"}}]))
    assert any(isinstance(e, ToolCallDelta) for e in events)
    assert [c.name for c in end.tool_calls] == ["end_call"]


def test_non_streaming_failover_with_tool_calls(a, b):
    a.script(Reply(status=502))
    b.script(Reply(text="Looking.", tool_calls=[{"name": "lookup", "arguments": '{"q": "hours"}'}]))
    response = asyncio.run(make_router(a, b).complete(pinned()))
    assert response.text == "Looking." and [c.name for c in response.tool_calls] == ["lookup"]
    assert response.end.provider == "groq" and response.end.metadata["failover"] is True


def test_breaker_opens_then_half_opens_and_closes(a, b):
    clock = FakeClock()
    router = make_router(a, b, clock=clock)
    a.script(*[Reply(status=500)] * 3)
    for _ in range(3):
        assert run(router, pinned())[1].provider == "groq"
    assert router.get_provider_health()["openai"]["breaker"] == "open"
    run(router, pinned())
    assert len(a.chat_requests) == 3  # open: not called
    clock.now += 31  # cooldown over: one trial call
    a.script(Reply(text="Recovered."))
    text, end, _ = run(router, pinned())
    assert end.provider == "openai" and text == "Recovered."
    assert router.get_provider_health()["openai"]["breaker"] == "closed"


def test_breaker_trial_failure_reopens(a, b):
    clock = FakeClock()
    router = make_router(a, b, clock=clock, breaker_failures=1)
    a.script(Reply(status=500))
    run(router, pinned())
    assert router.get_provider_health()["openai"]["breaker"] == "open"
    clock.now += 31
    a.script(Reply(status=500))
    assert run(router, pinned())[1].provider == "groq"
    assert len(a.chat_requests) == 2
    assert router.get_provider_health()["openai"]["breaker"] == "open"


def test_all_open_raises_provider_error(a):
    router = make_router(a, breaker_failures=1)
    a.script(Reply(status=500))
    with pytest.raises(ProviderError):
        run(router, pinned())
    with pytest.raises(ProviderError) as info:
        run(router, pinned())
    assert info.value.details["reason"] == "circuit_open"
    assert len(a.chat_requests) == 1


def test_weights_follow_measured_ttft_and_errors(a, b):
    router = make_router(a, b)
    a.default = Reply(text="quick")
    b.default = Reply(text="slow", first_token_delay_s=0.25)
    for _ in range(3):
        run(router, pinned())
        run(
            router,
            LLMRequest(model="llama-3.1-8b-instant", provider="groq", messages=[{"role": "user", "content": "hi"}]),
        )
    weights = router.update_provider_weights()
    health = router.get_provider_health()
    assert health["groq"]["ttft_ms"] > health["openai"]["ttft_ms"]
    assert weights["openai"] > weights["groq"]
    # failures lower the fast provider's weight
    a.script(*[Reply(status=500)] * 2)
    run(router, pinned())
    run(router, pinned())
    assert router.update_provider_weights()["openai"] < weights["openai"]
    assert router.get_provider_health()["openai"]["error_rate"] > 0


def test_weighted_choice_prefers_the_better_provider(a, b):
    router = make_router(a, b)
    for _ in range(5):
        router.tracker.record_success("openai", 100.0)
        router.tracker.record_success("groq", 2000.0)
    request = LLMRequest(model="fast", messages=[{"role": "user", "content": "hi"}])
    firsts = [router.route_request(request)[0].provider for _ in range(300)]
    assert firsts.count("openai") > firsts.count("groq") > 0  # weighted, not winner-takes-all


def test_health_is_shared_across_containers(database, a):
    clock = FakeClock()
    config = RouterConfig(breaker_failures=2, breaker_cooldown_s=30.0, flush_interval_s=30.0)
    one = HealthTracker(config, store=DatabaseHealthStore(database), clock=clock)
    two = HealthTracker(config, store=DatabaseHealthStore(database), clock=clock)
    for _ in range(4):
        one.record_success("openai", 200.0)
    one.sync()
    two.sync()
    assert two.get("openai").ttft_ms == pytest.approx(200.0)
    assert two.get("openai").samples == 4
    error = ProviderError("x", provider="openai", retryable=True, details="server_error")
    one.record_failure("openai", error)
    one.record_failure("openai", error)
    one.sync()
    two.sync()
    assert two.snapshot("openai")["breaker"] == "open"  # a container that saw no failure still skips it
    assert 0 < two.get("openai").error_rate < 1
    # a third container starting cold adopts the shared figures on its first sync
    three = HealthTracker(config, store=DatabaseHealthStore(database), clock=clock)
    assert three.due()
    three.sync()
    assert three.get("openai").samples == 6


def test_sync_is_periodic_not_per_request(database, a):
    clock = FakeClock()
    tracker = HealthTracker(RouterConfig(flush_interval_s=30.0), store=DatabaseHealthStore(database), clock=clock)
    providers = {"openai": OpenAICompatibleProvider("openai", base_url=a.base_url, api_key="k")}
    router = LLMRouter(providers, models=list(catalog.llm_models()), tracker=tracker)
    statements = []

    from sqlalchemy import event

    def count(_conn, _cursor, statement, *_args):
        if "provider_health" in statement:
            statements.append(statement)

    event.listen(database.engine, "before_cursor_execute", count)
    try:
        for _ in range(5):
            run(router, pinned())
        first_burst = len(statements)
        clock.now += 31
        run(router, pinned())
    finally:
        event.remove(database.engine, "before_cursor_execute", count)
    assert first_burst > 0  # the first request loads the shared figures
    assert len(statements) > first_burst  # and the next flush happens after the interval
    assert first_burst <= 2  # one select + one insert, once for five requests


@pytest.mark.parametrize("through", ["router", "service"])
def test_cancelling_a_stream_closes_the_upstream_response(a, through):
    from airies.core.config import Settings
    from airies.llm.service import LLMService

    a.script(Reply(text=" ".join(["word"] * 200), chunk_delay_s=0.02))
    router = make_router(a)
    service = LLMService(router, settings=Settings())

    async def barge_in():
        stream = router.stream(pinned()) if through == "router" else service.stream_response(pinned())
        async for event in stream:
            if isinstance(event, TextDelta):
                break
        await stream.aclose()
        for _ in range(200):  # the double notices the hang-up on its next write
            if a.aborted:
                return
            await asyncio.sleep(0.02)

    asyncio.run(barge_in())
    assert a.aborted == 1
    assert router.get_provider_health()["openai"]["error_rate"] == 0  # a hang-up is not a provider failure


def test_a_lost_half_open_trial_expires(a, b):
    clock = FakeClock()
    router = make_router(a, b, clock=clock, breaker_failures=1)
    router.tracker.record_failure(
        "openai", ProviderError("x", provider="openai", retryable=True, details="server_error")
    )
    clock.now += 31
    assert router.tracker.available("openai") is True  # the trial
    assert router.tracker.available("openai") is False  # only one at a time
    clock.now += 10  # the trial's caller vanished without reporting
    assert router.tracker.available("openai") is True


def test_breaker_opening_is_shared_at_once(database, a):
    clock = FakeClock()
    config = RouterConfig(breaker_failures=1, flush_interval_s=3600.0)
    one = HealthTracker(config, store=DatabaseHealthStore(database), clock=clock)
    one.sync()
    assert not one.due()
    one.record_failure("openai", ProviderError("x", provider="openai", retryable=True, details="server_error"))
    assert one.due()  # no waiting for the hour-long interval
    asyncio.run(one.sync_async())
    two = HealthTracker(config, store=DatabaseHealthStore(database), clock=clock)
    two.sync()
    assert two.available("openai") is False
    clock.now += 31  # the cooldown passed: the second container may try once, then report success
    assert two.available("openai") is True
    two.record_success("openai", 100.0)
    two.sync()
    one.sync()
    assert one.snapshot("openai")["breaker"] == "closed"


def test_a_failing_store_never_breaks_a_reply(a):
    class BrokenStore:
        def merge(self, *_args, **_kwargs):
            raise RuntimeError("database down")

    router = make_router(a, store=BrokenStore())
    assert run(router, pinned())[0] == "Hello from the test double."


def test_health_flush_gives_up_quickly_when_the_table_is_locked(database):
    import time

    from sqlalchemy import text

    clock = FakeClock()
    tracker = HealthTracker(RouterConfig(), store=DatabaseHealthStore(database), clock=clock)
    tracker.record_success("openai", 100.0)
    tracker.sync()  # the row exists
    tracker.record_success("openai", 120.0)
    with database.engine.connect() as other:
        other.begin()
        if database.dialect == "sqlite":
            other.execute(text("UPDATE provider_health SET samples = samples"))  # holds SQLite's write lock
        else:
            other.execute(text("SELECT * FROM provider_health FOR UPDATE"))
        started = time.perf_counter()
        asyncio.run(tracker.sync_async())  # must not raise, must not wait for the 30 s busy timeout
        waited = time.perf_counter() - started
        other.rollback()
    assert waited < 10  # the lock wait is 0.3 s; without it SQLite would wait 30 s
    assert tracker.get("openai").ttft_ms is not None  # local figures intact
    assert tracker.get("openai").pending_success == 1  # the sample that could not be written is kept
    tracker.record_success("openai", 130.0)
    tracker.sync()  # and the next flush writes both
    with database.engine.connect() as conn:
        assert conn.execute(text("SELECT samples FROM provider_health WHERE provider='openai'")).scalar() == 3


# --- an account's own key never poisons the shared health of its provider ------------------------------------
def account_and_platform_routers(a: OpenAIDouble, b: OpenAIDouble, tracker: HealthTracker, config: RouterConfig):
    """Two accounts served by one container: "acc_own" brought its own OpenAI key, "acc_plain" uses the platform's."""
    models = list(catalog.llm_models())
    groq = OpenAICompatibleProvider("groq", base_url=b.base_url, api_key="k", connect_timeout=1.0)
    own = {
        "openai": OpenAICompatibleProvider(
            "openai", base_url=a.base_url, api_key="sk-own", connect_timeout=1.0, key_source="account"
        ),
        "groq": groq,
    }
    plain = {
        "openai": OpenAICompatibleProvider("openai", base_url=a.base_url, api_key="sk-platform", connect_timeout=1.0),
        "groq": groq,
    }
    rng = random.Random(7)
    return (
        LLMRouter(own, models=models, config=config, tracker=tracker, rng=rng, account_id="acc_own"),
        LLMRouter(plain, models=models, config=config, tracker=tracker, rng=rng, account_id="acc_plain"),
    )


def test_account_key_429_does_not_make_other_accounts_skip_the_provider(database, a, b):
    clock = FakeClock()
    config = RouterConfig(first_token_timeout_s=3.0, stream_idle_timeout_s=3.0, flush_interval_s=0.0)
    tracker = HealthTracker(config, store=DatabaseHealthStore(database), clock=clock)
    own, plain = account_and_platform_routers(a, b, tracker, config)
    a.script(Reply(status=429, retry_after=60, error_message="You exceeded your current quota"))
    assert run(own, pinned())[1].provider == "groq"  # the account's own quota is exhausted: it fails over
    assert own.get_provider_health()["openai"]["retry_after_s"] == 60

    text, end, _ = run(plain, pinned())  # another account, same container: still served by OpenAI
    assert end.provider == "openai" and text == "Hello from the test double."
    assert a.chat_requests[-1].headers["authorization"] == "Bearer sk-platform"
    assert plain.get_provider_health()["openai"]["retry_after_s"] == 0

    # nor through the shared table: a fresh container routes the other account to OpenAI too
    other_container = HealthTracker(config, store=DatabaseHealthStore(database), clock=clock)
    other_container.sync()
    assert other_container.available("openai") and other_container.snapshot("openai")["retry_after_s"] == 0
    # and the account with the exhausted key keeps skipping its key inside the Retry-After window
    calls = len(a.chat_requests)
    assert run(own, pinned())[1].provider == "groq" and len(a.chat_requests) == calls


def test_account_key_failures_open_only_that_accounts_breaker(database, a, b):
    clock = FakeClock()
    config = RouterConfig(first_token_timeout_s=3.0, stream_idle_timeout_s=3.0, breaker_failures=2)
    tracker = HealthTracker(config, store=DatabaseHealthStore(database), clock=clock)
    own, plain = account_and_platform_routers(a, b, tracker, config)
    a.script(Reply(status=503), Reply(status=401, error_type="invalid_request_error"))
    assert run(own, pinned())[1].provider == "groq"
    assert run(own, pinned())[1].provider == "groq"
    assert own.get_provider_health()["openai"]["breaker"] == "open"  # that account skips its broken key
    assert plain.get_provider_health()["openai"]["breaker"] == "closed"
    assert run(plain, pinned())[1].provider == "openai"
    tracker.sync()
    from sqlalchemy import select

    from airies.llm.models import ProviderHealth

    with database.session() as session:
        row = session.get(ProviderHealth, "openai")
        assert row is not None and row.consecutive_failures == 0 and row.breaker_open_until is None
        assert row.error_rate == 0 and row.retry_after_until is None
        assert all("@" not in name for name in session.scalars(select(ProviderHealth.provider)))


def test_account_key_statistics_are_bounded_per_container():
    tracker = HealthTracker(RouterConfig())
    tracker.MAX_ACCOUNT_ENTRIES = 3
    for n in range(5):
        tracker.record_success(account_health_key("openai", f"acc_{n}"), 100.0)
    tracker.record_success("openai", 100.0)
    assert sorted(tracker.stats) == ["openai", *(account_health_key("openai", f"acc_{n}") for n in (2, 3, 4))]
    assert set(tracker.take_pending()) == {"openai"}  # account-key figures are never shared
