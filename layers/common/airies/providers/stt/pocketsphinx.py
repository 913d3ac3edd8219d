"""Offline speech-to-text with PocketSphinx (the pip package ships the en-us acoustic model).

The general language model decodes synthetic (eSpeak NG) speech poorly, so when the caller gives
expected phrases (the agent's prompt, first message, end-call phrases, keywords) a small trigram
language model is built from them (``pocketsphinx.lm.ArpaBoLM``) and used for the utterance; the
general model is used only when nothing is provided. Measured word error rates are in the README.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from airies.audio.codecs import duration_seconds, resample_pcm16
from airies.errors import NotAvailableError
from airies.providers.stt.base import STTOptions, Transcript, Word

DECODER_RATE = 16000
FRAME_RATE = 100  # PocketSphinx frames per second
MAX_DOMAIN_MODELS = 16
PAD_SECONDS = 0.3
PAD = b"\x00\x00" * int(DECODER_RATE * PAD_SECONDS)
_FILLERS = {"<s>", "</s>", "<sil>", "[NOISE]", "[SPEECH]", "[BREATH]", "[COUGH]", "[UM]", "[UH]"}
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?")

_NUMBERS = {
    "0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five",
    "6": "six", "7": "seven", "8": "eight", "9": "nine",
}  # fmt: skip


def normalise_words(text: str) -> list[str]:
    """Lower-case words as the dictionary spells them; single digits become words."""
    text = re.sub(r"\d", lambda m: f" {_NUMBERS[m.group(0)]} ", text.lower().replace("’", "'"))
    return _TOKEN.findall(text)


def domain_corpus(phrases: Sequence[str]) -> list[str]:
    """One normalised sentence per line from free text (prompts hold several sentences per phrase)."""
    lines: list[str] = []
    for phrase in phrases:
        for sentence in re.split(r"[.!?;:\n]+", phrase):
            words = normalise_words(sentence)
            if words:
                lines.append(" ".join(words))
    return lines


def _posterior(probability: float) -> float | None:
    """The Python API already reports linear posteriors (0..1]; 0 means "not computed", not a confidence."""
    if not probability or probability <= 0:
        return None
    return round(min(1.0, float(probability)), 4)


class PocketSphinxSTT:
    """One decoder per container (loading takes ~0.2-0.3 s); utterances are decoded one at a time."""

    name = "pocketsphinx"

    def __init__(self, *, discount_mass: float = 0.5) -> None:
        try:
            import pocketsphinx
        except ImportError as exc:  # the Lambda layer does not ship it: a cloud STT key is needed there
            raise NotAvailableError("offline speech-to-text (pocketsphinx) is not installed") from exc
        self._ps = pocketsphinx
        self._lock = threading.Lock()
        self._decoder: Any = None
        self._models: OrderedDict[str, str] = OrderedDict()  # corpus digest -> search name
        self.discount_mass = discount_mass

    def _get_decoder(self) -> Any:
        if self._decoder is None:
            self._ps.set_loglevel("ERROR")
            self._decoder = self._ps.Decoder(samprate=DECODER_RATE)
        return self._decoder

    def _search_for(self, lines: list[str]) -> str | None:
        """Name of a search using a domain LM for these lines (built once, kept in a small LRU)."""
        decoder = self._get_decoder()
        known = [line for line in lines if any(decoder.lookup_word(w) for w in line.split())]
        if not known:
            return None
        corpus = "\n".join(sorted(set(known)))
        digest = hashlib.sha1(corpus.encode()).hexdigest()[:16]
        name = f"domain_{digest}"
        if digest in self._models:
            self._models.move_to_end(digest)
            return name
        from pocketsphinx.lm import ArpaBoLM

        model = ArpaBoLM(text=corpus, add_start=True, discount_mass=self.discount_mass)
        model.compute()
        fd, path = tempfile.mkstemp(suffix=".arpa")
        try:
            with os.fdopen(fd, "w") as handle:
                model.write(handle)
            ngram = self._ps.NGramModel(decoder.config, decoder.get_logmath(), path)
        finally:
            os.unlink(path)
        decoder.add_lm(name, ngram)
        self._models[digest] = name
        while len(self._models) > MAX_DOMAIN_MODELS:
            _, old = self._models.popitem(last=False)
            decoder.remove_search(old)
        return name

    def _decode(self, pcm16: bytes, options: STTOptions) -> tuple[str, list[Word], float | None, str]:
        with self._lock:
            decoder = self._get_decoder()
            lines = domain_corpus([*options.expected_phrases, *options.keywords])
            search = self._search_for(lines) if lines else None
            decoder.activate_search(search or "_default")
            decoder.start_utt()
            # Silence around the utterance lets the decoder settle before the first word and close the last
            # one (measured: WER 0.185 -> 0.169 on eSpeak speech); word times are shifted back below.
            decoder.process_raw(PAD + pcm16 + PAD, full_utt=True)
            decoder.end_utt()
            hyp = decoder.hyp()
            words: list[Word] = []
            for seg in decoder.seg():
                token = seg.word
                if token in _FILLERS or token.startswith("["):
                    continue
                token = re.sub(r"\(\d+\)$", "", token)  # alternate pronunciations: "the(2)"
                words.append(
                    Word(
                        word=token,
                        start=round(max(0.0, seg.start_frame / FRAME_RATE - PAD_SECONDS), 3),
                        end=round(max(0.0, (seg.end_frame + 1) / FRAME_RATE - PAD_SECONDS), 3),
                        confidence=_posterior(seg.prob),
                    )
                )
            duration = len(pcm16) / 2 / DECODER_RATE
            words = [replace(w, start=min(w.start, duration), end=min(w.end, duration)) for w in words]
            confidence = _posterior(hyp.prob) if hyp is not None else None
            return " ".join(w.word for w in words), words, confidence, "domain_lm" if search else "general_lm"

    async def transcribe(self, pcm16: bytes, sample_rate: int, options: STTOptions) -> Transcript:
        if not options.language.lower().startswith("en"):
            raise NotAvailableError(f"the offline recogniser only knows English (asked for '{options.language}')")
        audio = resample_pcm16(pcm16, sample_rate, DECODER_RATE) if sample_rate != DECODER_RATE else pcm16
        text, words, confidence, mode = await asyncio.to_thread(self._decode, audio, options)
        return Transcript(
            text=text,
            words=tuple(words),
            confidence=confidence,
            language="en",
            duration_seconds=duration_seconds(pcm16, sample_rate),
            provider=self.name,
            model="en-us",
            metadata={"language_model": mode},
        )
