"""``python -m airies call``: call an agent from the terminal over the voice WebSocket (protocol v1).

    python -m airies call --agent agt_... --say "when are you open" --wav examples/question.wav --out reply.wav

The caller's turns, in the order given: ``--wav FILE`` (any rate, mono, PCM16 or μ-law), ``--say TEXT`` (spoken by
eSpeak NG), ``--text TEXT`` (a typed turn, no speech-to-text). Audio goes out as 200 ms frames in real time; each
utterance ends with ``end_of_utterance`` (its last short chunk carries the flag, or an ``end_of_utterance`` frame
follows), then the client waits for the agent's reply (``turn_end``) before the next turn. After the last one it
hangs up and exits once the call has ended (or at once when the agent ends the call). It prints the transcript, each
turn's latency waterfall and cost, and writes the agent's audio (16 kHz PCM16 WAV) to ``--out``.

Not shipped in the Lambda layer (``airies/local``): it needs ``websockets``, a local-extras dependency.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import httpx

from airies.conversations import protocol as wp
from airies.core.errors import AiriesError
from airies.voice.audio.codecs import read_wav, resample_pcm16, write_wav
from airies.voice.tts.espeak import EspeakTTS

FRAME_MS = 200
FRAME_BYTES = FRAME_MS * wp.BYTES_PER_MS  # 6,400 bytes of PCM16 16 kHz mono
WATERFALL = (
    ("endpointing_ms", "endpointing"),
    ("stt_ms", "STT"),
    ("retrieval_ms", "retrieval"),
    ("llm_first_token_ms", "LLM first token"),
    ("tts_first_byte_ms", "TTS first byte"),
    ("first_audio_ms", "first audio"),
)
BAR_WIDTH = 40
_DECIMAL = re.compile(r"-?\d+(\.\d+)?")


class CallError(Exception):
    """The call could not be placed or went wrong: printed, exit status 1."""


@dataclass(frozen=True)
class Turn:
    kind: str  # "wav", "say" or "text"
    value: str


class _Turns(argparse.Action):
    """--wav/--say/--text append to one list, so the turns keep the order they were given in."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        turns = list(getattr(namespace, self.dest) or [])
        turns.append(Turn(self.const, str(values)))
        setattr(namespace, self.dest, turns)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m airies call", description=__doc__.split("\n\n")[0])
    parser.add_argument("--agent", required=True, help="the agent to call (it must be deployed)")
    parser.add_argument("--api", default=os.environ.get("AIRIES_API_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--key", default=None, help="API key (default: $AIRIES_API_KEY, else .data/dev_api_key)")
    parser.add_argument("--wav", dest="turns", action=_Turns, const="wav", metavar="FILE", help="speak a WAV file")
    parser.add_argument("--say", dest="turns", action=_Turns, const="say", metavar="TEXT", help="speak text (eSpeak)")
    parser.add_argument("--text", dest="turns", action=_Turns, const="text", metavar="TEXT", help="a typed turn")
    parser.add_argument("--out", default="agent.wav", help="where to write the agent's audio (WAV)")
    parser.add_argument("--voice", default="en-us", help="eSpeak NG voice of --say")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each reply")
    parser.add_argument("--stay", action="store_true", help="do not hang up after the last turn: wait for the agent")
    args = parser.parse_args(list(argv))
    args.turns = args.turns or []
    return args


def resolve_key(explicit: str | None) -> str:
    key = explicit or os.environ.get("AIRIES_API_KEY")
    if key:
        return key
    dev_key = Path(os.environ.get("AIRIES_DATA_DIR", ".data")) / "dev_api_key"
    if dev_key.exists():
        return dev_key.read_text(encoding="utf-8").strip()
    raise CallError("no API key: pass --key, set AIRIES_API_KEY, or run from the folder where `make run` runs")


def wav_pcm16(path: Path) -> bytes:
    """A WAV file as 16 kHz mono PCM16."""
    try:
        pcm, rate = read_wav(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CallError(f"cannot read {path}: {exc}") from exc
    return resample_pcm16(pcm, rate, wp.SAMPLE_RATE) if rate != wp.SAMPLE_RATE else pcm


def speak(text: str, voice: str) -> bytes:
    """Text spoken by eSpeak NG (the platform's offline TTS engine), as 16 kHz mono PCM16."""
    try:
        pcm, rate = asyncio.run(EspeakTTS().speak_pcm(text, voice))
    except AiriesError as exc:
        raise CallError(f"cannot speak {text!r}: {exc}") from exc
    return resample_pcm16(pcm, rate, wp.SAMPLE_RATE)


def prepare(turns: list[Turn], voice: str) -> list[tuple[Turn, bytes | None]]:
    """Every turn's audio before dialling: a missing file or a speech failure stops the call before it starts."""
    return [
        (
            turn,
            None
            if turn.kind == "text"
            else wav_pcm16(Path(turn.value))
            if turn.kind == "wav"
            else speak(turn.value, voice),
        )
        for turn in turns
    ]


def audio_frames(pcm: bytes, first_seq: int) -> list[dict[str, Any]]:
    """One utterance as protocol frames: 200 ms audio frames, and its end. A last chunk under the protocol's minimum
    carries ``end_of_utterance`` itself; otherwise an ``end_of_utterance`` frame names the last seq."""
    chunks = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)] or [b"\x00\x00" * 160]
    frames: list[dict[str, Any]] = []
    for index, chunk in enumerate(chunks):
        frame: dict[str, Any] = {"action": "audio", "seq": first_seq + index, "data": base64.b64encode(chunk).decode()}
        if index == len(chunks) - 1 and len(chunk) < wp.MIN_CHUNK_BYTES:
            frame["end_of_utterance"] = True
        frames.append(frame)
    if not frames[-1].get("end_of_utterance"):
        frames.append({"action": "end_of_utterance", "last_seq": frames[-1]["seq"]})
    return frames


