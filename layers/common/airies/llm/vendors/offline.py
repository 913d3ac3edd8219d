"""The offline responder: what answers when no LLM provider is configured at all (the embedded default).

It is NOT a language model and says so: every ``StreamEnd.metadata`` has ``{"is_language_model": False,
"offline_reason": ...}``. It answers deterministically, in this order:

0. Requests that are not a conversation (the post-call analysis): ``json_example`` when ``metadata["json_schema"]``
   is set (a JSON value satisfying the schema, ``airies.llm.json_example``); ``transcript_summary`` when
   ``metadata["transcript_summary"]`` is set (what the caller said first and the agent said last, from the
   ``Caller:``/``Agent:`` lines of the last user message).
1. ``end_call``: the last message is a user turn containing one of ``metadata["end_call_phrases"]``
   (default ``["goodbye", "bye bye"]``, whole words, case-insensitive) -> ``metadata["end_call_message"]``
   (default ``"Goodbye!"``); if the request offers a tool named ``end_call`` it also emits that tool call
   (arguments ``{}``), as a language model would. ``StreamEnd.metadata["end_call"] = True``.
2. ``tool_result``: the last message is a tool result (the platform ran the tools this responder called) ->
   ``"Here is what I found: "`` and the results of that round, each as the tool answered (at most 300 characters).
3. ``tool_call``: the last message is a user turn that names one of the request's tools (other than ``end_call``):
   its name with ``_`` and ``-`` read as spaces, as whole words, case-insensitive ("please check order A1" names
   ``check_order``; the first tool named wins) -> no text, one call of that tool (id ``call_offline_<n>``, ``n``
   the number of user turns so far). Its arguments, for each ``required`` property (all properties when none is
   required): the first ``enum`` value; a number or integer: the first number standing alone in the user's text (else 0); a
   boolean: true; a string: the first word of the text that contains a digit (an order number), else the words
   after the tool's name, else the whole text. ``StreamEnd.metadata["tool_call"]`` names the tool.
4. ``first_message``: no user turn yet -> ``metadata["first_message"]`` (when given and non-empty).
5. ``knowledge_passage``: ``metadata["knowledge_passages"]`` (``list[str]`` or ``list[{"text": ...}]``, filled by
   the conversation capability from the agent's knowledge bases) -> the passage sharing the most content words with the last user
   turn (score = shared distinct words / sqrt(words in passage); ties -> the earlier passage; stop words ignored).
   Needs at least one shared word. ``StreamEnd.metadata["passage_index"]`` says which passage.
6. ``no_model``: otherwise ``NO_MODEL_REPLY``.

It streams word by word (``"Hello "``, ``"there."``) like a provider, with estimated usage and zero cost.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import AsyncGenerator
from typing import Any

from airies.llm.catalog import OFFLINE_PROVIDER
from airies.llm.json_example import example_for
from airies.llm.vendors.base import LLMEvent, LLMRequest, StreamEnd, TextDelta, ToolCall, ToolCallDelta
from airies.llm.vendors.openai_compat import estimate_usage

OFFLINE_MODEL = "offline-responder"
NO_MODEL_REPLY = "No language model is configured for this agent, so I can only give prepared answers."
DEFAULT_END_CALL_PHRASES = ("goodbye", "bye bye")
DEFAULT_GOODBYE = "Goodbye!"

_WORD = re.compile(r"[a-z0-9']+")
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "can",
        "could",
        "do",
        "does",
        "did",
        "for",
        "from",
        "had",
        "has",
        "have",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "no",
        "not",
        "of",
        "on",
        "or",
        "our",
        "please",
        "so",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "us",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
    ]
)


def content_words(text: str) -> set[str]:
    return {word for word in _WORD.findall(text.lower()) if word not in STOP_WORDS}


def best_passage(query: str, passages: list[str]) -> int | None:
    wanted = content_words(query)
    best_index, best_score = None, 0.0
    for index, passage in enumerate(passages):
        words = content_words(passage)
        if not words:
            continue
        score = len(wanted & words) / math.sqrt(len(words))
        if score > best_score:
            best_index, best_score = index, score
    return best_index


def passage_text(passage: Any) -> str:
    """A passage is a string or a dict with ``text`` (or ``content``), as the knowledge capability returns it."""
    if isinstance(passage, dict):
        return str(passage.get("text") or passage.get("content") or "")
    return str(passage)


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _has_phrase(text: str, phrases: list[str] | tuple[str, ...]) -> bool:
    lowered = " ".join(_WORD.findall(text.lower()))
    for phrase in phrases:
        needle = " ".join(_WORD.findall(phrase.lower()))
        if needle and re.search(rf"(^|\s){re.escape(needle)}($|\s)", lowered):
            return True
    return False


def _times(count: int) -> str:
    return {0: "never", 1: "once", 2: "twice"}.get(count, f"{count} times")


def summarise_transcript(text: str) -> str:
    """A deterministic summary of ``Caller:``/``Agent:`` lines: how many of each, the first and the last words."""
    lines = [line.strip() for line in text.splitlines()]
    caller = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Caller:")]
    agent = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Agent:")]
    if not caller and not agent:
        return "Nothing was said on the call."
    parts = [f"The caller spoke {_times(len(caller))} and the agent {_times(len(agent))}."]
    if caller:
        parts.append(f'The caller first said: "{caller[0]}".')
    if agent:
        parts.append(f'The agent last said: "{agent[-1]}".')
    return " ".join(parts)


_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w])")  # a number standing alone (not "A12")
TOOL_RESULT_PREFIX = "Here is what I found: "
MAX_TOOL_RESULT_CHARS = 300


def _name_words(name: str) -> str:
    return name.replace("_", " ").replace("-", " ")


def named_tool(text: str, tools: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first offered function (not ``end_call``) whose name the text says, as whole words."""
    for tool in tools:
        function = tool.get("function") or {}
        name = str(function.get("name") or "")
        if name and name != "end_call" and _has_phrase(text, [_name_words(name)]):
            return function
    return None


