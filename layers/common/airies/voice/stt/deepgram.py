"""Deepgram speech-to-text through the official deepgram-sdk (pre-recorded ``POST /v1/listen``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airies.core.config import Settings
from airies.core.errors import ProviderError
from airies.core.vendor_clients import SdkVendor
from airies.core.vendor_errors import http_provider_error, transport_error
from airies.voice.audio.formats import duration_seconds, write_wav
from airies.voice.stt.base import STTOptions, Transcript, Word

DEFAULT_MODEL = "nova-3"


class DeepgramSTT(SdkVendor):
    name = "deepgram"

    @classmethod
    def from_settings(cls, api_key: str, settings: Settings, options: Mapping[str, str]) -> DeepgramSTT:
        return cls(api_key, base_url=settings.deepgram_base_url, timeout=settings.voice_provider_timeout_seconds)

    def _build_client(self) -> Any:
        from deepgram import AsyncDeepgramClient  # lazy: ~30 MB of SDK
        from deepgram.environment import DeepgramClientEnvironment

        kwargs: dict[str, Any] = {"api_key": self.api_key, "timeout": self.timeout}
        if self.base_url:
            ws = self.base_url.replace("https://", "wss://").replace("http://", "ws://")
            kwargs["environment"] = DeepgramClientEnvironment(
                base=self.base_url, production=ws, agent=ws, agent_rest=self.base_url
            )
        return AsyncDeepgramClient(**kwargs)

    async def transcribe(self, pcm16: bytes, sample_rate: int, options: STTOptions) -> Transcript:
        import httpx
        from deepgram.core.api_error import ApiError

        model = options.model or DEFAULT_MODEL
        params: dict[str, Any] = {"model": model, "smart_format": True, "punctuate": True}
        if options.language in ("multi", "auto"):
            params["detect_language"] = True
        else:
            params["language"] = options.language
        if options.keywords:
            # Nova-3 takes key terms; older models take keywords with boosts.
            params["keyterm" if model.startswith("nova-3") else "keywords"] = list(options.keywords)
        try:
            response = await self._get_client().listen.v1.media.transcribe_file(
                request=write_wav(pcm16, sample_rate),  # a WAV header tells Deepgram the encoding and rate
                request_options={"max_retries": self.max_retries, "timeout_in_seconds": max(1, round(self.timeout))},
                **params,
            )
        except ApiError as exc:
            raise http_provider_error(self.name, exc.status_code, exc.body, exc.headers) from exc
        except httpx.HTTPError as exc:
            raise transport_error(self.name, exc) from exc
        return self._transcript(response, pcm16, sample_rate, model)

    def _transcript(self, response: Any, pcm16: bytes, sample_rate: int, model: str) -> Transcript:
        results = getattr(response, "results", None)
        channels = getattr(results, "channels", None) or []
        if not channels or not (channels[0].alternatives or []):
            raise ProviderError("deepgram returned no transcript", provider=self.name, details="empty results")
        channel = channels[0]
        best = channel.alternatives[0]
        words = tuple(
            Word(
                word=w.punctuated_word or w.word or "",
                start=float(w.start or 0.0),
                end=float(w.end or 0.0),
                confidence=w.confidence,
            )
            for w in (best.words or [])
        )
        metadata = getattr(response, "metadata", None)
        return Transcript(
            text=best.transcript or "",
            words=words,
            confidence=best.confidence,
            language=getattr(channel, "detected_language", None) or None,
            duration_seconds=float(getattr(metadata, "duration", None) or duration_seconds(pcm16, sample_rate)),
            provider=self.name,
            model=model,
            metadata={"request_id": getattr(metadata, "request_id", None)},
        )
