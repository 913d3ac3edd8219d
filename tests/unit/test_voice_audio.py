"""The audio module: μ-law, resampling, WAV, framing and voice activity on generated signals."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import webrtcvad

from airies.voice.audio import codecs
from airies.voice.audio.vad import voiced_frames


def sine(freq: float, rate: int, seconds: float, amplitude: float = 12000.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[np.argmax(spectrum)])


def test_ulaw_round_trip_error_is_within_g711_bounds():
    samples = np.arange(-32768, 32768, 7, dtype=np.int32).astype(np.int16)
    back = codecs.pcm16_to_array(codecs.ulaw_to_pcm16(codecs.pcm16_to_ulaw(samples.tobytes()))).astype(np.int32)
    error = np.abs(back - samples.astype(np.int32))
    # G.711 quantisation step doubles per segment: the error is at most half a step of the sample's segment.
    magnitude = np.minimum(np.abs(samples.astype(np.int32)), 32635)
    bound = np.maximum(8, 2 ** (np.floor(np.log2(magnitude + 132)) - 4))
    assert np.all(error <= bound + 1)
    assert codecs.pcm16_to_ulaw(np.zeros(4, np.int16).tobytes()) == b"\xff" * 4  # silence encodes as 0xFF


def test_ulaw_matches_reference_values():
    # Known G.711 codes: 0 -> 0xFF, max positive -> 0x80, max negative -> 0x00.
    pcm = np.array([0, 32767, -32768, 1000, -1000], dtype=np.int16).tobytes()
    assert list(codecs.pcm16_to_ulaw(pcm)[:3]) == [0xFF, 0x80, 0x00]
    decoded = codecs.pcm16_to_array(codecs.ulaw_to_pcm16(bytes([0xFF, 0x7F, 0x80, 0x00])))
    assert list(decoded) == [0, 0, 32124, -32124]


@pytest.mark.parametrize(
    ("src", "dst"),
    [(8000, 16000), (16000, 8000), (16000, 24000), (24000, 16000), (16000, 48000), (48000, 8000), (22050, 16000)],
)
def test_resampling_preserves_a_sines_frequency(src, dst):
    tone = sine(440.0, src, 1.0)
    out = codecs.pcm16_to_array(codecs.resample_pcm16(tone.tobytes(), src, dst))
    assert abs(out.size - dst) <= 2
    assert dominant_frequency(out, dst) == pytest.approx(440.0, abs=2.0)
    # Level survives (away from the filter edges).
    middle = out[dst // 10 : -dst // 10].astype(np.float64)
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(12000 / np.sqrt(2), rel=0.05)


def test_downsampling_removes_content_above_the_new_nyquist():
    tone = sine(6000.0, 16000, 1.0)  # above 4 kHz: must not alias into the 8 kHz output
    out = codecs.pcm16_to_array(codecs.resample_pcm16(tone.tobytes(), 16000, 8000)).astype(np.float64)
    assert np.sqrt(np.mean(out[800:-800] ** 2)) < 0.05 * 12000


def test_resample_rejects_unsupported_rates():
    with pytest.raises(codecs.AudioFormatError):
        codecs.resample_pcm16(b"\x00\x00" * 10, 11025, 16000)


def test_wav_round_trip_and_bad_input():
    pcm = sine(300, 16000, 0.25).tobytes()
    wav = codecs.write_wav(pcm, 16000)
    assert codecs.read_wav(wav) == (pcm, 16000)
    with pytest.raises(codecs.AudioFormatError, match="truncated"):
        codecs.read_wav(wav[:-100])
    with pytest.raises(codecs.AudioFormatError, match="not a WAV"):
        codecs.read_wav(b"ID3" + b"\x00" * 100)
    with pytest.raises(codecs.AudioFormatError):
        codecs.read_wav(b"")
    # Stereo is averaged to mono.
    stereo = np.stack([sine(300, 8000, 0.1), np.zeros(800, np.int16)], axis=1).reshape(-1)
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as handle:
        handle.setnchannels(2)
        handle.setsampwidth(2)
        handle.setframerate(8000)
        handle.writeframes(stereo.tobytes())
    mono, rate = codecs.read_wav(buf.getvalue())
    assert rate == 8000 and len(mono) == 1600


def test_frames_duration_and_sniffing():
    pcm = b"\x01\x00" * 16500  # 1.03125 s at 16 kHz
    frames = list(codecs.chunk_frames(pcm, 16000, 20))
    assert len(frames) == 51 and all(len(f) == 640 for f in frames)
    padded = list(codecs.chunk_frames(pcm, 16000, 20, pad=True))
    assert len(padded) == 52 and len(padded[-1]) == 640
    assert codecs.duration_seconds(pcm, 16000) == pytest.approx(1.03125)
    assert codecs.sniff_format(codecs.write_wav(pcm, 16000)) == "wav"
    assert codecs.sniff_format(b"ID3\x03rest") == "mp3"
    assert codecs.sniff_format(b"hello") == "unknown"


def _speech_and_silence(rate: int) -> tuple[bytes, tuple[float, float]]:
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is required (run `make` to install it)")
    wav = subprocess.run(
        ["espeak-ng", "--stdout", "--stdin"],
        input=b"Hello, I would like to book a table.",
        capture_output=True,
        check=True,
    ).stdout
    pcm, src = codecs.read_wav(wav)
    speech = codecs.pcm16_to_array(codecs.resample_pcm16(pcm, src, rate))
    nonzero = np.flatnonzero(np.abs(speech) > 200)
    speech = speech[nonzero[0] : nonzero[-1]]  # trim eSpeak's own leading/trailing silence
    silence = np.zeros(rate, np.int16)
    audio = np.concatenate([silence, speech, silence, silence])
    return audio.tobytes(), (1.0, 1.0 + speech.size / rate)


def _voiced_seconds(audio: bytes, rate: int) -> np.ndarray:
    """Start times of the 30 ms frames ``voiced_frames`` calls speech."""
    frame = codecs.frame_bytes(rate, 30)
    flags = voiced_frames(audio[: len(audio) // frame * frame], rate, webrtcvad.Vad(2))
    return np.flatnonzero(flags) * 0.03


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
def test_voiced_frames_find_the_speech(rate):
    audio, (start, end) = _speech_and_silence(rate)
    voiced = _voiced_seconds(audio, rate)
    assert voiced.size and voiced[0] == pytest.approx(start, abs=0.15)
    assert voiced[-1] == pytest.approx(end, abs=0.2)


def test_silence_and_noise_are_never_voiced():
    rate = 16000
    rng = np.random.default_rng(7)
    noise = rng.normal(0, 20, rate * 2).astype(np.int16).tobytes()  # about -64 dBFS hiss
    assert _voiced_seconds(b"\x00\x00" * rate + noise, rate).size == 0


@pytest.mark.parametrize(("src", "dst", "chunk_ms"), [(8000, 16000, 200), (16000, 8000, 250), (16000, 8000, 200)])
def test_stream_resampling_in_chunks_equals_the_whole_stream_delayed(src: int, dst: int, chunk_ms: int) -> None:
    rng = np.random.default_rng(3)
    t = np.arange(2 * src) / src
    signal = codecs.array_to_pcm16(8000 * np.sin(2 * np.pi * 440 * t) + 500 * rng.standard_normal(t.size))
    whole = codecs.pcm16_to_array(codecs.resample_pcm16(signal, src, dst)).astype(np.int32)
    size = src * chunk_ms // 1000 * 2
    stream = codecs.StreamResampler(src, dst)
    chunks = [stream.feed(signal[i : i + size]) for i in range(0, len(signal), size)]
    assert all(len(c) == size * dst // src for c in chunks)  # each chunk's own length, no sample lost or added
    out = codecs.pcm16_to_array(b"".join([*chunks, stream.flush()])).astype(np.int32)
    delay = codecs.StreamResampler.HISTORY * dst // src
    assert np.array_equal(out[delay : delay + whole.size], whole)  # no click at any chunk's edge
    naive = codecs.pcm16_to_array(
        b"".join(codecs.resample_pcm16(signal[i : i + size], src, dst) for i in range(0, len(signal), size))
    ).astype(np.int32)
    assert np.abs(naive - whole).max() > 100  # what chunk-by-chunk resampling does at the edges