def offline_arguments(function: dict[str, Any], text: str) -> dict[str, Any]:
    """Arguments for ``function`` from the user's text, by the rule in the module docstring."""
    parameters = function.get("parameters") or {}
    properties: dict[str, Any] = parameters.get("properties") or {}
    wanted = parameters.get("required") or list(properties)
    words = text.split()
    name = r"[\s_-]+".join(re.escape(word) for word in _WORD.findall(_name_words(str(function.get("name"))).lower()))
    said = re.search(name, text, flags=re.IGNORECASE) if name else None
    rest = text[said.end() :].strip(" ?.!,") if said else ""
    arguments: dict[str, Any] = {}
    for name in wanted:
        spec = properties.get(name) or {}
        kind = spec.get("type")
        if spec.get("enum"):
            arguments[name] = spec["enum"][0]
        elif kind in ("number", "integer"):
            found = _NUMBER.search(text)
            number = float(found.group()) if found else 0
            arguments[name] = int(number) if kind == "integer" else number
        elif kind == "boolean":
            arguments[name] = True
        else:
            token = next((w.strip("?.!,;:") for w in words if any(ch.isdigit() for ch in w)), None)
            arguments[name] = token or rest or text
    return arguments


class OfflineResponder:
    name = OFFLINE_PROVIDER
    key_source = "none"

    def decide(self, request: LLMRequest) -> tuple[str, str, dict[str, Any]]:
        """(reply, reason, extra metadata) — pure, so tests and agent testing can reason about it."""
        meta = request.metadata
        user_turns = [m for m in request.messages if m.get("role") == "user"]
        last = request.messages[-1] if request.messages else {}
        if meta.get("json_schema") is not None:
            return json.dumps(example_for(meta["json_schema"])), "json_example", {}
        if meta.get("transcript_summary"):
            return summarise_transcript(_text_of(last)), "transcript_summary", {}
        if last.get("role") == "user":
            phrases = meta.get("end_call_phrases") or DEFAULT_END_CALL_PHRASES
            if _has_phrase(_text_of(last), phrases):
                return str(meta.get("end_call_message") or DEFAULT_GOODBYE), "end_call", {"end_call": True}
        if last.get("role") == "tool":
            results: list[str] = []
            for message in reversed(request.messages):
                if message.get("role") != "tool":
                    break
                results.insert(0, _text_of(message)[:MAX_TOOL_RESULT_CHARS])
            return TOOL_RESULT_PREFIX + " ".join(results), "tool_result", {}
        if last.get("role") == "user" and request.tools:
            function = named_tool(_text_of(last), request.tools)
            if function is not None:
                arguments = offline_arguments(function, _text_of(last))
                call = {"id": f"call_offline_{len(user_turns)}", "name": function["name"], "arguments": arguments}
                return "", "tool_call", {"tool_call": call}
        if not user_turns and meta.get("first_message"):
            return str(meta["first_message"]), "first_message", {}
        passages = [text for text in (passage_text(p) for p in meta.get("knowledge_passages") or []) if text.strip()]
        if user_turns and passages:
            index = best_passage(_text_of(user_turns[-1]), passages)
            if index is not None:
                return passages[index].strip(), "knowledge_passage", {"passage_index": index}
        return NO_MODEL_REPLY, "no_model", {}

    async def stream(self, request: LLMRequest) -> AsyncGenerator[LLMEvent, None]:
        started = time.perf_counter()
        reply, reason, extra = self.decide(request)
        words = reply.split(" ") if reply else []
        ttft_ms = None
        for position, word in enumerate(words):
            piece = word if position == len(words) - 1 else word + " "
            if not piece:
                continue
            if ttft_ms is None:
                ttft_ms = (time.perf_counter() - started) * 1000
            yield TextDelta(piece)
        tool_calls: tuple[ToolCall, ...] = ()
        tool_names = {(tool.get("function") or {}).get("name") for tool in request.tools or []}
        if reason == "end_call" and "end_call" in tool_names:
            call = ToolCall(id="call_offline_end_call", name="end_call", arguments=json.dumps({}))
            yield ToolCallDelta(index=0, id=call.id, name=call.name, arguments=call.arguments)
            tool_calls = (call,)
        elif reason == "tool_call":
            wanted = extra.pop("tool_call")
            call = ToolCall(id=wanted["id"], name=wanted["name"], arguments=json.dumps(wanted["arguments"]))
            yield ToolCallDelta(index=0, id=call.id, name=call.name, arguments=call.arguments)
            tool_calls = (call,)
            extra["tool_call"] = call.name
        yield StreamEnd(
            usage=estimate_usage(request, reply),
            finish_reason="tool_calls" if tool_calls else "stop",
            provider=OFFLINE_PROVIDER,
            model=OFFLINE_MODEL,
            ttft_ms=ttft_ms,
            total_ms=(time.perf_counter() - started) * 1000,
            tool_calls=tool_calls,
            metadata={"is_language_model": False, "offline_reason": reason, "key_source": "none", **extra},
        )

    async def list_models(self) -> list[str]:
        return [OFFLINE_MODEL]

    async def validate_api_key(self) -> bool:
        return True
