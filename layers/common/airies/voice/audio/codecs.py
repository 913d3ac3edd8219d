"""PCM16 / μ-law / WAV conversions, resampling and framing, vectorised with numpy (numpy-free parts: ``formats``).

Audio everywhere in the platform is little-endian signed 16-bit mono PCM ("PCM16") unless a name says
otherwise; telephony is G.711 μ-law at 8 kHz.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from fractions import Fraction
from functools import cache

import numpy as np

# Re-exported: the numpy-free part of the audio helpers (``formats``), so ``codecs`` stays the one import for audio.
from airies.voice.audio.formats import SUPPORTED_RATES as SUPPORTED_RATES
from airies.voice.audio.formats import AudioFormatError as AudioFormatError
from airies.voice.audio.formats import duration_seconds as duration_seconds
from airies.voice.audio.formats import frame_bytes as frame_bytes
from airies.voice.audio.formats import sniff_format as sniff_format
from airies.voice.audio.formats import write_wav as write_wav

# ---------------------------------------------------------------- PCM16 <-> numpy


def pcm16_to_array(pcm16: bytes) -> np.ndarray:
    if len(pcm16) % 2:
        raise AudioFormatError("PCM16 audio must have an even number of bytes (truncated sample)")
    return np.frombuffer(pcm16, dtype="<i2")


def array_to_pcm16(samples: np.ndarray) -> bytes:
    if samples.dtype != np.int16:
        samples = np.clip(np.rint(samples), -32768, 32767).astype("<i2")
    return samples.astype("<i2", copy=False).tobytes()


# ---------------------------------------------------------------- G.711 μ-law

_BIAS = 0x84
_CLIP = 32635


@cache
def _ulaw_decode_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = ((mantissa << 3) + _BIAS) << exponent
    values = np.where(sign != 0, _BIAS - magnitude, magnitude - _BIAS)
    return values.astype(np.int16)


@cache
def _ulaw_encode_table() -> np.ndarray:
    # One entry per possible int16 sample (indexed by its uint16 bit pattern): encoding is one gather.
    samples = np.arange(65536, dtype=np.int32).astype(np.uint16).view(np.int16).astype(np.int32)
    sign = np.where(samples < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(samples), _CLIP) + _BIAS
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    exponent = np.clip(exponent, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


def pcm16_to_ulaw(pcm16: bytes) -> bytes:
    samples = pcm16_to_array(pcm16)
    return _ulaw_encode_table()[samples.view(np.uint16)].tobytes()


def ulaw_to_pcm16(ulaw: bytes) -> bytes:
    codes = np.frombuffer(ulaw, dtype=np.uint8)
    return _ulaw_decode_table()[codes].astype("<i2", copy=False).tobytes()


# ---------------------------------------------------------------- resampling


@cache
def _lowpass(cutoff: float, taps: int) -> np.ndarray:
    """Windowed-sinc low-pass FIR; ``cutoff`` is a fraction of the sampling rate (0 < cutoff < 0.5)."""
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.blackman(taps)
    return (h / h.sum()).astype(np.float32)


def resample_array(samples: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited resampling of float or int samples; returns float32."""
    x = samples.astype(np.float32, copy=False)
    if src_rate == dst_rate or x.size == 0:
        return x
    ratio = Fraction(dst_rate, src_rate)
    up, down = ratio.numerator, ratio.denominator
    if up <= 8:
        # Rational ratios with a small numerator (8k<->16k<->24k<->48k): zero-stuff by `up`, one FIR at the
        # lower Nyquist, keep every `down`-th sample. (A polyphase version measured no faster with np.convolve.)
        if up > 1:
            stuffed = np.zeros(x.size * up, dtype=np.float32)
            stuffed[::up] = x
            x = stuffed
        h = _lowpass(0.5 / max(up, down) * 0.92, 24 * max(up, down) + 1) * up
        y = np.convolve(x, h, mode="same")
        return y[::down] if down > 1 else y
    # Awkward ratios (22.05 kHz eSpeak output -> 16 kHz): low-pass at the lower Nyquist, then interpolate.
    if dst_rate < src_rate:
        x = np.convolve(x, _lowpass(0.5 * dst_rate / src_rate * 0.92, 63), mode="same")
    n_out = round(x.size * dst_rate / src_rate)
    positions = np.arange(n_out, dtype=np.float64) * (src_rate / dst_rate)
    return np.interp(positions, np.arange(x.size), x).astype(np.float32)


def resample_pcm16(pcm16: bytes, src_rate: int, dst_rate: int) -> bytes:
    if src_rate == dst_rate:
        return pcm16
    for rate in (src_rate, dst_rate):
        if rate not in SUPPORTED_RATES:
            raise AudioFormatError(f"unsupported sample rate {rate} Hz (supported: {SUPPORTED_RATES})")
    return array_to_pcm16(resample_array(pcm16_to_array(pcm16), src_rate, dst_rate))


