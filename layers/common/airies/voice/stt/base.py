"""The speech-to-text interface: one utterance of PCM16 audio in, a transcript with word timings out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds from the start of the utterance
    end: float
    confidence: float | None = None


@dataclass(frozen=True)
class Transcript:
    text: str
    words: tuple[Word, ...] = ()
    confidence: float | None = None
    language: str | None = None
    duration_seconds: float = 0.0  # audio duration billed
    provider: str = ""
    model: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class STTOptions:
    model: str | None = None
    language: str = "en"
    keywords: tuple[str, ...] = ()
    # Phrases the offline engine should expect (it decodes poorly without a domain grammar).
    expected_phrases: tuple[str, ...] = ()
    # A prebuilt domain language model for an engine that takes one (PocketSphinx: a ``DomainModel`` built from the
    # expected phrases when the agent was deployed). Without one the offline engine uses its general model.
    language_model: Any = None


class STTProvider(Protocol):
    name: str

    async def transcribe(self, pcm16: bytes, sample_rate: int, options: STTOptions) -> Transcript: ...
