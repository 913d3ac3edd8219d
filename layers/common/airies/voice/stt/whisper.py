"""OpenAI speech-to-text (Whisper and the gpt-4o transcribe models) through the openai SDK."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airies.core.config import Settings
from airies.core.vendor_clients import SdkVendor
from airies.core.vendor_errors import http_provider_error, transport_error
from airies.voice.audio.formats import duration_seconds, write_wav
from airies.voice.stt.base import STTOptions, Transcript, Word

DEFAULT_MODEL = "whisper-1"
WORD_TIMESTAMP_MODELS = {"whisper-1"}  # only whisper-1 returns verbose_json with word timings


class WhisperSTT(SdkVendor):
    name = "whisper"

    @classmethod
    def from_settings(cls, api_key: str, settings: Settings, options: Mapping[str, str]) -> WhisperSTT:
        base_url = settings.whisper_base_url or settings.openai_base_url
        return cls(api_key, base_url=base_url, timeout=settings.voice_provider_timeout_seconds)

    def _build_client(self) -> Any:
        from openai import AsyncOpenAI

        return AsyncOpenAI(
            api_key=self.api_key, base_url=self.base_url, timeout=self.timeout, max_retries=self.max_retries
        )

    async def transcribe(self, pcm16: bytes, sample_rate: int, options: STTOptions) -> Transcript:
        import openai

        model = options.model or DEFAULT_MODEL
        kwargs: dict[str, Any] = {
            "file": ("audio.wav", write_wav(pcm16, sample_rate), "audio/wav"),
            "model": model,
        }
        if options.language and options.language not in ("multi", "auto"):
            kwargs["language"] = options.language.split("-")[0]
        hints = [*options.keywords, *options.expected_phrases[:5]]
        if hints:
            kwargs["prompt"] = ", ".join(hints)[:800]  # vocabulary hint; Whisper reads ~224 tokens of it
        verbose = model in WORD_TIMESTAMP_MODELS
        if verbose:
            kwargs["response_format"] = "verbose_json"
            kwargs["timestamp_granularities"] = ["word"]
        else:
            kwargs["response_format"] = "json"
        try:
            result = await self._get_client().audio.transcriptions.create(**kwargs)
        except openai.APIStatusError as exc:
            raise http_provider_error(self.name, exc.status_code, exc.body, dict(exc.response.headers)) from exc
        except openai.APIConnectionError as exc:  # includes APITimeoutError
            raise transport_error(self.name, exc) from exc
        words = tuple(
            Word(word=w.word, start=float(w.start), end=float(w.end)) for w in (getattr(result, "words", None) or [])
        )
        language = getattr(result, "language", None)
        return Transcript(
            text=(result.text or "").strip(),
            words=words,
            confidence=None,  # the API reports none
            language=language,
            duration_seconds=float(getattr(result, "duration", None) or duration_seconds(pcm16, sample_rate)),
            provider=self.name,
            model=model,
        )
