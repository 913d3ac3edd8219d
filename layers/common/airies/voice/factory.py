"""Which voice providers serve an account: its own keys first, else the platform's (``voice/vendors.py`` lists the
vendors), the offline engines when allowed; provider instances cached per container; the status rows of
``GET /api/v1/providers`` and the key probes handed to the provider-key registry.
"""

from __future__ import annotations

import shutil
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from airies.accounts.provider_keys import get_account_provider_credentials
from airies.core.config import Settings
from airies.core.database import Database
from airies.core.secrets import platform_key
from airies.core.storage import StorageService
from airies.voice.catalog import OFFLINE_STT, OFFLINE_TTS
from airies.voice.service import VoiceService
from airies.voice.speech_models import ModelBuilder, SpeechModelCache, offline_stt_available
from airies.voice.stt.base import STTProvider
from airies.voice.stt.pocketsphinx import PocketSphinxSTT
from airies.voice.tts.base import TTSProvider
from airies.voice.vendors import (
    CLOUD_VENDORS,
    OFFLINE_STT_ENGINE,
    OFFLINE_TTS_ENGINE,
    STT_VENDORS,
    TTS_VENDORS,
    KeyValidator,
    VoiceVendor,
)

T = TypeVar("T")


def vendor_platform_key(settings: Settings, provider: str) -> str | None:
    """The platform's key for a cloud voice vendor: its Settings fields in order, then the platform secrets."""
    return platform_key(settings, *CLOUD_VENDORS[provider].settings_keys)


def account_credentials(
    session: Session | None, account_id: str | None, provider: str, settings: Settings | None = None
) -> tuple[str, dict[str, str]] | None:
    """The account's own key for a voice vendor and the options stored with it (Azure: ``region``), or None."""
    if session is None or account_id is None:
        return None
    for name in CLOUD_VENDORS[provider].account_keys:
        try:
            credentials = get_account_provider_credentials(session, account_id, name, settings)
        except Exception:  # no stored key / unknown provider name / undecryptable
            credentials = None
        if credentials and credentials[0]:
            return str(credentials[0]), dict(credentials[1])
    return None


def configured_voice_vendors(settings: Settings, stored: set[str]) -> set[str]:
    """The cloud STT/TTS vendors with a key for this account (its own, among the providers it has ``stored`` keys
    for, else the platform's): the ones ``build_voice_service`` makes available, found without building them or
    decrypting a key."""
    return {
        p
        for p, vendor in CLOUD_VENDORS.items()
        if stored.intersection(vendor.account_keys) or vendor_platform_key(settings, p)
    }


# Provider instances per container, keyed by their construction arguments: SDK clients, the PocketSphinx
# decoder and its domain models are reused across invocations. Bounded: accounts' own keys add entries.
_PROVIDERS: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
MAX_CACHED_PROVIDERS = 64


def _cached(key: tuple[Any, ...], build: Callable[[], T]) -> T:
    provider: T | None = _PROVIDERS.get(key)
    if provider is None:
        provider = _PROVIDERS[key] = build()
        while len(_PROVIDERS) > MAX_CACHED_PROVIDERS:
            _PROVIDERS.popitem(last=False)
    else:
        _PROVIDERS.move_to_end(key)
    return provider


def _vendor(vendor: VoiceVendor[T], name: str, api_key: str, settings: Settings, options: dict[str, str]) -> T:
    key = (name, api_key, tuple(sorted(options.items())), settings.model_dump_json())
    return _cached(key, lambda: vendor.build(api_key, settings, options))


