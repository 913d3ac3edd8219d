"""Audio helpers: codecs (PCM16, μ-law, WAV), resampling, framing, enhancement and VAD."""

from airies.voice.audio.codecs import (
    AudioFormatError,
    StreamResampler,
    array_to_pcm16,
    chunk_frames,
    duration_seconds,
    pcm16_to_array,
    pcm16_to_ulaw,
    read_wav,
    resample_pcm16,
    sniff_format,
    ulaw_to_pcm16,
    write_wav,
)
from airies.voice.audio.enhance import enhance_audio_quality

__all__ = [
    "AudioFormatError",
    "StreamResampler",
    "array_to_pcm16",
    "chunk_frames",
    "duration_seconds",
    "enhance_audio_quality",
    "pcm16_to_array",
    "pcm16_to_ulaw",
    "read_wav",
    "resample_pcm16",
    "sniff_format",
    "ulaw_to_pcm16",
    "write_wav",
]
