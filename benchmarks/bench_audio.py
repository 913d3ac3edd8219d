"""Audio throughput and offline speech recognition, each beside a baseline measured in the same run.

* μ-law <-> PCM16 and 8 kHz <-> 16 kHz resampling, in MB of *input* audio per second, beside a plain
  ``bytes`` copy and a numpy copy of the same buffer (the memory-bandwidth floor of this machine).
* Offline STT (PocketSphinx) real-time factor = decode time / audio duration (< 1 is faster than real time),
  with the domain language model and with the general one, on eSpeak NG speech.
* Word error rate of that round trip (eSpeak NG -> PocketSphinx), with and without the domain model,
  on in-domain sentences and on held-out sentences that reuse the domain's words.

``python -m benchmarks audio`` (or ``python benchmarks/bench_audio.py``).
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks import harness

AUDIO_SECONDS = 60  # one minute of 16 kHz audio per conversion run
DEFAULT_RUNS = 5

DOMAIN = [
    "I would like to book an appointment for tomorrow morning",
    "What are your opening hours on Saturday",
    "Can I speak to a manager please",
    "My order number is four five six seven",
    "I want to cancel my subscription",
    "Yes that works for me",
    "No thank you goodbye",
    "Do you deliver to Boston",
    "How much does the premium plan cost",
    "Please send me a confirmation email",
]
HELD_OUT = [
    "I would like to cancel my appointment",
    "Can you send me the premium plan please",
    "What does the subscription cost",
    "Yes please send me the order number",
]


def _best_mb_per_s(fn: Callable[[], Any], n_bytes: int, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return round(n_bytes / best / 1e6, 1)


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower()).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in words, reference length)."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        previous, row[0] = row[0], i
        for j in range(1, len(hyp) + 1):
            current = row[j]
            row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (ref[i - 1] != hyp[j - 1]))
            previous = current
    return row[len(hyp)], len(ref)


def conversions(runs: int) -> dict[str, Any]:
    from airies.voice.audio import codecs

    rng = np.random.default_rng(0)
    t = np.arange(16000 * AUDIO_SECONDS) / 16000
    signal = (np.sin(2 * np.pi * 220 * t) * 6000 + rng.normal(0, 500, t.size)).astype(np.int16)
    pcm16 = signal.tobytes()
    pcm8 = codecs.resample_pcm16(pcm16, 16000, 8000)
    ulaw = codecs.pcm16_to_ulaw(pcm8)
    codecs.ulaw_to_pcm16(ulaw)  # build the lookup tables outside the timed runs
    array = np.frombuffer(pcm16, dtype=np.int16)
    return {
        "audio_seconds": AUDIO_SECONDS,
        "baseline_bytes_copy_mb_s": _best_mb_per_s(lambda: bytearray(pcm16), len(pcm16), runs),
        "baseline_numpy_copy_mb_s": _best_mb_per_s(lambda: array.copy(), len(pcm16), runs),
        "pcm16_to_ulaw_mb_s": _best_mb_per_s(lambda: codecs.pcm16_to_ulaw(pcm8), len(pcm8), runs),
        "ulaw_to_pcm16_mb_s": _best_mb_per_s(lambda: codecs.ulaw_to_pcm16(ulaw), len(ulaw), runs),
        "resample_8k_to_16k_mb_s": _best_mb_per_s(lambda: codecs.resample_pcm16(pcm8, 8000, 16000), len(pcm8), runs),
        "resample_16k_to_8k_mb_s": _best_mb_per_s(lambda: codecs.resample_pcm16(pcm16, 16000, 8000), len(pcm16), runs),
        "realtime_mb_s_16k_pcm16": round(16000 * 2 / 1e6, 3),  # what one live call needs
    }


VOICES = ("en-us", "en-us+klatt2", "en-us+f2")  # eSpeak NG's default voice and two that decode far better


async def recognition() -> dict[str, Any]:
    from airies.core.config import Settings
    from airies.voice.factory import build_voice_service

    service = build_voice_service(Settings(deepgram_api_key=None, elevenlabs_api_key=None))
    out: dict[str, Any] = {"sentences": {"domain": len(DOMAIN), "held_out": len(HELD_OUT)}, "examples": []}
    for voice in VOICES:
        speech = {}
        for sentence in DOMAIN + HELD_OUT:
            speech[sentence] = await service.synthesize_all(sentence, voice={"provider": "espeak", "voice_id": voice})
        await service.speech_to_text(speech[DOMAIN[0]], 16000, expected_phrases=DOMAIN)  # load decoder + model
        for label, phrases in (("domain_lm", tuple(DOMAIN)), ("general_lm", ())):
            for subset_name, subset in (("in_domain", DOMAIN), ("held_out", HELD_OUT)):
                errors = total = 0
                decode_s = audio_s = 0.0
                for sentence in subset:
                    pcm = speech[sentence]
                    start = time.perf_counter()
                    transcript = await service.speech_to_text(pcm, 16000, expected_phrases=phrases)
                    decode_s += time.perf_counter() - start
                    audio_s += len(pcm) / 32000
                    e, n = word_errors(sentence, transcript.text)
                    errors, total = errors + e, total + n
                    if e and voice == VOICES[0] and label == "domain_lm":
                        out["examples"].append({"voice": voice, "said": sentence, "heard": transcript.text})
                out[f"{voice}/{label}/{subset_name}"] = {
                    "wer": round(errors / total, 3),
                    "word_accuracy": round(1 - errors / total, 3),
                    "words": total,
                    "rtf": round(decode_s / audio_s, 3),
                    "audio_seconds": round(audio_s, 2),
                    "decode_seconds": round(decode_s, 3),
                }
    return out


def run(args: Any = None) -> dict[str, Any]:
    sys.path.insert(0, str(harness.ROOT))
    runs = getattr(args, "runs", None) or DEFAULT_RUNS
    figures: dict[str, Any] = {"conversions": conversions(runs)}
    figures["offline_stt"] = asyncio.run(recognition())
    c, s = figures["conversions"], figures["offline_stt"]
    print(
        f"  bytes copy {c['baseline_bytes_copy_mb_s']} MB/s, numpy copy {c['baseline_numpy_copy_mb_s']} MB/s; "
        f"pcm16->ulaw {c['pcm16_to_ulaw_mb_s']}, ulaw->pcm16 {c['ulaw_to_pcm16_mb_s']}, "
        f"8k->16k {c['resample_8k_to_16k_mb_s']}, 16k->8k {c['resample_16k_to_8k_mb_s']} MB/s"
    )
    for key, row in s.items():
        if isinstance(row, dict) and "wer" in row:
            print(f"  {key}: WER {row['wer']} ({row['words']} words), RTF {row['rtf']} over {row['audio_seconds']} s")
    figures["targets"] = [
        harness.target("offline STT real-time factor (domain LM)", s["en-us/domain_lm/in_domain"]["rtf"], 1.0, "x"),
        harness.target(
            "8k->16k resampling, seconds of CPU per hour of audio",
            round(3600 * 16000 / (c["resample_8k_to_16k_mb_s"] * 1e6), 2),
            36.0,
            "s",
        ),
    ]
    return figures