def build_voice_service(
    settings: Settings,
    database: Database | None = None,
    account_id: str | None = None,
    *,
    session: Session | None = None,
) -> VoiceService:
    """Pick providers from the configured keys (account keys override platform keys).

    ``session`` (or ``database``, opened for the key lookup only) enables account keys and cloned voices.
    """
    if session is None and database is not None and account_id is not None:
        with database.session() as lookup:
            credentials = {p: account_credentials(lookup, account_id, p, settings) for p in CLOUD_VENDORS}
    else:
        credentials = {p: account_credentials(session, account_id, p, settings) for p in CLOUD_VENDORS}
    uses_account_key = any(credentials.values())

    def key_and_options(name: str) -> tuple[str | None, dict[str, str]]:
        own = credentials[name]
        return (own[0], own[1]) if own else (vendor_platform_key(settings, name), {})

    stt: dict[str, STTProvider] = {}
    for name, stt_vendor in STT_VENDORS.items():
        api_key, options = key_and_options(name)
        if api_key:
            stt[name] = _vendor(stt_vendor, name, api_key, settings, options)
    tts: dict[str, TTSProvider] = {}
    for name, tts_vendor in TTS_VENDORS.items():
        api_key, options = key_and_options(name)
        if api_key:
            tts[name] = _vendor(tts_vendor, name, api_key, settings, options)

    def offline_tts() -> TTSProvider:
        return _cached((OFFLINE_TTS, settings.espeak_binary), lambda: OFFLINE_TTS_ENGINE(binary=settings.espeak_binary))

    return VoiceService(
        stt_providers=stt,
        tts_providers=tts,
        offline_stt_factory=offline_recogniser,
        offline_tts_factory=offline_tts,
        offline_fallback=settings.voice_offline_fallback,
        session=session,
        account_id=account_id,
        max_audio_seconds=float(settings.max_transcription_seconds),
        max_tts_chars=settings.max_tts_chars,
        voice_cache_ttl=float(settings.voice_cache_ttl_seconds),
        cache_namespace=f"account:{account_id}" if uses_account_key and account_id else "platform",
        default_offline_voice=settings.espeak_default_voice,
        speech_models=speech_model_cache(settings),
    )


def offline_recogniser() -> PocketSphinxSTT:
    """The container's PocketSphinx engine (NotAvailableError when the package is not installed)."""
    return _cached((OFFLINE_STT,), OFFLINE_STT_ENGINE)


def speech_model_cache(settings: Settings, builder: ModelBuilder | None = None) -> SpeechModelCache:
    """The offline recogniser's models: ``<data_dir>/speech-models`` and the storage bucket (on AWS, or where an
    AWS endpoint such as the local stack's moto is configured: never a real bucket from a developer's machine);
    built with the container's PocketSphinx engine unless another ``builder`` is given."""
    reachable = settings.on_aws or bool(settings.aws_endpoint_url)
    storage = StorageService.from_settings(settings) if settings.storage_bucket and reachable else None
    return SpeechModelCache(
        Path(settings.data_dir) / "speech-models",
        storage,
        builder or (lambda phrases: offline_recogniser().build_model(phrases)),
    )


def voice_provider_status(settings: Settings) -> list[dict[str, Any]]:
    rows = []
    kinds = {**{name: "stt" for name in STT_VENDORS}, **{name: "tts" for name in TTS_VENDORS}}
    for provider, kind in kinds.items():
        configured = bool(vendor_platform_key(settings, provider))
        rows.append(
            {
                "provider": provider,
                "kind": kind,
                "configured": configured,
                "status": "configured" if configured else "not_configured",
            }
        )
    for provider, kind, available, missing in (
        (OFFLINE_STT, "stt", offline_stt_available(), "the pocketsphinx package is not installed"),
        (OFFLINE_TTS, "tts", offline_tts_available(settings), f"'{settings.espeak_binary}' is not on PATH"),
    ):
        row: dict[str, Any] = {
            "provider": provider,
            "kind": kind,
            "configured": available,
            "status": "offline" if available else "not_installed",
        }
        if not available:
            row["reason"] = missing
        rows.append(row)
    return rows


def offline_tts_available(settings: Settings) -> bool:
    """The eSpeak NG binary is on PATH (or the configured path exists and is executable)."""
    return shutil.which(settings.espeak_binary) is not None


# ---------------------------------------------------------------------- provider keys

# The voice vendors' key probes (provider -> (validator, provider-key kind)), from the vendor tables.
KEY_VALIDATORS: dict[str, tuple[KeyValidator, str]] = {
    name: (vendor.validate, vendor.key_kind) for name, vendor in CLOUD_VENDORS.items() if vendor.validate is not None
}
