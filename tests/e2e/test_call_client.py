"""``python -m airies call`` against the real local server (``make run`` in a subprocess, offline engines): a WAV
turn, a spoken turn and a typed one; every utterance ends, the call ends, and the agent's audio lands in a WAV."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest

from airies.core.config import PROJECT_ROOT
from tests.local_stack import local_server

pytestmark = pytest.mark.slow
KEY = "ak_live_devkey_for_call_client_01"
QUESTION = PROJECT_ROOT / "examples" / "question.wav"  # eSpeak NG: "when are you open"


def test_call_client_talks_to_a_deployed_agent_and_hangs_up(tmp_path: Path) -> None:
    with local_server(tmp_path, KEY) as server:
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=server.base, headers=headers, timeout=60) as http:
            agent = http.post(
                "/api/v1/agents",
                json={
                    "name": "Clinic",
                    "first_message": "Hello, this is the clinic.",
                    "voice": {"provider": "espeak", "voice_id": "en-us"},
                    "transcriber": {"provider": "pocketsphinx", "model": "en-us", "keywords": ["when are you open"]},
                },
            ).json()
            assert http.post(f"/api/v1/agents/{agent['id']}/deploy").status_code == 201
        out = tmp_path / "reply.wav"
        run = subprocess.run(
            [sys.executable, "-m", "airies", "call", "--api", server.base, "--key", KEY, "--agent", agent["id"],
             "--wav", str(QUESTION), "--say", "when are you open", "--text", "What are your opening hours?",
             "--out", str(out)],
            capture_output=True, text=True, timeout=180, cwd=tmp_path,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        lines = run.stdout.splitlines()
        assert "agent:  Hello, this is the clinic." in [line.rstrip() for line in lines]
        assert [line for line in lines if line.startswith("caller: ")] == [
            "caller: when are you open",
            "caller: when are you open",
            "caller: What are your opening hours?",
        ]
        # Each turn's waterfall: STT for the spoken turns, first audio for all, with numbers.
        assert sum(1 for line in lines if line.strip().startswith("STT ") and line.endswith(" ms")) == 2
        assert sum(1 for line in lines if line.strip().startswith("first audio") and line.endswith(" ms")) == 4
        assert "call ended: caller_ended" in lines
        assert any(line.startswith("turns: 4, cost: $") for line in lines)
        conversation_id = lines[-1].removeprefix("conversation: ")

        with wave.open(str(out)) as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
            samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
        assert len(samples) > 16000 * 3  # four spoken replies
        assert np.abs(samples.astype(np.int32)).max() > 3000  # speech, not silence

        with httpx.Client(base_url=server.base, headers=headers, timeout=30) as http:
            detail = http.get(f"/api/v1/conversations/{conversation_id}").json()
        assert detail["status"] == "ended" and detail["end_reason"] == "caller_ended"
        assert [t["input_mode"] for t in detail["turns"]][1:] == ["audio", "audio", "text"]


def test_call_client_fails_clearly_before_dialling(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "airies", "call", "--key", "ak_live_x", "--agent", "agt_1", "--wav", "missing.wav"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 1
    assert "cannot read missing.wav" in run.stderr
