"""The OpenAI-compatible provider through the real openai SDK against the local wire-level double."""

from __future__ import annotations

import asyncio
import json

import pytest

from airies.core.errors import ProviderError
from airies.llm.vendors.base import LLMRequest, StreamEnd, TextDelta, ToolCallDelta
from airies.llm.vendors.openai_compat import OpenAICompatibleProvider
from tests.doubles.openai_server import OpenAIDouble, Reply

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]


@pytest.fixture
def double():
    with OpenAIDouble() as server:
        yield server


def provider(server: OpenAIDouble, **kwargs) -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider("openai", base_url=server.base_url, api_key="sk-test", **kwargs)


def request(**kwargs) -> LLMRequest:
    return LLMRequest(model="gpt-4o-mini", messages=[{"role": "user", "content": "What are your hours?"}], **kwargs)


async def collect(p, req):
    return [event async for event in p.stream(req)]


def test_stream_text_and_usage_with_cached_tokens(double):
    double.script(Reply(text="We open at nine.", prompt_tokens=40, completion_tokens=5, cached_tokens=32))
    events = asyncio.run(collect(provider(double), request()))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "We open at nine."
    assert sum(isinstance(e, TextDelta) for e in events) == 4  # streamed word by word, not at once
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert (end.usage.prompt_tokens, end.usage.completion_tokens, end.usage.cached_tokens) == (40, 5, 32)
    assert end.usage.estimated is False
    assert end.finish_reason == "stop"
    sent = double.chat_requests[-1]
    assert sent.body["stream"] is True and sent.body["stream_options"] == {"include_usage": True}
    assert sent.headers["authorization"] == "Bearer sk-test"


def test_stream_tool_calls_are_assembled(double):
    args = json.dumps({"query": "opening hours", "limit": 3})
    double.script(Reply(text="", tool_calls=[{"name": "lookup", "arguments": args, "id": "call_abc"}]))
    events = asyncio.run(collect(provider(double), request(tools=TOOLS)))
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert len(deltas) > 2  # arguments arrive in fragments
    assert "".join(d.arguments for d in deltas) == args
    end = events[-1]
    assert end.finish_reason == "tool_calls"
    assert [(c.id, c.name, json.loads(c.arguments)) for c in end.tool_calls] == [
        ("call_abc", "lookup", json.loads(args))
    ]
    assert double.chat_requests[-1].body["tools"] == TOOLS


def test_non_streaming_tool_calls_and_usage(double):
    double.script(
        Reply(
            text="Checking.",
            tool_calls=[{"name": "lookup", "arguments": '{"q": 1}'}],
            cached_tokens=7,
            prompt_tokens=20,
        )
    )
    response = asyncio.run(provider(double).complete(request(tools=TOOLS)))
    assert response.text == "Checking."
    assert [(c.name, c.arguments) for c in response.tool_calls] == [("lookup", '{"q": 1}')]
    assert response.end.usage.cached_tokens == 7 and response.end.usage.prompt_tokens == 20
    assert double.chat_requests[-1].body.get("stream") in (None, False)


def test_missing_usage_is_estimated(double):
    double.script(Reply(text="one two three four", include_usage=False))
    end = asyncio.run(collect(provider(double), request()))[-1]
    assert end.usage.estimated is True
    assert end.usage.completion_tokens > 0 and end.usage.prompt_tokens > 0


@pytest.mark.parametrize(
    ("reply", "reason", "retryable"),
    [
        (Reply(status=500), "server_error", True),
        (Reply(status=503), "server_error", True),
        (Reply(status=400, error_type="invalid_request_error"), "bad_request", False),
        (Reply(status=401), "auth", True),
        (Reply(drop_after_chunks=2), "connection", True),
        (Reply(drop_after_chunks=2, drop_mode="eof"), "dropped", True),
        (Reply(error_event_after_chunks=1), "stream_error", True),
    ],
)
def test_errors_are_mapped(double, reply, reason, retryable):
    double.script(reply)
    with pytest.raises(ProviderError) as info:
        asyncio.run(collect(provider(double), request()))
    assert info.value.details["reason"] == reason
    assert info.value.retryable is retryable


