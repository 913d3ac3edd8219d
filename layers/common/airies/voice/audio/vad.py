"""Server-side voice activity (webrtcvad behind a numpy energy gate): which frames of a block are speech.

Turn-taking policy (endpointing, barge-in) belongs to the conversation capability, which keeps the per-chunk state.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from airies.voice.audio.codecs import frame_bytes, pcm16_to_array, resample_pcm16

VAD_RATES = (8000, 16000, 32000, 48000)


def voiced_frames(
    block: bytes, sample_rate: int, vad: Any, *, frame_ms: int = 30, energy_floor_dbfs: float = -55.0
) -> np.ndarray:
    """Voiced/unvoiced per frame for a block of whole frames: energy gate in numpy, then ``vad`` (a
    ``webrtcvad.Vad``) on the loud frames only. webrtcvad accepts only 8/16/32/48 kHz; other rates are analysed
    at 16 kHz."""
    samples = pcm16_to_array(block).astype(np.float32).reshape(-1, frame_bytes(sample_rate, frame_ms) // 2)
    rms = np.sqrt(np.mean(np.square(samples), axis=1))
    loud = rms >= 32768 * 10 ** (energy_floor_dbfs / 20)
    vad_rate = sample_rate if sample_rate in VAD_RATES else 16000
    analysed = block if vad_rate == sample_rate else resample_pcm16(block, sample_rate, 16000)
    size = frame_bytes(vad_rate, frame_ms)
    flags = np.zeros(len(loud), dtype=bool)
    for i in np.flatnonzero(loud):  # webrtcvad is one C call per frame; quiet frames skip it
        flags[i] = vad.is_speech(analysed[i * size : (i + 1) * size], vad_rate)
    return flags
