"""The text-to-speech interface: text in, a stream of PCM16 (or μ-law/mp3) audio chunks out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from airies.core.errors import ValidationFailedError

OUTPUT_FORMATS = (
    "pcm_8000",
    "pcm_16000",
    "pcm_22050",
    "pcm_24000",
    "pcm_44100",
    "pcm_48000",
    "ulaw_8000",
    "mp3_44100_128",
)


def parse_output_format(output_format: str) -> tuple[str, int]:
    """'pcm_16000' -> ('pcm', 16000); 'ulaw_8000' -> ('ulaw', 8000); 'mp3_44100_128' -> ('mp3', 44100)."""
    if output_format not in OUTPUT_FORMATS:
        raise ValidationFailedError(
            f"unsupported output_format '{output_format}'",
            details=[
                {"field": "output_format", "code": "unsupported", "message": f"one of {', '.join(OUTPUT_FORMATS)}"}
            ],
        )
    codec, rate, *_ = output_format.split("_")
    return codec, int(rate)


@dataclass(frozen=True)
class TTSOptions:
    voice_id: str
    model: str | None = None
    output_format: str = "pcm_16000"  # pcm_16000 | ulaw_8000 | mp3_44100_128
    speed: float = 1.0
    stability: float = 0.5
    similarity_boost: float = 0.75
    style: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VoiceInfo:
    voice_id: str
    name: str
    provider: str
    language: str | None = None
    custom: bool = False
    preview_url: str | None = None


class TTSProvider(Protocol):
    name: str

    def synthesize(self, text: str, options: TTSOptions) -> AsyncIterator[bytes]:
        """Yield audio chunks in ``options.output_format`` as they arrive."""
        ...

    async def list_voices(self) -> list[VoiceInfo]: ...
