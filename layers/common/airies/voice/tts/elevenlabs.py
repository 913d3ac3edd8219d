"""ElevenLabs text-to-speech, voice lists and instant voice cloning through the official elevenlabs SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from airies.core.config import Settings
from airies.core.errors import NotFoundError
from airies.core.vendor_clients import SdkVendor
from airies.core.vendor_errors import http_provider_error, transport_error
from airies.voice.tts.base import TTSOptions, VoiceInfo

DEFAULT_MODEL = "eleven_flash_v2_5"  # lowest latency model
CUSTOM_CATEGORIES = {"cloned", "generated", "professional"}


class ElevenLabsTTS(SdkVendor):
    name = "elevenlabs"

    @classmethod
    def from_settings(cls, api_key: str, settings: Settings, options: Mapping[str, str]) -> ElevenLabsTTS:
        return cls(api_key, base_url=settings.elevenlabs_base_url, timeout=settings.voice_provider_timeout_seconds)

    def _build_client(self) -> Any:
        from elevenlabs.client import AsyncElevenLabs  # lazy: ~60 MB of SDK

        kwargs: dict[str, Any] = {"api_key": self.api_key, "timeout": self.timeout}
        if self.base_url:
            kwargs["base_url"] = self.base_url
        return AsyncElevenLabs(**kwargs)

    def _request_options(self) -> dict[str, Any]:
        return {"max_retries": self.max_retries, "timeout_in_seconds": max(1, round(self.timeout))}

    def _error(self, exc: Exception, voice_id: str | None = None) -> Exception:
        status = getattr(exc, "status_code", None)
        if status == 404 and voice_id is not None:
            return NotFoundError("voice", voice_id)
        return http_provider_error(self.name, status, getattr(exc, "body", None), getattr(exc, "headers", None))

    async def synthesize(self, text: str, options: TTSOptions) -> AsyncIterator[bytes]:
        import httpx
        from elevenlabs.core.api_error import ApiError
        from elevenlabs.types import VoiceSettings

        settings = VoiceSettings(
            stability=options.stability,
            similarity_boost=options.similarity_boost,
            style=options.style,
            speed=options.speed,
            use_speaker_boost=True,
        )
        try:
            stream = self._get_client().text_to_speech.stream(
                options.voice_id,
                text=text,
                model_id=options.model or DEFAULT_MODEL,
                output_format=options.output_format,
                voice_settings=settings,
                request_options={**self._request_options(), "chunk_size": 4096},
            )
            async for chunk in stream:
                if chunk:
                    yield chunk
        except ApiError as exc:
            raise self._error(exc, options.voice_id) from exc
        except httpx.HTTPError as exc:
            raise transport_error(self.name, exc) from exc

    async def list_voices(self) -> list[VoiceInfo]:
        import httpx
        from elevenlabs.core.api_error import ApiError

        try:
            response = await self._get_client().voices.get_all(request_options=self._request_options())
        except ApiError as exc:
            raise self._error(exc) from exc
        except httpx.HTTPError as exc:
            raise transport_error(self.name, exc) from exc
        voices = []
        for voice in response.voices or []:
            labels = voice.labels or {}
            voices.append(
                VoiceInfo(
                    voice_id=voice.voice_id,
                    name=voice.name or voice.voice_id,
                    provider=self.name,
                    language=labels.get("language"),
                    custom=(voice.category or "") in CUSTOM_CATEGORIES,
                    preview_url=voice.preview_url,
                )
            )
        return voices

    async def clone_voice(
        self, name: str, samples: Sequence[tuple[str, bytes]], *, description: str | None = None
    ) -> VoiceInfo:
        import httpx
        from elevenlabs.core.api_error import ApiError

        kwargs: dict[str, Any] = {"name": name, "files": [(filename, data) for filename, data in samples]}
        if description:
            kwargs["description"] = description
        try:
            result = await self._get_client().voices.ivc.create(**kwargs, request_options=self._request_options())
        except ApiError as exc:
            raise self._error(exc) from exc
        except httpx.HTTPError as exc:
            raise transport_error(self.name, exc) from exc
        return VoiceInfo(voice_id=result.voice_id, name=name, provider=self.name, custom=True)

    async def delete_voice(self, voice_id: str) -> None:
        import httpx
        from elevenlabs.core.api_error import ApiError

        try:
            await self._get_client().voices.delete(voice_id, request_options=self._request_options())
        except ApiError as exc:
            raise http_provider_error(self.name, exc.status_code, exc.body, exc.headers) from exc
        except httpx.HTTPError as exc:
            raise transport_error(self.name, exc) from exc
