"""One phone call through the bridge, without I/O: Twilio's messages and the API's frames in, what to send out.

Caller audio: Twilio's 20 ms μ-law frames are collected into ``chunk_ms`` chunks, decoded and resampled to PCM16
16 kHz (one ``StreamResampler`` per call: no click at chunk edges), and sent as ``audio`` frames; the server's VAD
ends each utterance, as for any client that streams.

Agent audio: each ``audio`` frame (PCM16 16 kHz) is resampled to 8 kHz (one stream per turn), μ-law encoded and cut
into 20 ms ``media`` messages, with a ``mark`` every ``mark_every_ms`` named ``{turn_id}:{ms}``. Twilio echoes a
mark once the audio before it has played, so the bridge knows how much of each turn the caller heard
(``played_ms``).

Barge-in: while agent audio is still playing at Twilio, caller speech (webrtcvad) of the stream's ``barge_in_ms``
(the agent's ``interruption.voice_seconds``; 0: the agent cannot be interrupted), after ``backoff_ms`` of playing,
clears Twilio's buffer (``clear``) and sends ``interrupt`` with the turn and its ``played_ms``. A turn the server
interrupted itself (its own VAD, while it was still posting) is cleared at Twilio as well. Audio of a cleared turn
still arriving is dropped.

DTMF: a key reaches the agent as a typed turn. Twilio's ``stop`` sends ``end``; the server's ``ended`` lets the
caller hear what was sent (a last mark, ``end``), then the bridge closes the stream, which ends the call.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from airies.conversations import protocol as wp
from airies.media_bridge import messages as tm
from airies.media_bridge.config import BridgeConfig
from airies.telephony import media_streams
from airies.voice.audio.codecs import StreamResampler, pcm16_to_ulaw, ulaw_to_pcm16
from airies.voice.audio.vad import voiced_frames

END_MARK = "end"
VAD_FRAME_MS = tm.FRAME_MS


def _int_parameter(parameters: dict[str, str], name: str, default: int) -> int:
    value = parameters.get(name, "")
    return int(value) if value.isdigit() and int(value) <= 60_000 else default


@dataclass
class Outcome:
    """What one input asks the bridge to send: frames to the API, messages to Twilio, and whether the call ends."""

    api: list[dict[str, Any]] = field(default_factory=list)
    twilio: list[str] = field(default_factory=list)
    ended: bool = False


@dataclass
class _Playback:
    """One agent turn at Twilio: audio sent (ms, whole 20 ms frames) and played (the last mark echoed)."""

    turn_id: str
    sample_rate: int = wp.SAMPLE_RATE
    sent_ms: int = 0
    played_ms: int = 0
    marked_ms: int = 0  # the ms of the last mark sent
    rest: bytes = b""  # μ-law under one frame, sent with the next audio or padded at the turn's end
    cleared: bool = False
    complete: bool = False  # its last frame was sent (``turn_end``)
    first_played_at: float | None = None
    resampler: StreamResampler = field(init=False)

    def __post_init__(self) -> None:
        self.resampler = StreamResampler(self.sample_rate, tm.SAMPLE_RATE)


class MediaCall:
    def __init__(self, config: BridgeConfig, *, vad: Any, clock: Callable[[], float]) -> None:
        """``vad``: a ``webrtcvad.Vad``; ``clock``: seconds (the barge-in backoff)."""
        self.config = config
        self.vad = vad
        self.clock = clock
        self.stream_sid = ""
        self.call_sid = ""
        self.conversation_id = ""
        self.barge_in_ms = config.barge_in_ms
        self.backoff_ms = config.backoff_ms
        self.seq = 0
        self._caller = bytearray()
        self._upsampler = StreamResampler(tm.SAMPLE_RATE, wp.SAMPLE_RATE)  # one stream: no click between chunks
        self._chunk_bytes = tm.SAMPLE_RATE * config.chunk_ms // 1000
        self._speech_ms = 0
        self.playback: _Playback | None = None
        self.ended = False  # the server sent ``ended``
        self.stopped = False  # Twilio sent ``stop``
        self.bad_messages = 0
        self.barge_ins = 0

    # -- Twilio -> API -------------------------------------------------------------------------------------------
    def start(self, start: tm.Start) -> str:
        """Bind the call to its conversation: the API URL to open (the conversation's id and token come from the
        TwiML ``<Parameter>``s)."""
        conversation_id = start.parameters.get(media_streams.CONVERSATION_PARAMETER, "")
        token = start.parameters.get(media_streams.TOKEN_PARAMETER, "")
        if not conversation_id or not token:
            raise tm.BadMessage(
                f"start.customParameters must carry {media_streams.CONVERSATION_PARAMETER} and {media_streams.TOKEN_PARAMETER}"
            )
        self.stream_sid, self.call_sid, self.conversation_id = start.stream_sid, start.call_sid, conversation_id
        self.barge_in_ms = _int_parameter(start.parameters, media_streams.BARGE_IN_PARAMETER, self.config.barge_in_ms)
        self.backoff_ms = _int_parameter(start.parameters, media_streams.BACKOFF_PARAMETER, self.config.backoff_ms)
        return wp.connection_url(self.config.api_ws_url, conversation_id, token)

    def from_twilio(self, message: tm.Message) -> Outcome:
        if isinstance(message, tm.Media):
            return self.caller_audio(message.payload) if message.track.startswith("inbound") else Outcome()
        if isinstance(message, tm.Mark):
            return self.mark_played(message.name)
        if isinstance(message, tm.Dtmf):
            return Outcome(api=[{"action": "text", "text": wp.dtmf_text(message.digit)}])
        if isinstance(message, tm.Stop):
            self.stopped = True
            return Outcome(api=[] if self.ended else [{"action": "end"}], ended=True)
        return Outcome()  # connected, or a second start: nothing to do

    def caller_audio(self, ulaw: bytes) -> Outcome:
        """A caller frame: a protocol chunk once ``chunk_ms`` is collected; a barge-in when the caller talks over
        the agent's playing audio."""
        out = Outcome()
        self._caller += ulaw
        while len(self._caller) >= self._chunk_bytes:
            chunk = bytes(self._caller[: self._chunk_bytes])
            del self._caller[: self._chunk_bytes]
            pcm8 = ulaw_to_pcm16(chunk)
            if self.playing():
                self._listen_for_barge_in(pcm8, out)
            else:
                self._speech_ms = 0
            pcm16 = self._upsampler.feed(pcm8)
            out.api.append({"action": "audio", "seq": self.seq, "data": base64.b64encode(pcm16).decode()})
            self.seq += 1
        return out

    def _listen_for_barge_in(self, pcm8: bytes, out: Outcome) -> None:
        playback = self.playback
        if playback is None or self.barge_in_ms <= 0:
            return
        voiced = voiced_frames(pcm8, tm.SAMPLE_RATE, self.vad, frame_ms=VAD_FRAME_MS)
        speech = int(voiced.sum()) * VAD_FRAME_MS
        self._speech_ms = self._speech_ms + speech if speech else 0
        started = playback.first_played_at
        backoff_over = started is not None and (self.clock() - started) * 1000 >= self.backoff_ms
        if self._speech_ms >= self.barge_in_ms and (backoff_over or self.backoff_ms <= 0):
            out.twilio.append(tm.clear(self.stream_sid))
            out.api.append({"action": "interrupt", "turn_id": playback.turn_id, "played_ms": playback.played_ms})
            playback.cleared = True
            self._speech_ms = 0
            self.barge_ins += 1

    def mark_played(self, name: str) -> Outcome:
        """Twilio played the audio up to a mark (or dropped it on ``clear``: those echoes change nothing)."""
        if name == END_MARK:
            return Outcome(ended=True)
        turn_id, _, ms = name.rpartition(":")
        playback = self.playback
        if playback is None or playback.turn_id != turn_id or playback.cleared or not ms.isdigit():
            return Outcome()
        playback.played_ms = max(playback.played_ms, int(ms))
        if playback.first_played_at is None:
            # The first mark comes ``mark_every_ms`` after playback began.
            playback.first_played_at = self.clock() - int(ms) / 1000
        return Outcome()

    def playing(self) -> bool:
        """Is agent audio sent to Twilio still unplayed (and not cleared)?"""
        playback = self.playback
        return playback is not None and not playback.cleared and playback.played_ms < playback.sent_ms

    def unplayed_ms(self) -> int:
        return self.playback.sent_ms - self.playback.played_ms if self.playing() and self.playback else 0

    # -- API -> Twilio -------------------------------------------------------------------------------------------
    def from_api(self, frame: dict[str, Any]) -> Outcome:
        kind = frame.get("type")
        turn_id = frame.get("turn_id")
        if kind == "audio" and isinstance(turn_id, str):
            try:
                pcm16 = base64.b64decode(str(frame.get("data", "")), validate=True)
            except (binascii.Error, ValueError):
                self.bad_messages += 1
                return Outcome()
            return self.agent_audio(turn_id, pcm16, int(frame.get("sample_rate") or wp.SAMPLE_RATE))
        if kind == "turn_end" and isinstance(turn_id, str):
            return self._flush(turn_id)
        if kind == "interrupted" and isinstance(turn_id, str):
            playback = self.playback
            if playback is not None and playback.turn_id == turn_id and not playback.cleared:
                playback.cleared = True
                return Outcome(twilio=[tm.clear(self.stream_sid)])
            return Outcome()
        if kind == "ended":
            self.ended = True
            out = self._flush(self.playback.turn_id) if self.playback else Outcome()
            out.twilio.append(tm.mark(self.stream_sid, END_MARK))
            return out
        return Outcome()  # ready, transcript, agent_text, pong, error: nothing for the phone

    def agent_audio(self, turn_id: str, pcm16: bytes, sample_rate: int = wp.SAMPLE_RATE) -> Outcome:
        out = Outcome()
        playback = self.playback
        if playback is None or playback.turn_id != turn_id:
            if playback is not None:
                out = self._flush(playback.turn_id)
            playback = self.playback = _Playback(turn_id, sample_rate)
        if playback.cleared or playback.complete or len(pcm16) % 2 or sample_rate != playback.sample_rate:
            return out
        ulaw = playback.rest + pcm16_to_ulaw(playback.resampler.feed(pcm16))
        whole = len(ulaw) - len(ulaw) % tm.FRAME_BYTES
        playback.rest = ulaw[whole:]
        self._send_frames(playback, ulaw[:whole], out)
        return out

    def _send_frames(self, playback: _Playback, ulaw: bytes, out: Outcome) -> None:
        for offset in range(0, len(ulaw), tm.FRAME_BYTES):
            out.twilio.append(tm.media(self.stream_sid, ulaw[offset : offset + tm.FRAME_BYTES]))
            playback.sent_ms += tm.FRAME_MS
            if playback.sent_ms - playback.marked_ms >= self.config.mark_every_ms:
                out.twilio.append(tm.mark(self.stream_sid, f"{playback.turn_id}:{playback.sent_ms}"))
                playback.marked_ms = playback.sent_ms

    def _flush(self, turn_id: str) -> Outcome:
        """The turn's audio is complete: its last partial frame (padded with silence) and a last mark."""
        out = Outcome()
        playback = self.playback
        if playback is None or playback.turn_id != turn_id or playback.cleared or playback.complete:
            return out
        playback.complete = True
        playback.rest += pcm16_to_ulaw(playback.resampler.flush())
        if playback.rest:
            padded = playback.rest + tm.ULAW_SILENCE * (-len(playback.rest) % tm.FRAME_BYTES)
            playback.rest = b""
            self._send_frames(playback, padded, out)
        if playback.marked_ms < playback.sent_ms:
            out.twilio.append(tm.mark(self.stream_sid, f"{playback.turn_id}:{playback.sent_ms}"))
            playback.marked_ms = playback.sent_ms
        return out