def decimal_of(value: Any) -> Decimal:
    """Money from the server, exactly: a fixed-point decimal string (docs/api.md, "Money"); absent is zero.

    Anything else, a JSON number included, is a protocol error (``CallError``), never rounded into a figure."""
    if value is None:
        return Decimal(0)
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value):
        raise CallError(f"protocol error: an amount must be a decimal string, got {json.dumps(value)}")
    return Decimal(value)


def format_waterfall(latency: dict[str, Any]) -> list[str]:
    """The turn's stages end to end after endpointing, as text bars; first audio from the end of speech."""
    steps: list[tuple[str, float, float]] = []
    cursor = 0.0
    for key, label in WATERFALL[:-1]:
        value = latency.get(key)
        if isinstance(value, int | float):
            steps.append((label, cursor, float(value)))
            cursor += float(value)
    first = latency.get("first_audio_ms")
    if isinstance(first, int | float):
        steps.append(("first audio", 0.0, float(latency.get("endpointing_ms") or 0) + float(first)))
    if not steps:
        return ["    (no latency recorded)"]
    end = max(start + ms for _, start, ms in steps) or 1.0
    lines = []
    for label, start, ms in steps:
        left = round(BAR_WIDTH * start / end)
        width = max(1, round(BAR_WIDTH * ms / end))
        lines.append(f"    {label:<16}{' ' * left}{'█' * width}{' ' * (BAR_WIDTH - left - width)} {ms:8.1f} ms")
    return lines


@dataclass
class CallReport:
    conversation_id: str = ""
    agent_pcm: bytearray = field(default_factory=bytearray)
    turns: list[dict[str, Any]] = field(default_factory=list)
    total_cost: Decimal = Decimal(0)
    ended_reason: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)


