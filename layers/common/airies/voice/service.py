"""Voice decisions: which STT/TTS provider serves a request, input limits, splitting text for TTS requests,
voice fallbacks and cloned voices per account. ``voice/factory.py`` builds the service for an account.

Provider choice (``build_voice_service`` gives the providers, the service picks per request):
- a cloud provider is available when its key is configured: the account's own key (provider_keys)
  first, then the platform key (Settings / ``get_platform_secret``);
- the agent's configured provider (``transcriber.provider`` / ``voice.provider``) is used when available;
- otherwise, when ``Settings.voice_offline_fallback`` is on (the default; set
  ``AIRIES_VOICE_OFFLINE_FALLBACK=false`` in production to fail loudly instead), the offline engines
  answer: PocketSphinx for STT and eSpeak NG for TTS. ``Transcript.provider`` and the
  ``VoiceService.last_tts_provider`` attribute say which engine actually served a call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from airies.core.errors import (
    BadRequestError,
    NotAvailableError,
    NotFoundError,
    PayloadTooLargeError,
    ProviderError,
    ValidationFailedError,
)
from airies.core.ids import new_id
from airies.core.text import split_sentences
from airies.voice import catalog
from airies.voice.audio.formats import SUPPORTED_RATES, AudioFormatError, duration_seconds, sniff_format
from airies.voice.catalog import OFFLINE_STT, OFFLINE_TTS
from airies.voice.configs import config_field
from airies.voice.models import Voice
from airies.voice.speech_models import SpeechModelCache, domain_phrases
from airies.voice.stt.base import STTOptions, STTProvider, Transcript
from airies.voice.tts.base import TTSOptions, TTSProvider, VoiceInfo, parse_output_format

T = TypeVar("T")

MAX_CLONE_SAMPLES = 25
MAX_CLONE_SAMPLE_BYTES = 10 * 1024 * 1024


def split_for_tts(text: str, max_chars: int, *, first_alone: bool = True) -> list[str]:
    """Split text into requests of at most ``max_chars``, at sentence boundaries where possible.

    The first sentence goes alone so its audio starts sooner; sentences longer than ``max_chars``
    are cut at the last comma/space before the limit.
    """
    pieces: list[str] = []
    for sentence in split_sentences(text):
        while len(sentence) > max_chars:
            cut = max(sentence.rfind(", ", 0, max_chars), sentence.rfind(" ", 0, max_chars))
            cut = cut if cut > max_chars // 3 else max_chars
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip(" ,")
        if sentence:
            pieces.append(sentence)
    requests: list[str] = []
    for piece in pieces:
        if requests and (len(requests) > 1 or not first_alone) and len(requests[-1]) + 1 + len(piece) <= max_chars:
            requests[-1] = f"{requests[-1]} {piece}"
        else:
            requests.append(piece)
    return requests


@dataclass
class _CachedVoices:
    expires: float
    voices: list[VoiceInfo]


# Per container: live voice lists are slow to fetch and change rarely.
_VOICE_CACHE: dict[tuple[str, str], _CachedVoices] = {}


def clear_voice_cache() -> None:
    _VOICE_CACHE.clear()


@dataclass
class VoiceService:
    """All voice operations. Providers are injected (``build_voice_service`` picks them from settings)."""

    stt_providers: Mapping[str, STTProvider] = field(default_factory=dict)
    tts_providers: Mapping[str, TTSProvider] = field(default_factory=dict)
    # Builders for the offline engines, created on first use (PocketSphinx loads a 40 MB model).
    offline_stt_factory: Callable[[], STTProvider] | None = None
    offline_tts_factory: Callable[[], TTSProvider] | None = None
    offline_fallback: bool = True
    session: Session | None = None
    account_id: str | None = None
    max_audio_seconds: float = 300.0
    max_tts_chars: int = 5000
    voice_cache_ttl: float = 600.0
    cache_namespace: str = "platform"  # account keys see their own voice lists
    default_offline_voice: str = "en-us+klatt2"
    # Domain language models of the offline recogniser (built at deploy time, cached by content hash).
    speech_models: SpeechModelCache | None = None
    last_tts_provider: str | None = field(default=None, init=False)
    _offline_stt: STTProvider | None = field(default=None, init=False, repr=False)
    _offline_tts: TTSProvider | None = field(default=None, init=False, repr=False)

    # ------------------------------------------------------------------ provider choice

    def _offline_stt_provider(self) -> STTProvider:
        if self._offline_stt is None:
            if self.offline_stt_factory is None:
                raise NotAvailableError("no offline speech-to-text engine is configured")
            self._offline_stt = self.offline_stt_factory()
        return self._offline_stt

    def _offline_tts_provider(self) -> TTSProvider:
        if self._offline_tts is None:
            if self.offline_tts_factory is None:
                raise NotAvailableError("no offline text-to-speech engine is configured")
            self._offline_tts = self.offline_tts_factory()
        return self._offline_tts

    def check_stt_provider(self, requested: str | None) -> None:
        """404 when ``requested`` names no speech-to-text provider (configured here or known to the catalog)."""
        if not requested or requested in self.stt_providers:
            return
        if requested not in catalog.stt_providers():
            raise NotFoundError("STT provider", requested)

    def stt_provider(self, requested: str | None) -> STTProvider:
        """The requested STT provider when configured; else the offline engine (if allowed).
        A name that is no speech-to-text provider at all is a 404, never a silent offline answer."""
        self.check_stt_provider(requested)
        if not requested:
            return next(iter(self.stt_providers.values())) if self.stt_providers else self._offline_stt_provider()
        engine = catalog.engine_for(requested, self.stt_providers, OFFLINE_STT, self.offline_fallback)
        if engine is None:
            raise NotAvailableError(f"speech-to-text provider '{requested}' is not configured (no API key)")
        return self.stt_providers.get(engine) or self._offline_stt_provider()

    def tts_provider(self, requested: str | None, *, strict: bool = False) -> TTSProvider:
        """The requested TTS provider when configured; else the offline engine (if allowed and not ``strict``)."""
        if not requested:
            return next(iter(self.tts_providers.values())) if self.tts_providers else self._offline_tts_provider()
        engine = catalog.engine_for(requested, self.tts_providers, OFFLINE_TTS, self.offline_fallback and not strict)
        if engine is None:
            raise NotAvailableError(f"text-to-speech provider '{requested}' is not configured (no API key)")
        return self.tts_providers.get(engine) or self._offline_tts_provider()

    def available_providers(self) -> dict[str, list[str]]:
        stt = list(self.stt_providers)
        tts = list(self.tts_providers)
        if self.offline_stt_factory is not None and OFFLINE_STT not in stt:
            stt.append(OFFLINE_STT)
        if self.offline_tts_factory is not None and OFFLINE_TTS not in tts:
            tts.append(OFFLINE_TTS)
        return {"stt": stt, "tts": tts}

    # ------------------------------------------------------------------ speech to text

    def check_audio(self, pcm16: bytes, sample_rate: int) -> float:
        if not pcm16:
            raise BadRequestError("audio is empty", code="empty_audio")
        if len(pcm16) % 2:
            raise BadRequestError("PCM16 audio has an odd number of bytes (truncated)", code="invalid_audio")
        if sample_rate not in SUPPORTED_RATES:
            raise BadRequestError(f"unsupported sample rate {sample_rate} Hz", code="invalid_audio")
        seconds = duration_seconds(pcm16, sample_rate)
        if seconds > self.max_audio_seconds:
            raise PayloadTooLargeError(
                f"audio is {seconds:.1f} s long; the limit is {self.max_audio_seconds:.0f} s",
                details={"duration_seconds": round(seconds, 3), "max_seconds": self.max_audio_seconds},
            )
        return seconds

    async def speech_to_text(
        self,
        pcm16: bytes,
        sample_rate: int,
        *,
        transcriber: Any = None,
        expected_phrases: Sequence[str] = (),
        prebuilt_only: bool = False,
    ) -> Transcript:
        """Transcribe one utterance. ``transcriber`` is a TranscriberConfig, a dict with the same keys, or None.

        The offline recogniser decodes with the domain model of the expected phrases and keywords: a stored one,
        or one built now. ``prebuilt_only`` (a conversation turn) never builds: without a stored model (the agent
        was deployed before models were built, or building failed) the turn decodes with the general model.
        """
        self.check_audio(pcm16, sample_rate)
        provider = self.stt_provider(config_field(transcriber, "provider"))
        model = config_field(transcriber, "model")
        if provider.name != config_field(transcriber, "provider"):
            model = None  # a model name belongs to the provider that was asked for
        options = STTOptions(
            model=model,
            language=config_field(transcriber, "language", "en") or "en",
            keywords=tuple(config_field(transcriber, "keywords", ()) or ()),
            expected_phrases=tuple(p for p in expected_phrases if p and p.strip()),
        )
        if provider.name == OFFLINE_STT and self.speech_models is not None:
            phrases = domain_phrases(options.expected_phrases, options.keywords)
            cache = self.speech_models
            lookup = cache.get if prebuilt_only else cache.ensure
            options = replace(options, language_model=await asyncio.to_thread(lookup, self.account_id, phrases))
        return await provider.transcribe(pcm16, sample_rate, options)

    # ------------------------------------------------------------------ text to speech

    def _tts_attempts(
        self, voice: Any, output_format: str, strict: bool = False
    ) -> list[tuple[TTSProvider, TTSOptions]]:
        primary = (config_field(voice, "provider"), config_field(voice, "voice_id"))
        fallbacks = [
            (config_field(fb, "provider"), config_field(fb, "voice_id"))
            for fb in (config_field(voice, "fallback_voices") or [])
        ]
        if strict:
            fallbacks = []
        attempts: list[tuple[TTSProvider, TTSOptions]] = []
        seen: set[tuple[str, str]] = set()
        for index, (provider_name, voice_id) in enumerate([primary, *fallbacks]):
            try:
                provider = self.tts_provider(provider_name, strict=strict)
            except NotAvailableError:
                if index == 0 and not fallbacks:
                    raise
                continue
            if provider.name != provider_name or not voice_id:
                voice_id = self.default_offline_voice if provider.name == OFFLINE_TTS else voice_id
            if not voice_id:
                raise ValidationFailedError(
                    "voice_id is required", details=[{"field": "voice.voice_id", "code": "missing", "message": ""}]
                )
            if (provider.name, voice_id) in seen:
                continue
            seen.add((provider.name, voice_id))
            same_provider = provider.name == provider_name
            options = TTSOptions(
                voice_id=voice_id,
                model=config_field(voice, "model") if index == 0 and same_provider else None,
                output_format=output_format,
                speed=float(config_field(voice, "speed", 1.0) or 1.0),
                stability=float(config_field(voice, "stability", 0.5)),
                similarity_boost=float(config_field(voice, "similarity_boost", 0.75)),
                style=float(config_field(voice, "style", 0.0)),
            )
            attempts.append((provider, options))
        if not attempts:
            raise NotAvailableError("no text-to-speech provider is configured for this voice or its fallbacks")
        return attempts

    async def text_to_speech(
        self, text: str, *, voice: Any = None, output_format: str = "pcm_16000", strict: bool = False
    ) -> AsyncIterator[bytes]:
        """Stream audio chunks in ``output_format`` as the provider produces them.

        Long text is split at sentence boundaries into several provider requests. If the primary voice
        fails before any audio was produced, the voice's ``fallback_voices`` are tried in order.
        ``strict`` (voice previews) uses exactly the given provider and voice: no fallbacks at all.
        """
        text = (text or "").strip()
        if not text:
            raise BadRequestError("text is empty", code="empty_text")
        parse_output_format(output_format)
        attempts = self._tts_attempts(voice, output_format, strict)
        requests = split_for_tts(text, self.max_tts_chars)
        produced = False
        last_error: Exception | None = None
        for provider, options in attempts:
            try:
                for piece in requests:
                    async for chunk in provider.synthesize(piece, options):
                        if chunk:
                            produced = True
                            self.last_tts_provider = provider.name
                            yield chunk
                return
            except (ProviderError, NotAvailableError) as exc:
                if produced:
                    raise  # audio already went out: switching voices mid-utterance would be worse
                last_error = exc
        assert last_error is not None
        raise last_error

    async def synthesize_all(
        self, text: str, *, voice: Any = None, output_format: str = "pcm_16000", strict: bool = False
    ) -> bytes:
        stream = self.text_to_speech(text, voice=voice, output_format=output_format, strict=strict)
        return b"".join([chunk async for chunk in stream])

    # ------------------------------------------------------------------ voices

    async def get_available_voices(self, provider: str | None = None) -> dict[str, dict[str, Any]]:
        """Voices per TTS provider: live lists (cached per container) plus the account's own voices."""
        names = list(self.available_providers()["tts"])
        if provider is not None:
            if provider not in catalog.tts_providers():
                raise NotFoundError("TTS provider", provider)
            names = [provider]
        result: dict[str, dict[str, Any]] = {}
        for name in names:
            entry: dict[str, Any] = {"provider": name, "configured": name in self.available_providers()["tts"]}
            voices: list[VoiceInfo] = []
            if entry["configured"]:
                try:
                    voices = await self._live_voices(name)
                    entry["source"] = "live"
                except (ProviderError, NotAvailableError) as exc:
                    entry["source"] = "catalog"
                    entry["error"] = exc.to_dict()["error"]
            if not voices:
                entry.setdefault("source", "catalog")
                voices = [
                    VoiceInfo(voice_id=v["voice_id"], name=v["name"], provider=name)
                    for v in catalog.tts_providers().get(name, {}).get("voices", [])
                ]
            own = self._account_voices(name)
            known = {v.voice_id for v in voices}
            voices = voices + [v for v in own if v.voice_id not in known]
            entry["voices"] = voices
            result[name] = entry
        return result

    async def check_voice(self, provider: str, voice_id: str) -> None:
        """404 unless ``voice_id`` is a voice of ``provider`` this account may use (built-in, live or its own)."""
        if provider not in catalog.tts_providers():
            raise NotFoundError("TTS provider", provider)
        self.tts_provider(provider, strict=True)  # 501 when the provider is not configured
        if provider == OFFLINE_TTS:
            return  # eSpeak NG checks its own voice list (and accepts "+variant" suffixes)
        entry = (await self.get_available_voices(provider))[provider]
        if voice_id not in {v.voice_id for v in entry["voices"]}:
            raise NotFoundError("voice", voice_id)

    async def _live_voices(self, name: str) -> list[VoiceInfo]:
        key = (name, self.cache_namespace)
        cached = _VOICE_CACHE.get(key)
        now = time.monotonic()
        if cached and cached.expires > now:
            return cached.voices
        provider = self.tts_provider(name)
        voices = await provider.list_voices()
        # Cloned voices of other accounts may come back on a shared platform key: only show built-ins.
        voices = [v for v in voices if not v.custom]
        _VOICE_CACHE[key] = _CachedVoices(expires=now + self.voice_cache_ttl, voices=voices)
        return voices

    def _account_voices(self, provider: str) -> list[VoiceInfo]:
        if self.session is None or self.account_id is None:
            return []
        return [
            VoiceInfo(voice_id=row.voice_id, name=row.name, provider=row.provider, language=row.language, custom=True)
            for row in self.list_account_voices(provider)
        ]

    def list_account_voices(self, provider: str | None = None) -> list[Voice]:
        session, account_id = self._require_account()
        query = select(Voice).where(Voice.account_id == account_id, Voice.deleted_at.is_(None))
        if provider:
            query = query.where(Voice.provider == provider)
        return list(session.scalars(query.order_by(Voice.created_at, Voice.id)))

    def _require_account(self) -> tuple[Session, str]:
        if self.session is None or self.account_id is None:
            raise NotAvailableError("voice ownership needs a database session and an account")
        return self.session, self.account_id

    async def clone_voice(
        self,
        name: str,
        samples: Sequence[tuple[str, bytes]],
        *,
        provider: str = "elevenlabs",
        description: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Voice:
        """Instant voice cloning: the provider creates the voice; it is recorded as the account's own."""
        session, account_id = self._require_account()
        name = (name or "").strip()
        if not name or len(name) > 200:
            raise ValidationFailedError(
                "name is required", details=[{"field": "name", "code": "invalid", "message": "1-200 characters"}]
            )
        if not samples:
            raise BadRequestError("at least one audio sample is required", code="empty_audio")
        if len(samples) > MAX_CLONE_SAMPLES:
            raise BadRequestError(f"at most {MAX_CLONE_SAMPLES} samples", code="too_many_samples")
        for filename, data in samples:
            if not data:
                raise BadRequestError(f"sample '{filename}' is empty", code="empty_audio")
            if len(data) > MAX_CLONE_SAMPLE_BYTES:
                raise PayloadTooLargeError(f"sample '{filename}' exceeds {MAX_CLONE_SAMPLE_BYTES} bytes")
            _check_sample(filename, data)
        tts = self.tts_providers.get(provider)
        if tts is None or not callable(getattr(tts, "clone_voice", None)):
            raise NotAvailableError(f"voice cloning is not available on '{provider}' (needs a configured API key)")
        info = await tts.clone_voice(name, samples, description=description)  # type: ignore[attr-defined]
        row = Voice(
            id=new_id("voi"),
            account_id=account_id,
            provider=provider,
            voice_id=info.voice_id,
            name=name,
            description=description,
            language=info.language,
            kind="cloned",
            sample_count=len(samples),
            sample_bytes=sum(len(d) for _, d in samples),
            labels=dict(labels or {}),
        )
        session.add(row)
        session.flush()
        return row

    def get_account_voice(self, voice_id: str) -> Voice:
        session, account_id = self._require_account()
        row = session.scalars(
            select(Voice).where(
                Voice.account_id == account_id,
                Voice.deleted_at.is_(None),
                or_(Voice.id == voice_id, Voice.voice_id == voice_id),
            )
        ).first()
        if row is None:
            raise NotFoundError("voice", voice_id)
        return row

    async def delete_voice(self, voice_id: str) -> None:
        """Delete an account's voice at the provider and here. A foreign or unknown id is a 404."""
        row = self.get_account_voice(voice_id)
        tts = self.tts_providers.get(row.provider)
        deleter = getattr(tts, "delete_voice", None)
        if deleter is not None:
            try:
                await deleter(row.voice_id)
            except ProviderError as exc:
                if exc.upstream_status != 404:  # already gone upstream: still forget it here
                    raise
        session, _ = self._require_account()
        session.delete(row)
        session.flush()


def _check_sample(filename: str, data: bytes) -> None:
    kind = sniff_format(data)
    if kind == "unknown":
        raise BadRequestError(
            f"sample '{filename}' is not a recognised audio file (wav, mp3, ogg, flac, webm)", code="invalid_audio"
        )
    if kind == "wav":
        from airies.voice.audio.codecs import read_wav  # numpy: lazily, off the API cold start

        try:
            read_wav(data)
        except AudioFormatError as exc:
            raise BadRequestError(f"sample '{filename}': {exc}", code="invalid_audio") from exc
