"""Offline speech-to-text with PocketSphinx (the pip package ships the en-us acoustic model).

The general language model decodes synthetic (eSpeak NG) speech poorly, so the phrases the caller is expected to say
(the agent's prompt, first message, end-call phrases, keywords) become a small domain model: a trigram language
model (``pocketsphinx.lm.ArpaBoLM``) plus the pronunciations of its words. The domain model gets a decoder of its
own: adding a language model to a decoder that holds the full 130,000-word dictionary takes 6-14 s, a decoder with
just the domain's words loads in 10-20 ms. :meth:`PocketSphinxSTT.build_model` builds one (the caller caches it,
``airies.voice.speech_models``); :meth:`PocketSphinxSTT.transcribe` only uses the model it is given
(``STTOptions.language_model``) and falls back to the general model, it never builds. Measured word error rates are
in docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from airies.core.errors import NotAvailableError
from airies.voice.audio.formats import duration_seconds
from airies.voice.stt.base import STTOptions, Transcript, Word

DECODER_RATE = 16000
FRAME_RATE = 100  # PocketSphinx frames per second
MAX_DOMAIN_MODELS = 16  # decoders of domain models kept per container (~6 MB each)
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


MODEL_FORMAT = 1  # part of every model's digest: a change to what a model holds gives new cache keys


def domain_digest(phrases: Sequence[str]) -> str | None:
    """The content hash a domain model of these phrases is cached under (None: no words, no model)."""
    lines = sorted(set(domain_corpus(phrases)))
    if not lines:
        return None
    corpus = "\n".join([f"pocketsphinx/{MODEL_FORMAT}", *lines])
    return hashlib.sha256(corpus.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class DomainModel:
    """A domain language model: ARPA trigrams and the CMU-dictionary pronunciations of their words."""

    digest: str
    arpa: str
    dictionary: str

    def to_json(self) -> bytes:
        return json.dumps({"format": MODEL_FORMAT, **self.__dict__}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> DomainModel | None:
        """None for a model of another format (or not a model at all)."""
        try:
            raw = json.loads(data)
            if raw.get("format") != MODEL_FORMAT:
                return None
            return cls(digest=raw["digest"], arpa=raw["arpa"], dictionary=raw["dictionary"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def _posterior(probability: float) -> float | None:
    """The Python API already reports linear posteriors (0..1]; 0 means "not computed", not a confidence."""
    if not probability or probability <= 0:
        return None
    return round(min(1.0, float(probability)), 4)


def _pronunciations(decoder: Any, word: str) -> list[str]:
    """Every pronunciation the dictionary has for a word ("to", "to(2)", "to(3)"): the recogniser needs them all."""
    found: list[str] = []
    while phones := decoder.lookup_word(word if not found else f"{word}({len(found) + 1})"):
        found.append(phones)
    return found


class PocketSphinxSTT:
    """One general decoder per container (loading takes ~0.2-0.5 s) plus one small decoder per domain model in use
    (a small LRU); utterances are decoded one at a time."""

    name = "pocketsphinx"

    def __init__(self, *, discount_mass: float = 0.5) -> None:
        try:
            import pocketsphinx
        except ImportError as exc:  # the Lambda layer does not ship it: a cloud STT key is needed there
            raise NotAvailableError("offline speech-to-text (pocketsphinx) is not installed") from exc
        self._ps = pocketsphinx
        self._lock = threading.Lock()
        self._decoder: Any = None
        self._domain_decoders: OrderedDict[str, Any] = OrderedDict()  # model digest -> its decoder
        self.discount_mass = discount_mass

    def _get_decoder(self) -> Any:
        if self._decoder is None:
            self._ps.set_loglevel("ERROR")
            self._decoder = self._ps.Decoder(samprate=DECODER_RATE)
        return self._decoder

    def build_model(self, phrases: Sequence[str]) -> DomainModel | None:
        """The domain model of these phrases (None when none of their words is in the dictionary). Loads the
        general decoder for the pronunciations; the language model itself takes milliseconds."""
        digest = domain_digest(phrases)
        if digest is None:
            return None
        from pocketsphinx.lm import ArpaBoLM

        lines = sorted(set(domain_corpus(phrases)))
        with self._lock:
            decoder = self._get_decoder()
            pronunciations = {w: _pronunciations(decoder, w) for w in {w for line in lines for w in line.split()}}
        known = [line for line in lines if any(pronunciations[w] for w in line.split())]
        if not known:
            return None
        model = ArpaBoLM(text="\n".join(known), add_start=True, discount_mass=self.discount_mass)
        model.compute()
        arpa = io.StringIO()
        model.write(arpa)
        dictionary = "".join(
            f"{word if n == 0 else f'{word}({n + 1})'} {phones}\n"
            for word, variants in sorted(pronunciations.items())
            for n, phones in enumerate(variants)
        )
        return DomainModel(digest=digest, arpa=arpa.getvalue(), dictionary=dictionary)

    def _domain_decoder(self, model: DomainModel) -> Any:
        """The decoder of a domain model, loaded once (10-20 ms) and kept in a small LRU. Called under the lock."""
        decoder = self._domain_decoders.get(model.digest)
        if decoder is not None:
            self._domain_decoders.move_to_end(model.digest)
            return decoder
        self._ps.set_loglevel("ERROR")
        with tempfile.TemporaryDirectory() as folder:
            lm, dictionary = os.path.join(folder, "domain.arpa"), os.path.join(folder, "domain.dict")
            with open(lm, "w") as handle:
                handle.write(model.arpa)
            with open(dictionary, "w") as handle:
                handle.write(model.dictionary)
            decoder = self._ps.Decoder(samprate=DECODER_RATE, lm=lm, dict=dictionary)
        self._domain_decoders[model.digest] = decoder
        while len(self._domain_decoders) > MAX_DOMAIN_MODELS:
            self._domain_decoders.popitem(last=False)
        return decoder

    def _decode(self, pcm16: bytes, options: STTOptions) -> tuple[str, list[Word], float | None, str]:
        model = options.language_model if isinstance(options.language_model, DomainModel) else None
        with self._lock:
            decoder = self._domain_decoder(model) if model is not None else self._get_decoder()
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
            return " ".join(w.word for w in words), words, confidence, "domain_lm" if model else "general_lm"

    async def transcribe(self, pcm16: bytes, sample_rate: int, options: STTOptions) -> Transcript:
        if not options.language.lower().startswith("en"):
            raise NotAvailableError(f"the offline recogniser only knows English (asked for '{options.language}')")
        # numpy, lazily: the API imports this module (for cached models) and must not pay for numpy at start-up
        from airies.voice.audio.codecs import resample_pcm16

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
