"""Interface-level engines for conversation tests and the benchmark: STT, LLM and TTS with injected latencies.

They implement the provider interfaces (``STTProvider``, ``TTSProvider``, an ``LLMStreamer``) in-process, so a
test controls exactly what the caller said, what the model replies (and when), and how long each stage takes.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from airies.conversations.turns import TurnEngines
from airies.llm.vendors.base import LLMEvent, LLMRequest, StreamEnd, TextDelta, ToolCall, ToolCallDelta, Usage
from airies.voice.stt.base import STTOptions, Transcript
from airies.voice.tts.base import TTSOptions


def tone(ms: int, *, freq: float = 220.0, amplitude: int = 8000, rate: int = 16000) -> bytes:
    n = rate * ms // 1000
    return struct.pack(f"<{n}h", *(int(amplitude * math.sin(2 * math.pi * freq * i / rate)) for i in range(n)))


def silence(ms: int, rate: int = 16000) -> bytes:
    return b"\x00\x00" * (rate * ms // 1000)


@dataclass
class FakeSTT:
    text: str | Callable[[bytes], str] = "hello there"
    latency_s: float = 0.0
    name: str = "deepgram"
    calls: list[int] = field(default_factory=list)

    async def transcribe(self, pcm16: bytes, sample_rate: int, options: STTOptions) -> Transcript:
        self.calls.append(len(pcm16))
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        text = self.text(pcm16) if callable(self.text) else self.text
        return Transcript(
            text=text, duration_seconds=len(pcm16) / 2 / sample_rate, provider=self.name, model=options.model or ""
        )


@dataclass
class FakeLLM:
    reply: str | Callable[[LLMRequest], str] = "Sure. I can help with that. What else?"
    first_token_s: float = 0.0
    per_token_s: float = 0.0
    end_call_tool: bool = False
    provider: str = "openai"
    model: str = "gpt-4o-mini"
    requests: list[LLMRequest] = field(default_factory=list)
    finished_at: list[float] = field(default_factory=list)

    async def __call__(self, request: LLMRequest) -> AsyncIterator[LLMEvent]:
        import time

        self.requests.append(request)
        text = self.reply(request) if callable(self.reply) else self.reply
        if self.first_token_s:
            await asyncio.sleep(self.first_token_s)
        words = text.split(" ")
        for i, word in enumerate(words):
            if i and self.per_token_s:
                await asyncio.sleep(self.per_token_s)
            yield TextDelta(word + (" " if i < len(words) - 1 else ""))
        calls: tuple[ToolCall, ...] = ()
        if self.end_call_tool:
            yield ToolCallDelta(0, "call_1", "end_call", "{}")
            calls = (ToolCall("call_1", "end_call", "{}"),)
        self.finished_at.append(time.perf_counter())
        yield StreamEnd(
            usage=Usage(prompt_tokens=120, completion_tokens=len(words)),
            finish_reason="tool_calls" if calls else "stop",
            provider=self.provider,
            model=self.model,
            tool_calls=calls,
        )

    def stream(self, request: LLMRequest) -> AsyncIterator[LLMEvent]:
        return self(request)


@dataclass
class FakeTTS:
    first_byte_s: float = 0.0
    ms_per_char: float = 60.0  # speech duration produced per character
    chunk_ms: int = 100
    per_chunk_s: float = 0.0
    name: str = "elevenlabs"
    on_chunk: Callable[[int], Any] | None = None  # called with the running chunk count (barge-in tests)
    sentences: list[str] = field(default_factory=list)
    chunks: int = 0

    async def synthesize(self, text: str, options: TTSOptions) -> AsyncIterator[bytes]:
        self.sentences.append(text)
        if self.first_byte_s:
            await asyncio.sleep(self.first_byte_s)
        total_ms = max(self.chunk_ms, int(len(text) * self.ms_per_char))
        for offset in range(0, total_ms, self.chunk_ms):
            if offset and self.per_chunk_s:
                await asyncio.sleep(self.per_chunk_s)
            self.chunks += 1
            if self.on_chunk is not None:
                await asyncio.to_thread(self.on_chunk, self.chunks)
            yield tone(min(self.chunk_ms, total_ms - offset), freq=330.0)

    async def list_voices(self) -> list[Any]:
        return []


def fake_engines(
    stt: FakeSTT | None = None, llm: FakeLLM | None = None, tts: FakeTTS | None = None, retrieve: Any = None
) -> TurnEngines:
    llm = llm or FakeLLM()
    return TurnEngines(llm=llm, stt=stt or FakeSTT(), tts=tts or FakeTTS(), retrieve=retrieve)
