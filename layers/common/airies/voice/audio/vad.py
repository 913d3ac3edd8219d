"""Server-side voice activity detection and end-of-utterance detection (webrtcvad).

``EndOfUtteranceDetector`` is fed PCM16 chunks of any size as they arrive and reports
``speech_start`` once enough voiced audio is seen and ``end_of_utterance`` after ``silence_ms``
of trailing silence, with the utterance's audio (including a short pre-roll) attached.
Turn-taking policy (barge-in, endpointing waits) belongs to the conversation capability.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

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


@dataclass(frozen=True)
class VADEvent:
    kind: Literal["speech_start", "end_of_utterance"]
    at_seconds: float  # stream time of the event
    start_seconds: float  # where the speech began in stream time
    end_seconds: float | None = None  # end of the last voiced frame (end_of_utterance only)
    audio: bytes = b""  # the utterance (end_of_utterance only), PCM16 at the detector's input rate
    duration_seconds: float = 0.0


@dataclass
class EndOfUtteranceDetector:
    sample_rate: int = 16000
    silence_ms: int = 500  # trailing silence that ends an utterance
    min_speech_ms: int = 90  # voiced audio needed before speech counts as started
    aggressiveness: int = 2  # webrtcvad mode 0-3
    frame_ms: int = 30
    pre_roll_ms: int = 300  # audio kept before speech_start so the first phoneme is not cut
    energy_floor_dbfs: float = -55.0  # frames quieter than this are silence whatever webrtcvad says
    max_utterance_ms: int = 30_000  # force an end so one utterance cannot grow without bound

    _vad: object = field(init=False, repr=False)
    _pending: bytearray = field(init=False, repr=False, default_factory=bytearray)
    _utterance: bytearray = field(init=False, repr=False, default_factory=bytearray)
    _history: list[bytes] = field(init=False, repr=False, default_factory=list)
    _frames_seen: int = field(init=False, default=0)
    _voiced_run: int = field(init=False, default=0)
    _silent_run: int = field(init=False, default=0)
    _in_speech: bool = field(init=False, default=False)
    _speech_start_frame: int = field(init=False, default=0)
    _last_voiced_frame: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        import webrtcvad  # lazy: a C extension only the audio path needs

        if self.frame_ms not in (10, 20, 30):
            raise ValueError("frame_ms must be 10, 20 or 30")
        self._vad = webrtcvad.Vad(self.aggressiveness)
        self._frame_len = frame_bytes(self.sample_rate, self.frame_ms)

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def reset(self) -> None:
        self._pending.clear()
        self._utterance.clear()
        self._history.clear()
        self._voiced_run = self._silent_run = 0
        self._in_speech = False

    def feed(self, chunk: bytes) -> list[VADEvent]:
        self._pending += chunk
        n_frames = len(self._pending) // self._frame_len
        if not n_frames:
            return []
        block = bytes(self._pending[: n_frames * self._frame_len])
        del self._pending[: n_frames * self._frame_len]
        flags = voiced_frames(
            block, self.sample_rate, self._vad, frame_ms=self.frame_ms, energy_floor_dbfs=self.energy_floor_dbfs
        )
        events: list[VADEvent] = []
        start_needed = max(1, self.min_speech_ms // self.frame_ms)
        end_needed = max(1, self.silence_ms // self.frame_ms)
        pre_roll = max(0, self.pre_roll_ms // self.frame_ms)
        max_frames = self.max_utterance_ms // self.frame_ms
        for i, voiced in enumerate(flags.tolist()):
            frame = block[i * self._frame_len : (i + 1) * self._frame_len]
            index = self._frames_seen
            self._frames_seen += 1
            if not self._in_speech:
                self._history.append(frame)
                self._voiced_run = self._voiced_run + 1 if voiced else 0
                if self._voiced_run >= start_needed:
                    keep = min(len(self._history), start_needed + pre_roll)
                    self._utterance = bytearray(b"".join(self._history[-keep:]))
                    self._history.clear()
                    self._in_speech = True
                    self._silent_run = 0
                    self._speech_start_frame = index - start_needed + 1
                    self._last_voiced_frame = index
                    events.append(VADEvent("speech_start", self._t(index + 1), self._t(self._speech_start_frame)))
                elif len(self._history) > start_needed + pre_roll:
                    del self._history[0]
                continue
            self._utterance += frame
            self._silent_run = 0 if voiced else self._silent_run + 1
            if voiced:
                self._last_voiced_frame = index
            length = index + 1 - self._speech_start_frame
            if self._silent_run >= end_needed or length >= max_frames:
                audio = bytes(self._utterance)
                events.append(
                    VADEvent(
                        "end_of_utterance",
                        self._t(index + 1),
                        self._t(self._speech_start_frame),
                        end_seconds=self._t(self._last_voiced_frame + 1),
                        audio=audio,
                        duration_seconds=len(audio) / 2 / self.sample_rate,
                    )
                )
                self._utterance = bytearray()
                self._in_speech = False
                self._voiced_run = self._silent_run = 0
        return events

    def flush(self) -> list[VADEvent]:
        """End of stream: close an open utterance."""
        if not self._in_speech:
            return []
        audio = bytes(self._utterance)
        self._in_speech = False
        self._utterance = bytearray()
        return [
            VADEvent(
                "end_of_utterance",
                self._t(self._frames_seen),
                self._t(self._speech_start_frame),
                end_seconds=self._t(self._last_voiced_frame + 1),
                audio=audio,
                duration_seconds=len(audio) / 2 / self.sample_rate,
            )
        ]

    def _t(self, frames: int) -> float:
        return frames * self.frame_ms / 1000


def speech_segments(pcm16: bytes, sample_rate: int, **kwargs: object) -> list[tuple[float, float]]:
    """Offline helper: (start, end) seconds of each utterance in a whole recording."""
    detector = EndOfUtteranceDetector(sample_rate=sample_rate, **kwargs)  # type: ignore[arg-type]
    events = detector.feed(pcm16) + detector.flush()
    return [(e.start_seconds, e.end_seconds or e.at_seconds) for e in events if e.kind == "end_of_utterance"]
