"""Offline text-to-speech with the eSpeak NG binary (``espeak-ng --stdout``: 22.05 kHz PCM16 WAV).

Each sentence is one subprocess (about 10 ms); its audio is resampled to the requested rate and
streamed in 100 ms chunks, so the first chunk leaves after the first sentence is spoken.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator

from airies.core.errors import NotAvailableError, ProviderError, ValidationFailedError
from airies.core.text import split_sentences
from airies.voice.audio.formats import AudioFormatError, frame_bytes
from airies.voice.tts.base import TTSOptions, VoiceInfo, parse_output_format

DEFAULT_WPM = 175
CHUNK_MS = 100


def _sentences(text: str) -> list[str]:
    return split_sentences(text) or [text]


class EspeakTTS:
    name = "espeak"

    def __init__(self, binary: str = "espeak-ng", *, timeout: float = 20.0) -> None:
        path = shutil.which(binary)
        if path is None:
            raise NotAvailableError(
                f"offline text-to-speech needs '{binary}' on PATH (Debian: apt-get install espeak-ng; `make` does it)"
            )
        self.binary = path
        self.timeout = timeout
        self._voices: list[VoiceInfo] | None = None

    async def _run(self, *args: str, stdin: bytes | None = None) -> bytes:
        process = await asyncio.create_subprocess_exec(
            self.binary,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(stdin), self.timeout)
        except TimeoutError as exc:
            process.kill()
            raise ProviderError("espeak-ng timed out", provider=self.name, retryable=True) from exc
        if process.returncode != 0:
            raise ProviderError(
                f"espeak-ng failed with exit code {process.returncode}",
                provider=self.name,
                details=err.decode(errors="replace")[-500:],
            )
        return out

    async def speak_pcm(self, text: str, voice: str, speed: float = 1.0) -> tuple[bytes, int]:
        """One piece of text -> (PCM16, 22050)."""
        wpm = max(80, min(450, round(DEFAULT_WPM * speed)))
        wav = await self._run("--stdout", "-v", voice, "-s", str(wpm), "--stdin", stdin=text.encode())
        # numpy on first speech, not on import: the vendor table (API cold start, layers without numpy) loads this
        from airies.voice.audio import codecs

        try:
            return codecs.read_wav(wav)
        except AudioFormatError as exc:
            raise ProviderError("espeak-ng produced no audio", provider=self.name, details=str(exc)) from exc

    async def synthesize(self, text: str, options: TTSOptions) -> AsyncIterator[bytes]:
        codec, rate = parse_output_format(options.output_format)
        if codec == "mp3":
            raise NotAvailableError("eSpeak NG produces PCM/μ-law only; ask for pcm_16000 or ulaw_8000")
        await self._check_voice(options.voice_id)
        from airies.voice.audio.codecs import chunk_frames, pcm16_to_ulaw, resample_pcm16  # numpy: see speak_pcm

        for sentence in _sentences(text):
            pcm, src_rate = await self.speak_pcm(sentence, options.voice_id, options.speed)
            pcm = resample_pcm16(pcm, src_rate, rate)
            for chunk in chunk_frames(pcm, rate, CHUNK_MS, pad=False):
                yield pcm16_to_ulaw(chunk) if codec == "ulaw" else chunk
            tail = len(pcm) % frame_bytes(rate, CHUNK_MS)
            if tail:
                yield pcm16_to_ulaw(pcm[-tail:]) if codec == "ulaw" else pcm[-tail:]

    async def _check_voice(self, voice_id: str) -> None:
        voices = {v.voice_id for v in await self.list_voices()}
        if voice_id.split("+", 1)[0] not in voices:  # "en-us+f3" = voice + variant
            raise ValidationFailedError(
                f"unknown eSpeak NG voice '{voice_id}'",
                details=[{"field": "voice_id", "code": "unknown_voice", "message": f"voice '{voice_id}' not found"}],
            )

    async def list_voices(self) -> list[VoiceInfo]:
        if self._voices is None:
            out = (await self._run("--voices")).decode(errors="replace")
            voices = []
            for line in out.splitlines()[1:]:
                # Pty Language       Age/Gender VoiceName          File                 Other Languages
                parts = line.split()
                if len(parts) >= 5:
                    voices.append(
                        VoiceInfo(
                            voice_id=parts[1], name=parts[3].replace("_", " "), provider=self.name, language=parts[1]
                        )
                    )
            self._voices = voices
        return self._voices