class CallClient:
    def __init__(self, ws_url: str, *, out: TextIO = sys.stdout, timeout: float = 60.0) -> None:
        self.ws_url = ws_url
        self.out = out
        self.timeout = timeout
        self.report = CallReport()
        self.seq = 0
        self._agent_line: dict[str, str] = {}

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def run(self, turns: list[tuple[Turn, bytes | None]], *, hang_up: bool = True) -> CallReport:
        from websockets.asyncio.client import connect

        async with connect(self.ws_url, max_size=2**22) as ws:
            await ws.send(json.dumps({"action": "start"}))
            await self._until(ws, lambda f: f["type"] == "ready")
            # The agent's first message (when it speaks first): its turn_end; else a short quiet spell.
            await self._until(ws, lambda f: f["type"] == "turn_end", quiet_after=2.0)
            for turn, pcm in turns:
                if self.report.ended_reason:
                    break
                if pcm is None:
                    await ws.send(json.dumps({"action": "text", "text": turn.value}))
                else:
                    await self._send_utterance(ws, pcm)
                await self._until(ws, lambda f: f["type"] in ("turn_end", "ended"))
            if not self.report.ended_reason:
                await self._until(ws, lambda f: False, quiet_after=0.5)  # an agent that said goodbye ends the call
            if not self.report.ended_reason:
                if hang_up:
                    await ws.send(json.dumps({"action": "end"}))
                await self._until(ws, lambda f: f["type"] == "ended", timeout=None if not hang_up else self.timeout)
        return self.report

    async def _send_utterance(self, ws: Any, pcm: bytes) -> None:
        frames = audio_frames(pcm, self.seq)
        self.seq += sum(1 for f in frames if f["action"] == "audio")
        started = time.monotonic()
        for frame in frames:
            await ws.send(json.dumps(frame))
            if frame["action"] == "audio":
                # Real time: the server refuses audio much faster than that (rate_limited).
                sent_ms = (frame["seq"] - frames[0]["seq"] + 1) * FRAME_MS
                await asyncio.sleep(max(0.0, started + sent_ms / 1000 - time.monotonic()))

    async def _until(
        self, ws: Any, stop: Callable[[dict[str, Any]], bool], *, quiet_after: float | None = None, timeout: Any = ...
    ) -> None:
        limit = self.timeout if timeout is ... else timeout
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            wait = None if deadline is None else max(0.01, deadline - time.monotonic())
            if quiet_after is not None:
                wait = quiet_after if wait is None else min(wait, quiet_after)
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=wait)
            except TimeoutError:
                if quiet_after is not None:
                    return
                raise CallError(f"no answer from the agent within {limit:.0f} s") from None
            except Exception as exc:  # the server closed the socket
                if self.report.ended_reason:
                    return
                raise CallError(f"the connection closed: {exc}") from exc
            frame = json.loads(raw)
            self._show(frame)
            if frame["type"] == "ended" or stop(frame):
                return

    def _show(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "ready":
            self.report.conversation_id = frame["conversation_id"]
            self.say(f"connected: {frame['conversation_id']} (agent {frame['agent_id']} v{frame['agent_version']})")
        elif kind == "transcript":
            self.say(f"caller: {frame['text']}")
        elif kind == "agent_text":
            self.say(f"agent:  {frame['delta']}")
        elif kind == "audio":
            self.report.agent_pcm += base64.b64decode(frame["data"])
        elif kind == "interrupted":
            self.say(f"        (interrupted; heard: {frame.get('heard_text', '')!r})")
        elif kind == "turn_end":
            self.report.turns.append(frame)
            cost = frame.get("cost") or {}
            self.report.total_cost += decimal_of(cost.get("total"))
            parts = ", ".join(f"{k} ${decimal_of(cost[k]):f}" for k in ("stt", "llm", "tts") if k in cost)
            self.say(f"  turn {len(self.report.turns)} {frame.get('status')}: cost ${cost.get('total', '0')} ({parts})")
            for line in format_waterfall(frame.get("latency") or {}):
                self.say(line)
        elif kind == "error":
            self.report.errors.append(frame)
            self.say(f"  error {frame.get('code')}: {frame.get('message')}")
        elif kind == "ended":
            self.report.ended_reason = frame.get("reason")
            self.say(f"call ended: {frame.get('reason')}")


def start_conversation(api: str, key: str, agent_id: str) -> dict[str, Any]:
    try:
        response = httpx.post(
            f"{api.rstrip('/')}/api/v1/conversations",
            json={"agent_id": agent_id},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        raise CallError(f"cannot reach {api}: {exc}") from exc
    if response.status_code != 201:
        try:
            error = response.json()["error"]
            message = f"{error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            message = response.text[:300]
        raise CallError(f"could not start the call ({response.status_code}): {message}")
    conversation: dict[str, Any] = response.json()
    return conversation


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        key = resolve_key(args.key)
        turns = prepare(args.turns, args.voice)
        conversation = start_conversation(args.api, key, args.agent)
        client = CallClient(conversation["ws_url"], timeout=args.timeout)
        report = asyncio.run(client.run(turns, hang_up=not args.stay))
    except CallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.write_bytes(write_wav(bytes(report.agent_pcm), wp.SAMPLE_RATE))
    seconds = len(report.agent_pcm) / wp.BYTES_PER_MS / 1000
    print(f"agent audio: {out} ({seconds:.1f} s)")
    print(f"turns: {len(report.turns)}, cost: ${format(report.total_cost, 'f')} (exact sum of the turns' costs)")
    print(f"conversation: {report.conversation_id}")
    return 0 if report.ended_reason else 1
