"""What the STT doubles "hear": a scripted transcript, a recognizer callback, or silence."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

Recognizer = Callable[[bytes, int], str]


class TranscriptSource:
    def __init__(self, recognizer: Recognizer | None = None, default: str = "") -> None:
        self.recognizer = recognizer
        self.default = default
        self._script: deque[str] = deque()
        self._lock = threading.Lock()

    def script(self, *texts: str) -> None:
        """Queue transcripts returned in order, one per request (before the recognizer is asked)."""
        with self._lock:
            self._script.extend(texts)

    def text_for(self, pcm16: bytes, sample_rate: int) -> str:
        with self._lock:
            if self._script:
                return self._script.popleft()
        if self.recognizer is not None:
            return self.recognizer(pcm16, sample_rate)
        return self.default


def pocketsphinx_recognizer(expected_phrases: tuple[str, ...] = ()) -> Recognizer:
    """A recognizer that really decodes (offline PocketSphinx), for doubles that should 'hear' the audio."""
    import asyncio

    from airies.voice.stt.base import STTOptions
    from airies.voice.stt.pocketsphinx import PocketSphinxSTT

    engine = PocketSphinxSTT()
    model = engine.build_model(expected_phrases)  # the domain model, as a deploy builds it

    def recognize(pcm16: bytes, sample_rate: int) -> str:
        options = STTOptions(expected_phrases=expected_phrases, language_model=model)
        return asyncio.run(engine.transcribe(pcm16, sample_rate, options)).text

    return recognize
