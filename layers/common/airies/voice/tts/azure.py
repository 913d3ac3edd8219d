"""Azure AI Speech text-to-speech through its REST API (SSML in, audio stream out; no SDK needed)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from airies.core.config import Settings
from airies.core.errors import NotFoundError
from airies.core.vendor_clients import LoopBoundClient
from airies.core.vendor_errors import http_provider_error, transport_error
from airies.voice.tts.base import TTSOptions, VoiceInfo

# Our output formats -> X-Microsoft-OutputFormat. Azure has no 44.1 kHz MP3: mp3 requests get 48 kHz.
OUTPUT_FORMATS = {
    "pcm_8000": "raw-8khz-16bit-mono-pcm",
    "pcm_16000": "raw-16khz-16bit-mono-pcm",
    "pcm_22050": "raw-22050hz-16bit-mono-pcm",
    "pcm_24000": "raw-24khz-16bit-mono-pcm",
    "pcm_44100": "raw-44100hz-16bit-mono-pcm",
    "pcm_48000": "raw-48khz-16bit-mono-pcm",
    "ulaw_8000": "raw-8khz-8bit-mono-mulaw",
    "mp3_44100_128": "audio-48khz-192kbitrate-mono-mp3",
}


def build_ssml(text: str, voice_id: str, speed: float = 1.0) -> str:
    locale = "-".join(voice_id.split("-")[:2]) if voice_id.count("-") >= 2 else "en-US"
    rate = f"{(speed - 1) * 100:+.0f}%"
    return (
        f"<speak version='1.0' xmlns='http://www.w3.org/2001/10/synthesis' xml:lang={quoteattr(locale)}>"
        f"<voice name={quoteattr(voice_id)}><prosody rate={quoteattr(rate)}>{escape(text)}</prosody></voice></speak>"
    )


class AzureTTS:
    name = "azure"

    @classmethod
    def from_settings(cls, api_key: str, settings: Settings, options: Mapping[str, str]) -> AzureTTS:
        """An account's key is used in the region stored with it; the platform's key in the platform's region."""
        return cls(
            api_key,
            region=options.get("region") or settings.azure_speech_region,
            base_url=settings.azure_speech_base_url,
            timeout=settings.voice_provider_timeout_seconds,
        )

    def __init__(
        self, api_key: str, *, region: str = "eastus", base_url: str | None = None, timeout: float = 20.0
    ) -> None:
        self.api_key = api_key
        self.base_url = (base_url or f"https://{region}.tts.speech.microsoft.com").rstrip("/")
        self.timeout = timeout
        self._clients = LoopBoundClient(self._build_client)

    def _get_client(self) -> Any:
        return self._clients.get()

    def _build_client(self) -> Any:
        import httpx

        return httpx.AsyncClient(
            timeout=self.timeout,
            headers={"Ocp-Apim-Subscription-Key": self.api_key, "User-Agent": "airies"},
        )

    async def synthesize(self, text: str, options: TTSOptions) -> AsyncIterator[bytes]:
        import httpx

        headers = {
            "Content-Type": "application/ssml+xml",
            "X-Microsoft-OutputFormat": OUTPUT_FORMATS[options.output_format],
        }
        body = build_ssml(text, options.voice_id, options.speed).encode()
        try:
            async with self._get_client().stream(
                "POST", f"{self.base_url}/cognitiveservices/v1", content=body, headers=headers
            ) as response:
                if response.status_code >= 400:
                    detail = (await response.aread()).decode(errors="replace")
                    if response.status_code == 400 and "voice" in detail.lower():
                        raise NotFoundError("voice", options.voice_id)
                    raise http_provider_error(self.name, response.status_code, detail, dict(response.headers))
                async for chunk in response.aiter_bytes():
                    if chunk:
                        yield chunk
        except httpx.HTTPError as exc:
            raise transport_error(self.name, exc) from exc

    async def list_voices(self) -> list[VoiceInfo]:
        import httpx

        try:
            response = await self._get_client().get(f"{self.base_url}/cognitiveservices/voices/list")
        except httpx.HTTPError as exc:
            raise transport_error(self.name, exc) from exc
        if response.status_code >= 400:
            raise http_provider_error(self.name, response.status_code, response.text, dict(response.headers))
        return [
            VoiceInfo(
                voice_id=item["ShortName"],
                name=item.get("DisplayName") or item["ShortName"],
                provider=self.name,
                language=item.get("Locale"),
            )
            for item in response.json()
        ]