class StreamResampler:
    """``resample_pcm16`` for a stream cut into chunks, without a click at every chunk's edges.

    Each chunk alone would be filtered as if silence surrounded it. Here each chunk is filtered with the samples
    around it (``HISTORY`` input samples of the previous chunks before it, and its own last ``HISTORY`` samples held
    back until the next chunk arrives), so the output equals the whole stream's, delayed by ``HISTORY`` input samples
    (4 ms at 8 kHz, 2 ms at 16 kHz). For the small-ratio rates (8/16/24/48 kHz); others resample chunk by chunk.
    """

    HISTORY = 32  # input samples: at least half the FIR's length, in input samples, for every small ratio

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        for rate in (src_rate, dst_rate):
            if rate not in SUPPORTED_RATES:
                raise AudioFormatError(f"unsupported sample rate {rate} Hz (supported: {SUPPORTED_RATES})")
        self.src_rate, self.dst_rate = src_rate, dst_rate
        ratio = Fraction(dst_rate, src_rate)
        self._down = ratio.denominator
        self._streams = src_rate != dst_rate and ratio.numerator <= 8 and self.HISTORY % ratio.denominator == 0
        self._buffer = np.zeros(2 * self.HISTORY, dtype=np.float32)  # history, then the samples held back

    def feed(self, pcm16: bytes) -> bytes:
        if not self._streams:
            return resample_pcm16(pcm16, self.src_rate, self.dst_rate)
        x = np.concatenate([self._buffer, pcm16_to_array(pcm16).astype(np.float32)])
        usable = (x.size - 2 * self.HISTORY) // self._down * self._down  # whole output samples only
        end = self.HISTORY + usable
        y = resample_array(x[: end + self.HISTORY], self.src_rate, self.dst_rate)
        scale = y.size / (end + self.HISTORY)
        self._buffer = x[end - self.HISTORY :]
        return array_to_pcm16(y[round(self.HISTORY * scale) : round(end * scale)])

    def flush(self) -> bytes:
        """The end of the stream: the samples held back (followed by a little silence)."""
        return self.feed(bytes(4 * self.HISTORY)) if self._streams else b""


# ---------------------------------------------------------------- framing


def chunk_frames(pcm16: bytes, sample_rate: int, frame_ms: int = 20, *, pad: bool = False) -> Iterator[bytes]:
    """Split PCM16 into ``frame_ms`` frames; the short tail is dropped unless ``pad`` zero-fills it."""
    size = frame_bytes(sample_rate, frame_ms)
    view = memoryview(pcm16)
    full = len(pcm16) // size * size
    for offset in range(0, full, size):
        yield bytes(view[offset : offset + size])
    if pad and full < len(pcm16):
        yield bytes(view[full:]) + b"\x00" * (size - (len(pcm16) - full))


# ---------------------------------------------------------------- WAV


STREAMING_SIZE = 0x7FFF0000  # writers that stream (espeak-ng --stdout) put a placeholder size here


def read_wav(data: bytes) -> tuple[bytes, int]:
    """Return (mono PCM16, sample rate) of a WAV file.

    Accepts 16-bit PCM (stereo is averaged), 8-bit PCM and G.711 μ-law; a streaming placeholder
    data size means "to the end of the file"; anything else is an ``AudioFormatError``.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioFormatError("not a WAV file (missing RIFF/WAVE header)")
    fmt: tuple[int, int, int, int] | None = None
    payload: bytes | None = None
    offset = 12
    while offset + 8 <= len(data):
        chunk_id = data[offset : offset + 4]
        size = struct.unpack("<I", data[offset + 4 : offset + 8])[0]
        body_start = offset + 8
        if chunk_id == b"fmt ":
            if size < 16 or body_start + 16 > len(data):
                raise AudioFormatError("WAV fmt chunk is truncated")
            tag, channels, rate, _byte_rate, _align, bits = struct.unpack("<HHIIHH", data[body_start : body_start + 16])
            if tag == 0xFFFE and size >= 26:  # WAVE_FORMAT_EXTENSIBLE: the real tag opens the sub-format GUID
                tag = struct.unpack("<H", data[body_start + 24 : body_start + 26])[0]
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            if size >= STREAMING_SIZE:
                payload = data[body_start:]
            else:
                if body_start + size > len(data):
                    raise AudioFormatError("WAV file is truncated: fewer samples than its header declares")
                payload = data[body_start : body_start + size]
            break
        offset = body_start + size + (size & 1)
    if fmt is None:
        raise AudioFormatError("WAV file has no fmt chunk")
    if payload is None:
        raise AudioFormatError("WAV file has no data chunk (truncated?)")
    tag, channels, rate, bits = fmt
    if channels < 1 or rate <= 0:
        raise AudioFormatError("WAV header declares no channels or no sample rate")
    if tag == 1 and bits == 16:
        samples = np.frombuffer(payload[: len(payload) // (2 * channels) * 2 * channels], dtype="<i2")
    elif tag == 1 and bits == 8:
        samples = ((np.frombuffer(payload, dtype=np.uint8).astype(np.int16) - 128) << 8).astype("<i2")
    elif tag == 7 and bits == 8:
        samples = np.frombuffer(ulaw_to_pcm16(payload), dtype="<i2")
    else:
        raise AudioFormatError(f"unsupported WAV encoding (format tag {tag}, {bits}-bit); send 16-bit PCM or μ-law")
    if channels > 1:
        samples = samples[: samples.size // channels * channels].reshape(-1, channels).astype(np.int32).mean(axis=1)
    if samples.size == 0:
        raise AudioFormatError("WAV file holds no audio")
    return array_to_pcm16(samples), rate
