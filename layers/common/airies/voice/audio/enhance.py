"""Light clean-up for caller audio before STT: DC removal, loudness normalisation, a simple noise gate."""

from __future__ import annotations

import numpy as np

from airies.voice.audio.codecs import array_to_pcm16, pcm16_to_array

TARGET_RMS_DBFS = -20.0
MAX_GAIN_DB = 20.0  # never amplify a near-silent recording into loud noise
PEAK_LIMIT = 0.98 * 32767


def rms_dbfs(samples: np.ndarray) -> float:
    if samples.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(samples.astype(np.float64)))))
    return 20 * np.log10(rms / 32768) if rms > 0 else float("-inf")


def enhance_audio_quality(
    pcm16: bytes,
    sample_rate: int,
    *,
    target_dbfs: float = TARGET_RMS_DBFS,
    gate_dbfs: float = -50.0,
    gate_frame_ms: int = 10,
) -> bytes:
    """DC removal, gate frames quieter than ``gate_dbfs``, then normalise speech RMS to ``target_dbfs``."""
    samples = pcm16_to_array(pcm16).astype(np.float32)
    if samples.size == 0:
        return b""
    samples -= samples.mean()

    # Noise gate per frame (vectorised over a [frames, frame_len] view), with the short tail gated as one frame.
    frame = max(1, sample_rate * gate_frame_ms // 1000)
    n_full = samples.size // frame * frame
    frames = samples[:n_full].reshape(-1, frame) if n_full else np.empty((0, frame), np.float32)
    frame_rms = np.sqrt(np.mean(np.square(frames), axis=1)) if n_full else np.empty(0, np.float32)
    threshold = 32768 * 10 ** (gate_dbfs / 20)
    keep = frame_rms >= threshold
    if n_full:
        frames *= keep[:, None]
    if n_full < samples.size:
        tail = samples[n_full:]
        if np.sqrt(np.mean(np.square(tail))) < threshold:
            tail[:] = 0

    # Loudness normalisation measured on the frames that passed the gate, capped by gain and peak.
    voiced = frames[keep] if n_full else samples
    level = rms_dbfs(voiced) if voiced.size else float("-inf")
    if np.isfinite(level):
        gain_db = min(target_dbfs - level, MAX_GAIN_DB)
        gain = 10 ** (gain_db / 20)
        peak = float(np.max(np.abs(samples))) or 1.0
        gain = min(gain, PEAK_LIMIT / peak)
        samples *= gain
    return array_to_pcm16(samples)
