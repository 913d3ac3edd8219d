"""Audio facts that need no numpy: supported rates, durations, framing sizes, writing WAV and sniffing containers.

The API path (routes, vendor clients) imports these; the numpy conversions live in ``codecs``.
"""

from __future__ import annotations

import io
import wave

SUPPORTED_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)


class AudioFormatError(ValueError):
    """The bytes are not the audio they claim to be (empty, truncated, wrong container or sample format)."""


def duration_seconds(pcm16: bytes | int, sample_rate: int) -> float:
    n_bytes = pcm16 if isinstance(pcm16, int) else len(pcm16)
    return n_bytes / 2 / sample_rate


def frame_bytes(sample_rate: int, frame_ms: int) -> int:
    return sample_rate * frame_ms // 1000 * 2


def write_wav(pcm16: bytes, sample_rate: int, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm16)
    return buf.getvalue()


def sniff_format(data: bytes) -> str:
    """Best-effort container detection for uploads: 'wav', 'mp3', 'ogg', 'flac', 'webm' or 'unknown'."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and (data[1] & 0xE0) == 0xE0):
        return "mp3"
    if data[:4] == b"OggS":
        return "ogg"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    return "unknown"