def test_429_carries_retry_after(double):
    double.script(Reply(status=429, retry_after=7), Reply(status=429, retry_after_ms=1500))
    for expected in (7.0, 1.5):
        with pytest.raises(ProviderError) as info:
            asyncio.run(collect(provider(double), request()))
        assert info.value.details["reason"] == "rate_limited"
        assert info.value.upstream_status == 429
        assert info.value.retry_after == expected
    assert len(double.chat_requests) == 2  # the SDK did not retry on its own


def test_connection_refused_is_a_connection_error():
    with OpenAIDouble() as server:
        url = server.base_url
    p = OpenAICompatibleProvider("openai", base_url=url, api_key="k", connect_timeout=0.5)
    with pytest.raises(ProviderError) as info:
        asyncio.run(collect(p, request()))
    assert info.value.details["reason"] in ("connection", "connect_timeout")


def test_models_and_key_validation(double):
    double.models = ["m-1", "m-2"]
    double.api_keys = {"sk-good"}
    p = provider(double)
    assert asyncio.run(p.list_models("sk-good")) == ["m-1", "m-2"]
    assert asyncio.run(p.validate_api_key("sk-good")) is True
    assert asyncio.run(p.validate_api_key("sk-bad")) is False


def test_provider_repr_hides_key(double):
    assert "sk-test" not in repr(provider(double))


def test_custom_openai_compatible_endpoint(double, tmp_path):
    from airies.core.config import Settings
    from airies.llm.health import HealthTracker
    from airies.llm.router_config import RouterConfig
    from airies.llm.service import build_llm_service

    settings = Settings(
        data_dir=tmp_path,
        llm_custom_base_url=double.base_url,
        llm_custom_models="llama3.2,qwen2.5",
        llm_custom_name="ollama",
        llm_custom_stream_usage=False,
    )
    service = build_llm_service(settings, None, tracker=HealthTracker(RouterConfig()))
    assert set(service.router.providers) == {"ollama"}
    double.script(Reply(text="Local model here."))

    async def go():
        return [
            e
            async for e in service.stream_response(
                LLMRequest(model="fast", messages=[{"role": "user", "content": "hi"}])
            )
        ]

    events = asyncio.run(go())
    end = events[-1]
    assert (end.provider, end.model) == ("ollama", "llama3.2") and end.cost == 0
    assert end.usage.estimated is True
    body = double.chat_requests[-1].body
    assert body["model"] == "llama3.2" and "stream_options" not in body
    assert double.chat_requests[-1].headers["authorization"] == "Bearer not-needed"


def test_the_body_carries_the_messages_tools_and_choice_as_built(double):
    """Messages and tools go into the JSON body unchanged, whatever they hold (tool calls, tool results, content
    parts), streamed or not; the SDK's own parameters are still set."""
    messages = [
        {"role": "system", "content": "You answer questions about the clinic."},
        {"role": "user", "content": [{"type": "text", "text": "What are your hours?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"hours": "9-5"}'},
    ]
    req = LLMRequest(model="gpt-4o-mini", messages=messages, tools=TOOLS, tool_choice="auto", max_tokens=50)
    double.script(Reply(text="Nine to five."), Reply(text="Nine to five."))
    asyncio.run(collect(provider(double), req))
    asyncio.run(provider(double).complete(req))
    for sent, streamed in zip(double.chat_requests, (True, False), strict=True):
        assert sent.body["messages"] == messages and sent.body["tools"] == TOOLS
        assert sent.body["tool_choice"] == "auto" and sent.body["max_tokens"] == 50
        assert sent.body["model"] == "gpt-4o-mini" and bool(sent.body.get("stream")) is streamed
