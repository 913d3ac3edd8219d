"""The voice vendors, one explicit table per kind: ``STT_VENDORS`` and ``TTS_VENDORS`` (name -> ``VoiceVendor``).

To add a vendor: one module under ``stt/`` or ``tts/`` (a class with the kind's interface and a ``from_settings``
constructor) and one line in its table (with its key probe when the vendor has a cheap authenticated request).
Nothing registers itself on import. The offline engines (``catalog.OFFLINE_STT``, ``OFFLINE_TTS``) need no key; the cloud
vendors serve an account with its own key (``account_keys``: the names it may be stored under) or the platform's
(``settings_keys``: the Settings fields, which are also the platform secrets' names).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import httpx

from airies.core.config import Settings
from airies.core.vendor_errors import http_provider_error, transport_error
from airies.voice.stt.base import STTProvider
from airies.voice.stt.deepgram import DeepgramSTT
from airies.voice.stt.pocketsphinx import PocketSphinxSTT
from airies.voice.stt.whisper import WhisperSTT
from airies.voice.tts.azure import AzureTTS
from airies.voice.tts.base import TTSProvider
from airies.voice.tts.elevenlabs import ElevenLabsTTS
from airies.voice.tts.espeak import EspeakTTS

KeyValidator = Callable[[str, Settings], Awaitable[bool]]


P = TypeVar("P", covariant=True)


class VendorClass(Protocol[P]):
    def from_settings(self, api_key: str, settings: Settings, options: Mapping[str, str]) -> P: ...


@dataclass(frozen=True)
class VoiceVendor(Generic[P]):
    cls: VendorClass[P]  # ``cls.from_settings(api_key, settings, options stored with the key)`` builds it
    settings_keys: tuple[str, ...]
    account_keys: tuple[str, ...]
    validate: KeyValidator | None = None
    key_kind: str = "speech"  # the provider-key kind its stored keys are filed under

    def build(self, api_key: str, settings: Settings, options: Mapping[str, str]) -> P:
        return self.cls.from_settings(api_key, settings, options)


async def _probe(provider: str, url: str, headers: dict[str, str], settings: Settings) -> bool:
    """A key is good when an authenticated GET succeeds; 401/403 say it is not; anything else is the vendor's error."""
    try:
        async with httpx.AsyncClient(timeout=settings.voice_provider_timeout_seconds) as client:
            response = await client.get(url, headers=headers)
    except httpx.HTTPError as exc:
        raise transport_error(provider, exc) from exc
    if response.status_code in (401, 403):
        return False
    if response.status_code >= 400:
        raise http_provider_error(provider, response.status_code, response.text, dict(response.headers))
    return True


async def validate_deepgram(api_key: str, settings: Settings) -> bool:
    """Deepgram lists the projects the key can see."""
    base = (settings.deepgram_base_url or "https://api.deepgram.com").rstrip("/")
    return await _probe("deepgram", f"{base}/v1/projects", {"Authorization": f"Token {api_key}"}, settings)


async def validate_elevenlabs(api_key: str, settings: Settings) -> bool:
    base = (settings.elevenlabs_base_url or "https://api.elevenlabs.io").rstrip("/")
    return await _probe("elevenlabs", f"{base}/v1/user", {"xi-api-key": api_key}, settings)


async def validate_azure(api_key: str, settings: Settings) -> bool:
    base = (
        settings.azure_speech_base_url or f"https://{settings.azure_speech_region}.tts.speech.microsoft.com"
    ).rstrip("/")
    return await _probe(
        "azure", f"{base}/cognitiveservices/voices/list", {"Ocp-Apim-Subscription-Key": api_key}, settings
    )


STT_VENDORS: dict[str, VoiceVendor[STTProvider]] = {
    "deepgram": VoiceVendor(DeepgramSTT, ("deepgram_api_key",), ("deepgram",), validate_deepgram, "stt"),
    "whisper": VoiceVendor(WhisperSTT, ("whisper_api_key", "openai_api_key"), ("whisper", "openai"), None, "stt"),
}
TTS_VENDORS: dict[str, VoiceVendor[TTSProvider]] = {
    "elevenlabs": VoiceVendor(ElevenLabsTTS, ("elevenlabs_api_key",), ("elevenlabs",), validate_elevenlabs, "tts"),
    "azure": VoiceVendor(AzureTTS, ("azure_speech_key",), ("azure", "azure_speech"), validate_azure, "speech"),
}
CLOUD_VENDORS: dict[str, VoiceVendor[STTProvider] | VoiceVendor[TTSProvider]] = {**STT_VENDORS, **TTS_VENDORS}

OFFLINE_STT_ENGINE = PocketSphinxSTT
OFFLINE_TTS_ENGINE = EspeakTTS
