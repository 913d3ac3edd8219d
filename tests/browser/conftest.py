"""Browser tests: Debian's Chromium driven by Playwright for Python against the real local server (``make run`` in a
subprocess). Chromium's fake media devices make the microphone speak an eSpeak NG sentence in a loop.

Never ``playwright install``: the system browser is used (``executable_path``). Without it the tests fail.
Screenshots of every page go to ``tests/browser/artifacts/`` (gitignored); the path is printed at the end.
"""

from __future__ import annotations

import asyncio
import shutil
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from airies.core.config import PROJECT_ROOT
from airies.voice.audio.codecs import read_wav
from airies.voice.tts.espeak import EspeakTTS
from airies.webapp import DIST_DIR
from tests.doubles.openai_server import OpenAIDouble, Reply
from tests.local_stack import LocalServer, local_server

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = PROJECT_ROOT / "tests" / "browser" / "artifacts"
DEV_KEY = "ak_live_devkey_for_browser_tests_1"
CALLER_SENTENCE = "when are you open"
# A long reply streamed word by word at a speaking pace: the agent is still talking when the caller speaks again.
AGENT_REPLY = (
    "We are open from nine in the morning until five in the evening on weekdays. "
    "On Saturdays we open at ten and close at two in the afternoon. "
    "We are closed on Sundays and on public holidays. "
    "Is there anything else I can help you with today?"
)


def chromium_args(fake_audio: Path) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake_audio}",
    ]


@pytest.fixture(scope="session")
def artifacts() -> Path:
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    if ARTIFACTS.exists() and any(ARTIFACTS.iterdir()):
        terminalreporter.write_line(f"browser test screenshots: {ARTIFACTS}")


@pytest.fixture(scope="session")
def caller_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The caller, as Chromium's fake microphone plays it (in a loop): silence, the sentence, a long pause."""
    pcm, rate = asyncio.run(EspeakTTS().speak_pcm(CALLER_SENTENCE, "en-us"))
    speech = np.frombuffer(pcm, dtype=np.int16)
    silence = np.zeros(int(rate * 3.0), dtype=np.int16)  # the greeting is heard before the caller speaks
    pause = np.zeros(int(rate * 3.0), dtype=np.int16)
    path = tmp_path_factory.mktemp("audio") / "caller.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.concatenate([silence, speech, pause]).tobytes())
    assert read_wav(path.read_bytes())[1] == rate
    return path


@pytest.fixture(scope="module")
def llm_double() -> Iterator[OpenAIDouble]:
    with OpenAIDouble() as double:
        double.default = Reply(text=AGENT_REPLY, chunk_delay_s=0.15)
        yield double


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, llm_double: OpenAIDouble) -> Iterator[LocalServer]:
    if not (DIST_DIR / "index.html").is_file():
        pytest.fail(f"the web app is not built ({DIST_DIR}): run `make web`")
    env = {"AIRIES_OPENAI_API_KEY": "sk-browser-tests", "AIRIES_OPENAI_BASE_URL": llm_double.base_url}
    with local_server(tmp_path_factory.mktemp("stack"), DEV_KEY, env=env) as running:
        yield running


@pytest.fixture(scope="module")
def browser(caller_wav: Path):  # type: ignore[no-untyped-def]
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is required for the browser tests and is missing at {CHROMIUM}: `make chromium`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(caller_wav))
        try:
            yield launched
        finally:
            launched.close()
