"""Pipecat side: a long-lived worker the orchestrator drives over stdin/stdout (one JSON object per line).

``python -m benchmarks.vs_pipecat.pipecat_driver <fake LLM base URL>`` from the checkout, under the Pipecat
environment's Python (``pipecat-ai[openai]==1.14.0`` in ``.venv-pipecat``), never the project's.
The pipeline is Pipecat's usual one with its defaults, minus the network transport, VAD and STT::

    PipelineWorker (RTVI processor and observers: its defaults; metrics and usage metrics on)
      -> LLMUserAggregator (ExternalUserTurnStrategies)
      -> OpenAILLMService (base_url = the shared fake LLM server)
      -> SilentTTS (a TTSService: 100 ms to the first chunk, then the sentence's silent PCM at once)
      -> TimingSink (where the output transport would be)
      -> LLMAssistantAggregator

Per turn: the context is set to ``n_prior`` prior messages (so both systems send the same request size), then
UserStartedSpeakingFrame, 20 ms, a finalized TranscriptionFrame, 50 ms, t0 = now, UserStoppedSpeakingFrame; the turn
ends at LLMFullResponseEndFrame at the sink. t1 = the first TTSAudioRawFrame at the sink.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

# The protocol channel is the original stdout; anything else printed goes to stderr.
_PROTO = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr

from loguru import logger  # noqa: E402
from pipecat.clocks.system_clock import SystemClock  # noqa: E402
from pipecat.frames.frames import (  # noqa: E402
    EndFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed  # noqa: E402
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.aggregators.llm_context import LLMContext  # noqa: E402
from pipecat.processors.aggregators.llm_response_universal import (  # noqa: E402
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.services.openai.llm import OpenAILLMService  # noqa: E402
from pipecat.services.settings import TTSSettings  # noqa: E402
from pipecat.services.tts_service import TTSService  # noqa: E402
from pipecat.turns.user_turn_strategies import ExternalUserTurnStrategies  # noqa: E402
from pipecat.utils.time import time_now_iso8601  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from benchmarks.vs_pipecat.reply import REPLY, TTS_MS  # noqa: E402

SYSTEM = "You are a helpful customer-support voice agent."


class Turn:
    def __init__(self) -> None:
        self.t0 = 0
        self.context_pushed: int | None = None  # the user aggregator pushed the LLMContextFrame: the LLM is called
        self.tts_calls: list[int] = []
        self.tts_first_chunk: list[int] = []
        self.first_audio: int | None = None
        self.last_audio: int | None = None
        self.n_audio = 0
        self.done = asyncio.Event()


class Current:
    turn: Turn | None = None


class ContextObserver(BaseObserver):
    """When the user aggregator hands the context to the LLM service (the pipeline clock, back to monotonic ns)."""

    def __init__(self, current: Current, clock: SystemClock) -> None:
        super().__init__()
        self.current, self.clock = current, clock

    async def on_push_frame(self, data: FramePushed) -> None:
        turn = self.current.turn
        if turn is None or data.direction != FrameDirection.DOWNSTREAM or not isinstance(data.frame, LLMContextFrame):
            return
        at = data.timestamp + self.clock._time
        if at >= turn.t0 and turn.context_pushed is None:
            turn.context_pushed = at


class SilentTTS(TTSService):
    """The TTS double: ``ttfb_s`` to the first chunk, then ``sec_per_char`` of silent PCM per character at once."""

    def __init__(
        self, *, current: Current, ttfb_s: float = TTS_MS / 1000, sec_per_char: float = 0.06, **kwargs: Any
    ) -> None:
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            sample_rate=24000,
            settings=TTSSettings(model="silent", voice="silent", language=None),
            **kwargs,
        )
        self.current, self.ttfb_s, self.sec_per_char = current, ttfb_s, sec_per_char

    def can_generate_metrics(self) -> bool:
        return True

    async def run_tts(self, text: str, context_id: str) -> Any:
        turn = self.current.turn
        if turn is not None:
            turn.tts_calls.append(time.monotonic_ns())
        await asyncio.sleep(self.ttfb_s)
        await self.start_tts_usage_metrics(text)
        total, sent = int(len(text) * self.sec_per_char * self.sample_rate) * 2, 0
        while sent < total:
            size = min(self.chunk_size, total - sent)
            await self.stop_ttfb_metrics()
            if sent == 0 and turn is not None:
                turn.tts_first_chunk.append(time.monotonic_ns())
            yield TTSAudioRawFrame(b"\x00" * size, self.sample_rate, 1, context_id=context_id)
            sent += size


class TimingSink(FrameProcessor):
    """Where the output transport would be: notes when audio arrives and when the reply ends."""

    def __init__(self, current: Current, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.current = current

    async def process_frame(self, frame: Any, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        now, turn = time.monotonic_ns(), self.current.turn
        if turn is not None and direction == FrameDirection.DOWNSTREAM and now >= turn.t0 > 0:
            if isinstance(frame, TTSAudioRawFrame):
                turn.first_audio = turn.first_audio or now
                turn.last_audio = now
                turn.n_audio += 1
            elif isinstance(frame, LLMFullResponseEndFrame):
                turn.done.set()
        await self.push_frame(frame, direction)


def prior_messages(n: int, tag: str) -> list[dict[str, str]]:
    """``n`` prior messages (user / assistant pairs) shaped like the turns the Airies side stores."""
    out: list[dict[str, str]] = []
    for k in range(n // 2):
        out.append({"role": "user", "content": f"Turn {tag}.{k:03d}: where is my order?"})
        out.append({"role": "assistant", "content": REPLY})  # what the Airies side stores
    return out


def send(obj: Any) -> None:
    _PROTO.write(json.dumps(obj) + "\n")
    _PROTO.flush()


async def main() -> None:
    base_url = sys.argv[1]
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    current, clock = Current(), SystemClock()
    context = LLMContext()
    pair = LLMContextAggregatorPair(
        context, user_params=LLMUserAggregatorParams(user_turn_strategies=ExternalUserTurnStrategies())
    )
    llm = OpenAILLMService(
        api_key="sk-local-not-used",
        base_url=base_url,
        settings=OpenAILLMService.Settings(model="fake-model", system_instruction=SYSTEM),
    )
    pipeline = Pipeline([pair.user(), llm, SilentTTS(current=current), TimingSink(current), pair.assistant()])
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(enable_metrics=True, enable_usage_metrics=True),
        clock=clock,
        observers=[ContextObserver(current, clock)],
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _on_started(_worker: Any, _frame: Any) -> None:
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    runner_task = asyncio.create_task(runner.run())
    await asyncio.wait_for(started.wait(), 30)
    await asyncio.sleep(0.5)
    from importlib.metadata import version

    send({"ok": True, "ready": True, "pid": os.getpid(), "pipecat": version("pipecat-ai")})

    async def one_turn(tag: str, n_prior: int, gap_s: float) -> dict[str, Any]:
        turn = Turn()
        context.set_messages(prior_messages(n_prior, tag + "p"))
        await worker.queue_frame(UserStartedSpeakingFrame())
        await asyncio.sleep(0.02)
        text = f"Turn {tag}: where is my order?"
        await worker.queue_frame(
            TranscriptionFrame(text=text, user_id="user", timestamp=time_now_iso8601(), finalized=True)
        )
        await asyncio.sleep(0.05)
        current.turn = turn
        cpu0 = time.process_time()
        turn.t0 = time.monotonic_ns()
        await worker.queue_frame(UserStoppedSpeakingFrame())
        try:
            await asyncio.wait_for(turn.done.wait(), 15)
        except TimeoutError:
            pass
        cpu_ms = (time.process_time() - cpu0) * 1000
        await asyncio.sleep(gap_s)  # trailing frames (TTSStopped, the assistant aggregation) settle
        current.turn = None
        return {
            "tag": tag,
            "user_text": text,
            "t0_ns": turn.t0,
            "first_audio_ns": turn.first_audio,
            "last_audio_ns": turn.last_audio,
            "n_audio": turn.n_audio,
            "llm_call_ns": turn.context_pushed,
            "tts_call_ns": turn.tts_calls[0] if turn.tts_calls else None,
            "tts_first_chunk_ns": turn.tts_first_chunk[0] if turn.tts_first_chunk else None,
            "cpu_ms": cpu_ms,
        }

    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        if command["cmd"] == "block":
            rows = [await one_turn(tag, command["n_prior"], command["gap_s"]) for tag in command["tags"]]
            send({"ok": True, "rows": rows})
        else:
            send({"ok": False, "error": f"unknown command {command['cmd']}"})
    await worker.queue_frame(EndFrame())
    try:
        await asyncio.wait_for(runner_task, 30)
    finally:
        send({"ok": True, "bye": True})


if __name__ == "__main__":
    asyncio.run(main())
