"""One conversational turn: end of utterance -> STT -> retrieval -> LLM stream -> sentences -> TTS -> audio frames.

Transport-agnostic: frames go to a ``TurnSink`` (the WebSocket poster, or a list for the HTTP routes), and the
sink is asked before every post whether the turn was cancelled (barge-in), so a turn stops within one chunk.
The LLM stream and speech synthesis overlap: the first sentence is spoken while the model is still writing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol

from airies.agents.config import AgentConfig
from airies.agents.engines import turn_engines
from airies.agents.prompts import llm_request
from airies.conversations import protocol as wp
from airies.core.money import format_usd
from airies.core.observability import provider_span, traced_stream
from airies.core.text import SentenceSegmenter, contains_phrase, split_sentences
from airies.llm import catalog
from airies.llm.cost import token_cost
from airies.llm.vendors.base import LLMRequest, StreamEnd, TextDelta, ToolCallDelta, Usage
from airies.tools.dispatch import LLMStreamer, RoundResult, ToolDispatcher, ToolWait, tool_rounds
from airies.tools.runner import ToolOutcome, ToolRunner
from airies.voice import catalog as voice_catalog
from airies.voice.speech_models import expected_phrases_for_agent
from airies.voice.stt.base import STTOptions, STTProvider, Transcript
from airies.voice.tts.base import TTSOptions, TTSProvider

# (account_id, knowledge_base_ids, query) -> passages [{"text", "score", "source", ...}]
Retriever = Callable[[str, list[str], str], Awaitable[list[dict[str, Any]]]]
# Sentences synthesised ahead of the one being spoken. One hides the next sentence's TTS first byte behind this
# one's posts; more would bill synthesis that a barge-in is likelier to waste.
SYNTHESIS_AHEAD = 1
# The smallest agent audio frame after the first, unless the sentence ends: smaller ones cost a post each for little.
MIN_OUT_CHUNK_MS = 100
# The most a frame holds while the caller's player has less than this queued (the first frame among them): a large
# frame takes a slow link longer to carry, so frames grow only with the audio already ahead of playback.
START_OUT_CHUNK_MS = 750

# --- voice activity per chunk ----------------------------------------------------------------------------------
_VAD: Any = None


def chunk_activity(pcm16: bytes, sample_rate: int = wp.SAMPLE_RATE, *, aggressiveness: int = 2) -> tuple[float, float]:
    """(speech_ms, trailing_silence_ms) of one chunk: the per-frame state a stateless Lambda can keep in DynamoDB."""
    global _VAD
    import webrtcvad  # lazy: only the audio path needs it

    from airies.voice.audio.vad import voiced_frames  # numpy

    if _VAD is None:
        _VAD = webrtcvad.Vad(aggressiveness)
    frame = sample_rate * 30 // 1000 * 2  # 30 ms frames
    whole = len(pcm16) - len(pcm16) % frame
    voiced = voiced_frames(pcm16[:whole], sample_rate, _VAD).nonzero()[0]
    silent_frames = whole // frame - (int(voiced[-1]) + 1 if len(voiced) else 0)
    rest = (len(pcm16) % frame) / 2 / sample_rate * 1000
    return 30.0 * len(voiced), 30.0 * silent_frames + rest


# --- the turn --------------------------------------------------------------------------------------------------
class TurnMode(StrEnum):
    """What a turn starts from (stored as the turn's ``input_mode``)."""

    AUDIO = "audio"  # the caller's utterance: transcribed first
    TEXT = "text"  # typed text
    NONE = "none"  # nothing from the caller: a scripted reply, or the model speaks first


class TurnSink(Protocol):
    async def send(self, message: dict[str, Any]) -> bool:
        """Deliver one frame; False when the caller is gone."""
        ...

    async def cancelled(self) -> tuple[bool, int | None]:
        """(cancelled, played_ms reported by the client)."""
        ...


@dataclass
class TurnEngines:
    llm: LLMStreamer
    stt: STTProvider | None = None
    tts: TTSProvider | None = None
    retrieve: Retriever | None = None
    tools: ToolRunner | None = None  # runs the agent's custom tools on the business's server


@dataclass
class TurnInput:
    turn_id: str
    seq: int
    mode: TurnMode
    account_id: str
    conversation_id: str
    pcm: bytes | None = None
    text: str | None = None
    endpointing_ms: float = 0.0
    eou_at: float = field(default_factory=time.perf_counter)
    # A fixed reply (first message, reminder, end-call message, out-of-credit notice): no LLM call.
    scripted_reply: str | None = None
    speak: bool = True  # synthesise audio (False: a text-only HTTP turn)
    can_transfer: bool = False  # the channel can hand the call over (telephony): transfer_call ends the call
    # Post the reply's text as the LLM writes it (each post: the tokens written since the last) and synthesise
    # nothing: a carrier's relay speaks it.
    stream_text: bool = False


@dataclass
class SpokenSentence:
    text: str
    start_ms: float
    end_ms: float
    complete: bool


@dataclass(frozen=True)
class TransferRequest:
    """The agent's ``transfer_call``: where the call goes (E.164 number or SIP URI) and what is said first."""

    destination: str
    message: str = ""


@dataclass
class TurnResult:
    turn_id: str
    seq: int
    mode: TurnMode
    user_text: str | None
    agent_text_generated: str
    agent_text: str  # what the caller actually received
    status: str  # completed | interrupted | failed | no_speech | gone
    interrupted: bool
    latency: dict[str, float | None]
    usage: dict[str, Any]
    cost: dict[str, str]
    cost_usd: Decimal
    end_call: str | None = None
    transfer: TransferRequest | None = None  # set when the agent hands the call over (phone calls)
    agent_pcm: bytes = b""
    user_pcm: bytes = b""
    error: dict[str, Any] | None = None
    passages: int = 0
    spoken: list[SpokenSentence] = field(default_factory=list)  # per sentence, where its audio starts and ends
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # ``ToolOutcome.record()`` per call, in order
    played_ms: int | None = None  # an interrupted turn: what the client said it played (None: not said)


def heard_text(sentences: list[SpokenSentence], heard_ms: float) -> str:
    """What the caller heard: whole sentences played before ``heard_ms``, plus the words of a partly played one."""
    words: list[str] = []
    for sentence in sentences:
        if sentence.end_ms <= heard_ms and sentence.complete:
            words += sentence.text.split()
        elif sentence.start_ms < heard_ms:
            span = max(sentence.end_ms - sentence.start_ms, 1.0)
            parts = sentence.text.split()
            words += parts[: int(len(parts) * (heard_ms - sentence.start_ms) / span)]
            break
        else:
            break
    return " ".join(words)


def heard_reply(sentences: list[SpokenSentence], played_ms: int | None) -> str:
    """What the caller heard of a reply: everything posted, or only the first ``played_ms`` of its audio when the
    client reported how much it played (a barge-in while the reply is posted, or after its ``turn_end``)."""
    audio_ms = max((s.end_ms for s in sentences), default=0.0)
    return heard_text(sentences, audio_ms if played_ms is None else min(played_ms, audio_ms))


def price_usage(usage: dict[str, Any]) -> tuple[dict[str, str], Decimal]:
    """Exact cost of one turn's usage at catalog prices (providers with no price: 0, flagged unpriced)."""
    stt = Decimal(0)
    if usage.get("stt_seconds"):
        entry = voice_catalog.stt_providers().get(usage.get("stt_provider") or "")
        if entry:
            stt = Decimal(str(entry["price_per_minute"])) * Decimal(str(usage["stt_seconds"])) / 60
    llm = Decimal(0)
    model = catalog.llm_model(usage.get("llm_provider") or "", usage.get("llm_model") or "")
    if model:
        tokens = Usage(
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            cached_tokens=int(usage.get("cached_tokens", 0)),
        )
        llm = token_cost(model, tokens)
    tts = Decimal(0)
    if usage.get("tts_characters"):
        entry = voice_catalog.tts_providers().get(usage.get("tts_provider") or "")
        if entry:
            tts = Decimal(str(entry["price_per_1k_chars"])) * int(usage["tts_characters"]) / 1000
    q = Decimal("0.000000001")
    parts = {"stt": stt.quantize(q), "llm": llm.quantize(q), "tts": tts.quantize(q)}
    total = sum(parts.values(), Decimal(0))
    return {**{k: format_usd(v) for k, v in parts.items()}, "total": format_usd(total)}, total


class TurnRunner:
    def __init__(
        self,
        engines: TurnEngines,
        *,
        out_chunk_ms: int = wp.MAX_OUT_CHUNK_MS,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.engines = engines
        self.out_chunk_bytes = max(wp.BYTES_PER_MS * 20, out_chunk_ms * wp.BYTES_PER_MS)
        self.clock = clock

    def _ms(self, start: float) -> float:
        return round((self.clock() - start) * 1000, 2)

    async def run(
        self,
        config: AgentConfig,
        history: list[dict[str, str]] | Callable[[], list[dict[str, str]]],
        inp: TurnInput,
        sink: TurnSink,
    ) -> TurnResult:
        """``history`` may be a callable: it is then loaded on a thread while speech is transcribed or passages are
        retrieved, else when the LLM request is built (a thread's hand-off would cost more than it hides)."""
        overlapped = inp.mode == TurnMode.AUDIO or (self.engines.retrieve is not None and self._retrieves_first(config))
        history_task = asyncio.ensure_future(asyncio.to_thread(history)) if callable(history) and overlapped else None
        if self.engines.tools is not None and inp.scripted_reply is None:
            self.engines.tools.prefetch(inp.conversation_id)  # the signing secret, read while the turn runs
        try:
            return await self._run(config, history, history_task, inp, sink)
        finally:
            if self.engines.tools is not None:
                await self.engines.tools.drain()  # async tools still in flight: bounded by their timeout
            if history_task is not None and not history_task.done():
                # A turn that needs no history (a scripted reply, no speech, a failure) still waits for the read:
                # it runs on the caller's database session, which the caller uses next (storing the turn).
                await asyncio.gather(history_task, return_exceptions=True)

    async def _run(
        self,
        config: AgentConfig,
        history: list[dict[str, str]] | Callable[[], list[dict[str, str]]],
        history_task: asyncio.Future[list[dict[str, str]]] | None,
        inp: TurnInput,
        sink: TurnSink,
    ) -> TurnResult:
        t0 = inp.eou_at
        latency: dict[str, float | None] = {
            "endpointing_ms": round(inp.endpointing_ms, 2),
            "stt_ms": None,
            "retrieval_ms": None,
            "llm_first_token_ms": None,
            "tts_first_byte_ms": None,
            "first_audio_ms": None,
            "llm_total_ms": None,
            "tool_ms": None,
            "total_ms": None,
        }
        usage: dict[str, Any] = {
            "stt_seconds": 0.0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cached_tokens": 0,
            "tts_characters": 0,
        }
        state = _TurnState(stream=inp.stream_text)
        user_text = inp.text

        def result(status: str, *, error: dict[str, Any] | None = None) -> TurnResult:
            latency["total_ms"] = self._ms(t0)
            usage["engines"] = turn_engines(config, usage)  # which engine actually answered, per stage
            cost, total = price_usage(usage)
            delivered = state.delivered_text(inp.speak)
            return TurnResult(
                turn_id=inp.turn_id,
                seq=inp.seq,
                mode=inp.mode,
                user_text=user_text,
                agent_text_generated=state.generated,
                agent_text=delivered,
                status=status,
                interrupted=status == "interrupted",
                latency=latency,
                usage=usage,
                cost=cost,
                cost_usd=total,
                end_call=state.end_call,
                transfer=state.transfer,
                tool_calls=[outcome.record() for outcome in state.tool_outcomes],
                agent_pcm=bytes(state.agent_pcm),
                user_pcm=inp.pcm or b"",
                error=error,
                passages=state.passages,
                spoken=list(state.sentences),
                played_ms=state.played_ms,
            )

        # 1. speech to text
        if inp.mode == TurnMode.AUDIO:
            if self.engines.stt is None:
                return result("failed", error={"code": "stt_unavailable", "message": "no speech-to-text engine"})
            start = self.clock()
            options = STTOptions(
                model=config.transcriber.model,
                language=config.transcriber.language,
                keywords=tuple(config.transcriber.keywords),
                expected_phrases=expected_phrases_for_agent(config),  # the recogniser's domain: the whole agent
            )
            try:
                with provider_span("stt", getattr(self.engines.stt, "name", config.transcriber.provider)):
                    transcript: Transcript = await self.engines.stt.transcribe(inp.pcm or b"", wp.SAMPLE_RATE, options)
            except Exception as exc:  # provider failures end the turn, never the conversation
                return result("failed", error={"code": "stt_failed", "message": str(exc)})
            latency["stt_ms"] = self._ms(start)
            usage["stt_seconds"] = round(transcript.duration_seconds or len(inp.pcm or b"") / 2 / wp.SAMPLE_RATE, 3)
            usage["stt_provider"], usage["stt_model"] = transcript.provider, transcript.model
            user_text = transcript.text.strip()
            if not user_text:
                await sink.send(wp.transcript(inp.turn_id, ""))
                return result("no_speech")
        reply = inp.scripted_reply
        if reply is None and user_text and (phrase := contains_phrase(user_text, config.end_call_phrases)):
            state.end_call = "caller_end_call_phrase"
            usage["end_call_phrase"] = phrase
            reply = config.end_call_message or ""

        segments: asyncio.Queue[str | None] = asyncio.Queue()
        producer: asyncio.Task[None] | None = None
        if reply is not None:
            state.generated = reply
            for sentence in state.pieces(reply):
                segments.put_nowait(sentence)
            segments.put_nowait(None)
        else:
            passages: list[dict[str, Any]] = []
            if self.engines.retrieve is not None and self._retrieves_first(config) and user_text:
                start = self.clock()
                try:
                    passages = await self.engines.retrieve(inp.account_id, list(config.knowledge_base_ids), user_text)
                except Exception as exc:  # retrieval is best effort: answer without it rather than go silent
                    usage["retrieval_error"] = str(exc)[:200]
                latency["retrieval_ms"] = self._ms(start)
                state.passages = len(passages)
            if history_task is not None:
                history = await history_task
            elif callable(history):
                history = history()
            ids = {"account_id": inp.account_id, "conversation_id": inp.conversation_id, "turn_id": inp.turn_id}
            request = llm_request(config, history, user_text, passages, metadata=ids)
            producer = asyncio.create_task(self._produce(request, segments, state, latency, usage, config, inp))
            await asyncio.sleep(0)  # the LLM request leaves before the transcript post's SDK work holds the GIL

        try:
            # The transcript goes out while the model is already working on the reply.
            if user_text is not None and not await sink.send(wp.transcript(inp.turn_id, user_text)):
                status = "gone"
            else:
                state.check = asyncio.ensure_future(sink.cancelled())
                status = await self._speak(config, inp, sink, segments, state, latency, usage, t0)
        finally:
            if state.check is not None and not state.check.done():
                state.check.cancel()
            if producer is not None and not producer.done():
                producer.cancel()
                try:
                    await producer
                except (asyncio.CancelledError, Exception):
                    pass
        if producer is not None and producer.done() and not producer.cancelled() and producer.exception():
            failure = producer.exception()
            if status == "completed" and not state.generated:
                return result("failed", error={"code": "llm_failed", "message": str(failure)})
        if (
            state.end_call is None
            and status == "completed"
            and state.generated
            and contains_phrase(state.generated, config.end_call_phrases)
        ):
            state.end_call = "assistant_end_call_phrase"
        return result(status)

    @staticmethod
    def _retrieves_first(config: AgentConfig) -> bool:
        """The agent's passages are retrieved before the LLM is asked (else the LLM asks for them, as a tool)."""
        return bool(config.knowledge_base_ids) and not config.builtin_tools.query_knowledge_base.enabled

    async def _produce(
        self,
        request: LLMRequest,
        segments: asyncio.Queue[str | None],
        state: _TurnState,
        latency: dict[str, float | None],
        usage: dict[str, Any],
        config: AgentConfig,
        inp: TurnInput,
    ) -> None:
        """The reply, streamed into ``segments``; when the LLM calls tools, they run (their waiting messages spoken
        meanwhile), their results go back to the LLM and the reply streams on, for at most ``MAX_TOOL_ROUNDS``."""
        start = self.clock()
        segmenter = SentenceSegmenter()
        dispatcher = ToolDispatcher(
            config.tools,
            config.builtin_tools,
            config.knowledge_base_ids,
            caller=self.engines.tools.call_many if self.engines.tools is not None else None,
            retrieve=self.engines.retrieve,
            can_transfer=inp.can_transfer,
            clock=self.clock,
        )
        rounds = tool_rounds(
            request,
            lambda req: traced_stream("llm", config.llm.provider, self.engines.llm(req)),
            dispatcher,
            account_id=inp.account_id,
            conversation_id=inp.conversation_id,
            turn_id=inp.turn_id,
        )
        tools_start = start
        try:
            async for event in rounds:
                if isinstance(event, TextDelta):
                    if latency["llm_first_token_ms"] is None and event.text:
                        latency["llm_first_token_ms"] = self._ms(start)
                    state.generated += event.text
                    if state.stream:
                        segments.put_nowait(event.text)
                    else:
                        for sentence in segmenter.push(event.text):
                            segments.put_nowait(sentence)
                elif isinstance(event, ToolCallDelta):
                    if event.name == "end_call":
                        state.end_call = "end_call_tool"
                elif isinstance(event, StreamEnd):
                    latency["llm_total_ms"] = self._ms(start)
                    state.llm_done_at = self.clock()
                    for key, value in (
                        ("prompt_tokens", event.usage.prompt_tokens),
                        ("completion_tokens", event.usage.completion_tokens),
                        ("cached_tokens", event.usage.cached_tokens),
                    ):
                        usage[key] = usage.get(key, 0) + value
                    usage.update(
                        llm_provider=event.provider,
                        llm_model=event.model,
                        tokens_estimated=bool(usage.get("tokens_estimated")) or event.usage.estimated,
                    )
                    # the router's attempts before the provider that answered (ProviderFailovers metric)
                    failovers = max(0, len(event.metadata.get("attempts") or ()) - 1)
                    usage["llm_failovers"] = usage.get("llm_failovers", 0) + failovers
                    if any(call.name == "end_call" for call in event.tool_calls):
                        state.end_call = "end_call_tool"
                elif isinstance(event, ToolWait):  # the waiting messages are spoken while the tools run
                    for sentence in segmenter.flush():  # what the LLM said before calling is heard before the wait
                        segments.put_nowait(sentence)
                    segmenter = SentenceSegmenter()
                    tools_start = self.clock()
                    for message in event.messages:
                        self._say(message, segments, state)
                elif isinstance(event, RoundResult):
                    self._tools_done(event, segments, state, latency, tools_start)
            for sentence in segmenter.flush():
                segments.put_nowait(sentence)
            if state.end_call == "end_call_tool" and not state.generated.strip() and config.end_call_message:
                self._say(config.end_call_message, segments, state)
        finally:
            segments.put_nowait(None)

    @staticmethod
    def _say(text: str, segments: asyncio.Queue[str | None], state: _TurnState) -> None:
        """A fixed line (a tool's waiting or failure message) in the reply, spoken after what came before."""
        separator = "" if not state.generated or state.generated.endswith(" ") else " "
        state.generated += separator + text
        for sentence in state.pieces(separator + text if state.stream else text):
            segments.put_nowait(sentence)

    def _tools_done(
        self,
        done: RoundResult,
        segments: asyncio.Queue[str | None],
        state: _TurnState,
        latency: dict[str, float | None],
        start: float,
    ) -> None:
        """A round of tool calls (``airies.tools.dispatch``) is over: its outcomes kept, its failure messages said."""
        state.tool_outcomes += done.outcomes
        state.passages += done.passages
        if done.transfer is not None:
            state.transfer = TransferRequest(*done.transfer)
            state.end_call = "transferred"
        for message in done.say:
            self._say(message, segments, state)
        latency["tool_ms"] = round((latency["tool_ms"] or 0.0) + (self.clock() - start) * 1000, 2)

    async def _speak(
        self,
        config: AgentConfig,
        inp: TurnInput,
        sink: TurnSink,
        segments: asyncio.Queue[str | None],
        state: _TurnState,
        latency: dict[str, float | None],
        usage: dict[str, Any],
        t0: float,
    ) -> str:
        tts = self.engines.tts if inp.speak and not inp.stream_text else None
        options = TTSOptions(
            voice_id=config.voice.voice_id,
            model=config.voice.model,
            output_format="pcm_16000",
            speed=config.voice.speed,
            stability=config.voice.stability,
            similarity_boost=config.voice.similarity_boost,
            style=config.voice.style,
            extra={
                "provider": config.voice.provider,
                "fallbacks": [fb.model_dump() for fb in config.voice.fallback_voices],
            },
        )
        if tts is not None:
            usage["tts_provider"] = getattr(tts, "name", config.voice.provider)
            usage["tts_model"] = config.voice.model
        # Sentences are synthesised ahead of the one being posted (``SYNTHESIS_AHEAD``): the next sentence's TTS
        # first byte is waited out while this one's frames leave, not after its last frame.
        ready: asyncio.Queue[_Synthesis | None] = asyncio.Queue()
        slots = asyncio.Semaphore(1 + (SYNTHESIS_AHEAD if tts is not None else 0))  # text only: nothing to hide
        feeder = asyncio.create_task(self._synthesize(tts, options, segments, ready, slots, state, usage))
        current: _Synthesis | None = None
        try:
            while True:
                current = await ready.get()
                if current is None:
                    await feeder  # the reply's end, or the feeder's failure: raised here, not lost
                    return "completed"
                if await self._was_cancelled(sink, state):
                    return await self._interrupted(inp, sink, state)
                self._prefetch_check(sink, state)
                outcome = await self._speak_sentence(
                    inp, sink, state, latency, t0, current.sentence, current.audio, current.pump, current.start, usage
                )
                if outcome:
                    return outcome
                slots.release()
                if tts is not None:
                    usage["tts_provider"] = getattr(tts, "name", config.voice.provider)
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
            unspoken: list[_Synthesis | None] = [current]
            while not ready.empty():
                unspoken.append(ready.get_nowait())
            for synthesis in unspoken:
                if synthesis is not None and synthesis.pump is not None and not synthesis.pump.done():
                    synthesis.pump.cancel()

    async def _synthesize(
        self,
        tts: TTSProvider | None,
        options: TTSOptions,
        segments: asyncio.Queue[str | None],
        ready: asyncio.Queue[_Synthesis | None],
        slots: asyncio.Semaphore,
        state: _TurnState,
        usage: dict[str, Any],
    ) -> None:
        """Each sentence of the reply, its synthesis started, into ``ready``; at most ``SYNTHESIS_AHEAD`` ahead of
        the sentence being spoken. Synthesis starts before the barge-in check is awaited and the sentence's text
        posted: the TTS first byte is the longest wait left, and those posts' SDK work would delay its start."""
        try:
            while True:
                await slots.acquire()
                sentence = await segments.get()
                if sentence is None:
                    state.reply_synthesised = True
                    return
                finished = False
                if state.stream:
                    # Every token already waiting goes out in one post: one barge-in check and one post per post,
                    # not per LLM token, when the model writes faster than a post leaves.
                    sentence, finished = self._waiting(sentence, segments)
                audio: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
                pump = None
                if tts is not None and not state.known_cancelled():
                    pump = asyncio.create_task(self._pump(tts, sentence, options, audio))
                    usage["tts_characters"] += len(sentence)  # what the vendor is asked for is what it bills
                ready.put_nowait(_Synthesis(sentence, audio, pump, self.clock()))
                state.synthesised += 1
                await asyncio.sleep(0)  # the request leaves before the speaker's posts take the thread
                if finished:
                    state.reply_synthesised = True
                    return
        finally:
            ready.put_nowait(None)

    @staticmethod
    def _waiting(first: str, segments: asyncio.Queue[str | None]) -> tuple[str, bool]:
        """``first`` and the pieces queued behind it, joined; True when the end of the reply (None) was among them."""
        pieces = [first]
        while not segments.empty():
            piece = segments.get_nowait()
            if piece is None:
                return "".join(pieces), True
            pieces.append(piece)
        return "".join(pieces), False

    @staticmethod
    async def _pump(
        tts: TTSProvider, sentence: str, options: TTSOptions, out: asyncio.Queue[bytes | BaseException | None]
    ) -> None:
        try:
            async for chunk in traced_stream("tts", getattr(tts, "name", "tts"), tts.synthesize(sentence, options)):
                await out.put(chunk)
            await out.put(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a TTS failure loses this sentence's audio; the text was already sent
            await out.put(exc)

    async def _speak_sentence(
        self,
        inp: TurnInput,
        sink: TurnSink,
        state: _TurnState,
        latency: dict[str, float | None],
        t0: float,
        sentence: str,
        audio: asyncio.Queue[bytes | BaseException | None],
        pump: asyncio.Task[None] | None,
        start: float,
        usage: dict[str, Any],
    ) -> str | None:
        if not await sink.send(wp.agent_text(inp.turn_id, sentence if state.stream else sentence + " ")):
            return "gone"
        if state.stream and latency.get("first_text_ms") is None:
            latency["first_text_ms"] = self._ms(t0)
        spoken = SpokenSentence(sentence, state.audio_ms, state.audio_ms, complete=False)
        state.sentences.append(spoken)
        if pump is None:
            spoken.complete = True
            return None
        pending = bytearray()
        while True:
            item = await audio.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                usage.setdefault("tts_errors", []).append(str(item)[:200])
                break
            if latency["tts_first_byte_ms"] is None and item:
                latency["tts_first_byte_ms"] = self._ms(start)
            pending += item
            # The first audio of a turn leaves at once; later audio is coalesced into fewer, larger frames
            # (each post costs a round trip and a barge-in read; a frame is also the barge-in granularity).
            while True:
                least, most = self._frame_bounds(state)
                if len(pending) < least:
                    break
                size = min(most, len(pending) - len(pending) % 2)
                piece, pending = bytes(pending[:size]), pending[size:]
                outcome = await self._post_audio(inp, sink, state, spoken, piece, latency, t0)
                if outcome:
                    return outcome
        if len(pending) % 2:
            pending = pending[:-1]
        if pending:
            last = state.speaking_last()  # the turn's last frame: no barge-in check for a frame after it
            outcome = await self._post_audio(inp, sink, state, spoken, bytes(pending), latency, t0, last=last)
            if outcome:
                return outcome
        spoken.complete = True
        return None

    def _frame_bounds(self, state: _TurnState) -> tuple[int, int]:
        """The least and the most audio (bytes) the next frame carries. The turn's first frame leaves at once with
        what there is, up to ``START_OUT_CHUNK_MS``. Later ones wait for as much audio as the audio already posted
        is ahead of the caller's playback (which starts with the first frame), at least ``MIN_OUT_CHUNK_MS``: a
        vendor that streams near real time never lets the player run dry while a frame fills. They hold at most
        that lead or ``START_OUT_CHUNK_MS``, whichever is more, up to ``out_chunk``: frames grow as the player's
        queue does, and the tail of a reply synthesised ahead of playback leaves in few large frames."""
        largest_ms = self.out_chunk_bytes / wp.BYTES_PER_MS
        if state.first_audio_at is None:
            return 2, int(min(START_OUT_CHUNK_MS, largest_ms)) * wp.BYTES_PER_MS
        lead_ms = state.audio_ms - (self.clock() - state.first_audio_at) * 1000
        least_ms = min(max(lead_ms, MIN_OUT_CHUNK_MS), largest_ms)
        most_ms = min(max(lead_ms, START_OUT_CHUNK_MS), largest_ms)
        return int(least_ms) * wp.BYTES_PER_MS, int(most_ms) * wp.BYTES_PER_MS

    async def _post_audio(
        self,
        inp: TurnInput,
        sink: TurnSink,
        state: _TurnState,
        spoken: SpokenSentence,
        piece: bytes,
        latency: dict[str, float | None],
        t0: float,
        *,
        last: bool = False,
    ) -> str | None:
        """Post the turn's next audio frame (numbered ``state.audio_seq``); an outcome ends the turn."""
        if await self._was_cancelled(sink, state):
            return await self._interrupted(inp, sink, state)
        # The check for the next post runs alongside this one, not after it: a post waits for the slower of the
        # two, never their sum. It starts after this post's check answered, so an interrupt that lands now is
        # seen before the post after the next one: at most one frame leaves after it. The turn's last frame has
        # no next post: a check would be a read nobody uses, competing with that post. The turn's first frame is
        # the latency the caller hears: it leaves alone, and the next frame's check starts once it is posted (that
        # frame then has the first one's audio, at least MIN_OUT_CHUNK_MS, of playback to leave in).
        first = state.first_audio_at is None
        if not last and not first:
            self._prefetch_check(sink, state)
        sent = await sink.send(wp.audio(inp.turn_id, state.audio_seq, piece))
        if not sent:
            return "gone"
        if first:
            state.first_audio_at = self.clock()
            latency["first_audio_ms"] = self._ms(t0)
            latency["first_audio_before_llm_end"] = state.llm_done_at is None
            if not last:
                self._prefetch_check(sink, state)
        state.audio_seq += 1
        state.agent_pcm += piece
        state.audio_ms += len(piece) / wp.BYTES_PER_MS
        spoken.end_ms = state.audio_ms
        return None

    @staticmethod
    async def _was_cancelled(sink: TurnSink, state: _TurnState) -> bool:
        """Barge-in check before a post, pipelined: it was started with the previous post (``_prefetch_check``)
        and has usually answered by now.

        A check started before an interrupt landed can miss it, the following one cannot: the turn stops
        within one chunk, and no post waits for a DynamoDB round trip.
        """
        task = state.check if state.check is not None else asyncio.ensure_future(sink.cancelled())
        state.check = None
        cancelled, played = await task
        if cancelled:
            state.played_ms = played
        return cancelled

    @staticmethod
    def _prefetch_check(sink: TurnSink, state: _TurnState) -> None:
        if state.check is None:
            state.check = asyncio.ensure_future(sink.cancelled())

    async def _interrupted(self, inp: TurnInput, sink: TurnSink, state: _TurnState) -> str:
        state.was_interrupted = True
        await sink.send(wp.interrupted(inp.turn_id, state.delivered_text(inp.speak)))
        return "interrupted"


@dataclass
class _Synthesis:
    """A sentence of the reply and its audio as the TTS produces it (``pump`` is None when nothing is spoken)."""

    sentence: str
    audio: asyncio.Queue[bytes | BaseException | None]
    pump: asyncio.Task[None] | None
    start: float


@dataclass
class _TurnState:
    generated: str = ""
    sentences: list[SpokenSentence] = field(default_factory=list)
    agent_pcm: bytearray = field(default_factory=bytearray)
    audio_ms: float = 0.0
    played_ms: int | None = None
    end_call: str | None = None
    transfer: TransferRequest | None = None
    tool_outcomes: list[ToolOutcome] = field(default_factory=list)
    llm_done_at: float | None = None
    was_interrupted: bool = False
    passages: int = 0
    check: asyncio.Future[tuple[bool, int | None]] | None = None
    audio_seq: int = 0
    first_audio_at: float | None = None  # when the turn's first audio frame was posted: the caller's playback starts
    synthesised: int = 0  # sentences handed to the speaker (their synthesis started, or text only)
    reply_synthesised: bool = False  # the reply's last sentence was among them
    stream: bool = False  # the reply goes out as the LLM's tokens (TurnInput.stream_text), not sentences

    def pieces(self, text: str) -> list[str]:
        """A fixed line, as it is posted: one piece when streaming text, else its sentences."""
        return [text] if self.stream else split_sentences(text)

    def speaking_last(self) -> bool:
        """The sentence being spoken is the reply's last."""
        return self.reply_synthesised and len(self.sentences) == self.synthesised

    def known_cancelled(self) -> bool:
        """The prefetched barge-in check has already answered "cancelled" (no need to start synthesis)."""
        check = self.check
        if check is None or not check.done() or check.cancelled() or check.exception() is not None:
            return False
        return check.result()[0]

    def delivered_text(self, spoken: bool) -> str:
        if self.stream:
            return "".join(s.text for s in self.sentences).strip()
        if not spoken:
            return " ".join(s.text for s in self.sentences)
        if not self.was_interrupted:
            return " ".join(s.text for s in self.sentences if s.end_ms > s.start_ms or s.complete)
        return heard_reply(self.sentences, self.played_ms)
