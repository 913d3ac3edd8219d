"""Twilio's side of a bidirectional Media Stream (``<Connect><Stream url=...>``), as Twilio documents it.

It opens the stream URL over a real WebSocket and sends Twilio's messages: ``connected``, ``start`` (``streamSid``,
``callSid``, the μ-law 8 kHz media format and the TwiML ``<Parameter>``s as ``customParameters``), then a phone
line: one ``media`` message every 20 ms (160 bytes of base64 μ-law, track ``inbound``, ``chunk`` and ``timestamp``
counting up), silence unless the caller is saying something (``say``), plus ``dtmf`` and ``stop`` on demand.
Every message carries a ``sequenceNumber`` counting up, as Twilio's do.

From the bridge it takes ``media`` (agent audio, kept as μ-law in ``agent_audio``), ``mark`` and ``clear``. Playback
is simulated in real time: the audio received plays 20 ms a frame, and a mark is echoed (``event: mark``) once the
audio before it has played. ``clear`` drops the unplayed audio and echoes every pending mark at once, as Twilio does.
With ``hold_playback`` nothing plays until ``release``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from typing import Any

from tests.doubles.twilio_server import new_sid

FRAME_BYTES = 160  # 20 ms of 8 kHz μ-law
FRAME_S = 0.02
SILENCE = b"\xff" * FRAME_BYTES


class TwilioMediaStream:
    def __init__(
        self,
        url: str,
        parameters: dict[str, str],
        *,
        account_sid: str | None = None,
        call_sid: str | None = None,
        hold_playback: bool = False,
    ) -> None:
        self.url = url
        self.parameters = parameters
        self.account_sid = account_sid or new_sid("AC")
        self.call_sid = call_sid or new_sid("CA")
        self.stream_sid = new_sid("MZ")
        self.hold_playback = hold_playback
        self.received: list[dict[str, Any]] = []  # every message from the bridge, in order
        self.agent_audio = bytearray()  # μ-law received, in order
        self.echoed: list[str] = []  # marks echoed back (played, or dropped by a clear)
        self.clears = 0
        self.closed = asyncio.Event()
        self._sequence = 0
        self._chunk = 0
        self._speech: list[bytes] = []
        self._pending: list[tuple[float, str]] = []  # (play time, mark name)
        self._play_until = 0.0
        self._ws: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self.line_open = True

    # -- the call ------------------------------------------------------------------------------------------------
    async def __aenter__(self) -> TwilioMediaStream:
        from websockets.asyncio.client import connect

        self._ws = await connect(self.url)
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.send(
            {
                "event": "start",
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": self.parameters,
                },
                "streamSid": self.stream_sid,
            }
        )
        self._tasks = [asyncio.create_task(self._line()), asyncio.create_task(self._read())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.line_open = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._ws.close()

    async def send(self, message: dict[str, Any]) -> None:
        self._sequence += 1
        await self._ws.send(json.dumps({**message, "sequenceNumber": str(self._sequence)}))

    async def send_raw(self, raw: str | bytes) -> None:
        await self._ws.send(raw)

    def say(self, ulaw: bytes) -> None:
        """The caller speaks: these 8 kHz μ-law bytes go out on the line, 20 ms a message, after what is queued."""
        padded = ulaw + b"\xff" * (-len(ulaw) % FRAME_BYTES)
        self._speech.extend(padded[i : i + FRAME_BYTES] for i in range(0, len(padded), FRAME_BYTES))

    def speaking(self) -> bool:
        return bool(self._speech)

    async def dtmf(self, digit: str) -> None:
        await self.send(
            {"event": "dtmf", "streamSid": self.stream_sid, "dtmf": {"track": "inbound_track", "digit": digit}}
        )

    async def stop(self) -> None:
        """The caller hangs up."""
        self.line_open = False
        await self.send(
            {
                "event": "stop",
                "streamSid": self.stream_sid,
                "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
            }
        )

    async def _line(self) -> None:
        """One media message every 20 ms, paced on the clock (Twilio sends in real time)."""
        started = time.monotonic()
        while self.line_open:
            payload = self._speech.pop(0) if self._speech else SILENCE
            self._chunk += 1
            await self.send(
                {
                    "event": "media",
                    "streamSid": self.stream_sid,
                    "media": {
                        "track": "inbound",
                        "chunk": str(self._chunk),
                        "timestamp": str(self._chunk * 20),
                        "payload": base64.b64encode(payload).decode(),
                    },
                }
            )
            await self._echo_played()
            await asyncio.sleep(max(0.0, started + self._chunk * FRAME_S - time.monotonic()))

    # -- from the bridge -----------------------------------------------------------------------------------------
    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                message = json.loads(raw)
                self.received.append(message)
                event = message.get("event")
                now = time.monotonic()
                if event == "media":
                    self.agent_audio += base64.b64decode(message["media"]["payload"])
                    self._play_until = max(self._play_until, now) + FRAME_S
                elif event == "mark":
                    self._pending.append((self._play_until, message["mark"]["name"]))
                elif event == "clear":
                    self.clears += 1
                    self._play_until = now
                    pending, self._pending = self._pending, []
                    for _, name in pending:
                        await self._echo(name)
                await self._echo_played()
        except Exception:  # the bridge closed the stream (the call ended)
            pass
        finally:
            self.closed.set()

    async def _echo_played(self) -> None:
        if self.hold_playback:
            return
        now = time.monotonic()
        while self._pending and self._pending[0][0] <= now:
            await self._echo(self._pending.pop(0)[1])

    async def _echo(self, name: str) -> None:
        self.echoed.append(name)
        await self.send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    def release(self) -> None:
        """Play what is held, from now on, in real time."""
        self.hold_playback = False
        if self._pending:
            shift = time.monotonic() - self._pending[0][0] + FRAME_S
            self._pending = [(at + shift, name) for at, name in self._pending]
            self._play_until += shift

    def playing(self) -> bool:
        """Is agent audio still unplayed (marks not echoed)?"""
        return bool(self._pending)

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 60.0) -> None:
        """Until ``condition()`` holds (the bridge closing the stream first fails)."""
        async with asyncio.timeout(timeout):
            while not condition():
                if self.closed.is_set():
                    raise AssertionError("the bridge closed the stream")
                await asyncio.sleep(0.02)

    def marks(self) -> list[str]:
        return [m["mark"]["name"] for m in self.received if m.get("event") == "mark"]
