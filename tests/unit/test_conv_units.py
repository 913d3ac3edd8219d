"""Protocol parsing, sentence segmentation, heard-text accounting, pricing and conversation tokens."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from airies.agents.config import AgentConfig
from airies.conversations import protocol as wp
from airies.conversations.connections import ConnectionService
from airies.conversations.engines import VoiceTTS
from airies.conversations.live import WebSocketService
from airies.conversations.live_runtime import no_turns
from airies.conversations.service import ConversationTokens
from airies.conversations.turns import (
    SpokenSentence,
    TurnInput,
    TurnMode,
    TurnRunner,
    chunk_activity,
    heard_text,
    price_usage,
)
from airies.core.aio import run_sync
from airies.core.errors import UnauthorizedError
from airies.core.text import SentenceSegmenter, contains_phrase, split_sentences
from airies.llm.vendors.base import LLMEvent, LLMRequest
from airies.voice.tts.base import TTSOptions
from tests.doubles.conv_engines import FakeLLM, FakeSTT, FakeTTS, fake_engines, silence


def frame(**fields: object) -> str:
    return json.dumps(fields)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("", "malformed_json"),
        ("{", "malformed_json"),
        ("[1]", "malformed_json"),
        (frame(action="fly"), "unknown_action"),
        (frame(data="x"), "unknown_action"),
        (frame(action="text"), "invalid_frame"),
        (frame(action="text", text="hi", more=1), "invalid_frame"),
        (frame(action="interrupt", played_ms=-1), "invalid_frame"),
        ("x" * (wp.MAX_FRAME_BYTES + 1), "frame_too_large"),
    ],
)
def test_bad_frames_have_stable_codes(body: str, code: str) -> None:
    with pytest.raises(wp.ProtocolError) as err:
        wp.parse_client_frame(body)
    assert err.value.code == code


def test_audio_frames_are_checked() -> None:
    ok = wp.parse_client_frame(frame(action="audio", seq=3, data=base64.b64encode(b"\x01\x00" * 1600).decode()))
    assert isinstance(ok, wp.AudioFrame) and len(ok.pcm()) == 3200 and ok.seq == 3
    for data, code in [
        ("%%%", "bad_audio"),
        (base64.b64encode(b"\x01").decode(), "bad_audio"),
        (base64.b64encode(b"\x00" * (wp.MAX_CHUNK_BYTES + 2)).decode(), "audio_too_large"),
    ]:
        with pytest.raises(wp.ProtocolError) as err:
            wp.parse_client_frame(frame(action="audio", data=data)).pcm()  # type: ignore[union-attr]
        assert err.value.code == code
    # a 250 ms frame fits API Gateway's 32 KB unit with room to spare
    assert len(wp.encode(wp.audio("turn_x", 0, b"\x00" * wp.MAX_CHUNK_BYTES))) < 32 * 1024


def test_segmenter_cuts_early_but_not_inside_abbreviations_or_numbers() -> None:
    seg = SentenceSegmenter()
    out: list[str] = []
    for token in [
        "Dr.",
        "Smith",
        "sees",
        "patients",
        "at",
        "9.30",
        "a.m.",
        "daily.",
        "Call",
        "us!",
        "Is",
        "that",
        "ok?",
        "Yes",
    ]:
        out += seg.push(token + " ")
    out += seg.flush()
    assert out == ["Dr. Smith sees patients at 9.30 a.m. daily.", "Call us!", "Is that ok?", "Yes"]
    first = SentenceSegmenter(first_comma_words=6)
    assert first.push("Well, thanks for calling the clinic today, how ") == [
        "Well, thanks for calling the clinic today,"
    ]
    assert split_sentences("One. Two; three: four") == ["One.", "Two;", "three:", "four"]
    assert SentenceSegmenter().push("No boundary yet") == []


def test_heard_text_keeps_only_what_was_played() -> None:
    sentences = [
        SpokenSentence("First one here.", 0, 1000, True),
        SpokenSentence("Second has four words.", 1000, 2000, True),
        SpokenSentence("Never played.", 2000, 2000, False),
    ]
    assert heard_text(sentences, 2000) == "First one here. Second has four words."
    assert heard_text(sentences, 1500) == "First one here. Second has"
    assert heard_text(sentences, 500) == "First"
    assert heard_text(sentences, 0) == ""


def test_end_call_phrases_match_whole_words() -> None:
    assert contains_phrase("OK, bye bye!", ["goodbye", "bye bye"]) == "bye bye"
    assert contains_phrase("Goodbye.", ["goodbye"]) == "goodbye"
    assert contains_phrase("goodbyes are sad", ["goodbye"]) is None


def test_turn_cost_is_exact_at_catalog_prices() -> None:
    cost, total = price_usage(
        {
            "stt_seconds": 30.0,
            "stt_provider": "deepgram",
            "prompt_tokens": 1000,
            "cached_tokens": 200,
            "completion_tokens": 100,
            "llm_provider": "openai",
            "llm_model": "gpt-4o-mini",
            "tts_characters": 1000,
            "tts_provider": "elevenlabs",
        }
    )
    assert Decimal(cost["stt"]) == Decimal("0.00215")  # 0.0043 $/min * 0.5 min
    assert Decimal(cost["llm"]) == Decimal("0.000195")  # 800*0.15 + 200*0.075 + 100*0.6 per million
    assert Decimal(cost["tts"]) == Decimal("0.15")
    assert total == Decimal("0.152345") and cost["total"] == "0.152345000"
    offline, zero = price_usage(
        {"stt_seconds": 3.0, "stt_provider": "pocketsphinx", "tts_characters": 10, "tts_provider": "espeak"}
    )
    assert zero == 0 and offline["total"] == "0.000000000"


def test_a_turn_never_prices_more_cached_tokens_than_it_sent() -> None:
    # Some providers report more cached tokens than prompt tokens: a call prices them as an agent test does.
    cost, _ = price_usage(
        {
            "prompt_tokens": 100,
            "cached_tokens": 300,
            "completion_tokens": 0,
            "llm_provider": "openai",
            "llm_model": "gpt-4o-mini",
        }
    )
    assert Decimal(cost["llm"]) == Decimal("0.0000075")  # 100 cached tokens at 0.075 per million, none negative


def test_tokens_bind_conversation_and_expire() -> None:
    now = [1000.0]
    tokens = ConversationTokens(b"s" * 32, ttl_seconds=60, clock=lambda: now[0])
    token, _ = tokens.issue("conv_a", "acc_1")
    assert tokens.verify(token, "conv_a") == {**tokens.verify(token), "c": "conv_a", "a": "acc_1"}
    for bad, cid in [(token, "conv_b"), (token[:-2] + "xx", "conv_a"), ("", "conv_a"), ("abc", None)]:
        with pytest.raises(UnauthorizedError):
            tokens.verify(bad, cid)
    with pytest.raises(UnauthorizedError):
        ConversationTokens(b"other" * 8, clock=lambda: now[0]).verify(token)
    now[0] += 61
    with pytest.raises(UnauthorizedError) as err:
        tokens.verify(token, "conv_a")
    assert err.value.code == "token_expired"


def test_chunk_activity_sees_silence() -> None:
    assert chunk_activity(silence(250)) == (0.0, 250.0)


def test_turn_sends_provider_requests_before_posts_and_checks_barge_in_after_each_post() -> None:
    """The model and the synthesis get their requests before the posts whose SDK work could delay them; the
    barge-in check for the next audio frame starts once the previous frame is out (fresher, and not competing)."""
    events: list[str] = []

    class Sink:
        async def send(self, message: dict[str, Any]) -> bool:
            events.append(f"send {message['type']}")
            return True

        async def cancelled(self) -> tuple[bool, int | None]:
            events.append("check")
            return False, None

    class Tts(FakeTTS):
        def synthesize(self, text: str, options: Any) -> AsyncIterator[bytes]:
            events.append("tts")
            return super().synthesize(text, options)

    fake_llm = FakeLLM(reply="Hello there. Bye now.")

    async def llm(request: LLMRequest) -> AsyncIterator[LLMEvent]:
        events.append("llm")
        async for event in fake_llm(request):
            yield event

    engines = fake_engines(llm=fake_llm, tts=Tts(chunk_ms=250, ms_per_char=60))
    engines.llm = llm
    inp = TurnInput(turn_id="turn_1", seq=1, mode=TurnMode.TEXT, account_id="acc", conversation_id="conv", text="hi")
    result = asyncio.run(TurnRunner(engines).run(AgentConfig(name="x"), [], inp, Sink()))
    assert result.status == "completed" and result.agent_text == "Hello there. Bye now."
    assert events.index("llm") < events.index("send transcript")
    first_text = events.index("send agent_text")
    assert "tts" in events[:first_text]
    # every audio post is preceded by the answer of a check started after the previous post
    posts = [i for i, e in enumerate(events) if e == "send audio"]
    for before, after in itertools.pairwise(posts):
        assert "check" in events[before + 1 : after]


def test_the_next_sentence_is_synthesised_while_this_one_is_posted_and_no_further_ahead() -> None:
    """The next sentence's TTS first byte is waited out while this sentence's frames leave, not after its last one;
    and only one sentence ahead: a barge-in wastes at most one sentence of synthesis."""
    events: list[str] = []

    class SlowSink:
        async def send(self, message: dict[str, Any]) -> bool:
            if message["type"] == "audio":
                await asyncio.sleep(0.02)  # a post_to_connection round trip
            events.append(f"send {message['type']}")
            return True

        async def cancelled(self) -> tuple[bool, int | None]:
            return False, None

    class Tts(FakeTTS):
        def synthesize(self, text: str, options: Any) -> AsyncIterator[bytes]:
            events.append(f"tts {text}")
            return super().synthesize(text, options)

    reply = "One two three four. Five six seven eight. Nine ten eleven twelve."
    engines = fake_engines(llm=FakeLLM(reply=reply), tts=Tts(first_byte_s=0.05, chunk_ms=250, ms_per_char=60))
    inp = TurnInput(turn_id="turn_1", seq=1, mode=TurnMode.TEXT, account_id="acc", conversation_id="conv", text="hi")
    result = asyncio.run(TurnRunner(engines).run(AgentConfig(name="x"), [], inp, SlowSink()))
    assert result.status == "completed" and result.agent_text == reply
    texts = [i for i, e in enumerate(events) if e == "send agent_text"]
    second, third = events.index("tts Five six seven eight."), events.index("tts Nine ten eleven twelve.")
    assert second < texts[1] and events[texts[0] + 1 : second].count("send audio") < 2  # started with sentence one
    assert texts[1] < third < texts[2]  # not before sentence two is being spoken: one ahead at most
    assert result.usage["tts_characters"] == len(reply) - 2  # each sentence once (the spaces between are not spoken)


def _audio_frames(tts: FakeTTS, reply: str) -> tuple[list[int], Any]:
    """The sizes of the agent's audio frames for ``reply`` (and the turn's result)."""
    frames: list[dict[str, Any]] = []

    class Sink:
        async def send(self, message: dict[str, Any]) -> bool:
            if message["type"] == "audio":
                frames.append(message)
                assert len(json.dumps(message)) <= wp.MAX_MESSAGE_BYTES  # one API Gateway message
            return True

        async def cancelled(self) -> tuple[bool, int | None]:
            return False, None

    engines = fake_engines(llm=FakeLLM(reply=reply), tts=tts)
    inp = TurnInput(turn_id="turn_1", seq=1, mode=TurnMode.TEXT, account_id="acc", conversation_id="conv", text="hi")
    result = asyncio.run(TurnRunner(engines).run(AgentConfig(name="x"), [], inp, Sink()))
    assert [frame["seq"] for frame in frames] == list(range(len(frames)))
    sizes = [len(base64.b64decode(frame["data"])) // wp.BYTES_PER_MS for frame in frames]  # in ms
    assert sum(sizes) * wp.BYTES_PER_MS == len(result.agent_pcm)
    return sizes, result


def test_the_agents_audio_is_coalesced_into_frames_that_grow_with_the_lead_up_to_3000_ms() -> None:
    """After the turn's first frame (sent at once), a vendor that streams fast gets frames that grow with the audio
    already ahead of playback, up to ``AIRIES_WS_OUT_CHUNK_MS`` (3,000 ms by default: one 128 KB API Gateway
    message): the sentences synthesised ahead of playback leave in a few large frames."""
    sentence = "A sentence long enough to take a few seconds to say."  # 3,060 ms
    sizes, _ = _audio_frames(FakeTTS(), sentence)
    assert sizes[0] == 100  # the TTS's first chunk, at once
    assert sizes[:-1] == sorted(sizes[:-1]) and max(sizes) < 3000  # growing with the lead, which is still short
    sizes, _ = _audio_frames(FakeTTS(), " ".join([sentence] * 4))
    assert max(sizes) == wp.MAX_OUT_CHUNK_MS == 3000 and sizes.count(3000) >= 3  # the later sentences
    assert len(sizes) <= 13  # 750 ms frames: 20, 250 ms frames: 52
    largest = wp.audio("turn_" + "x" * 60, 999_999, b"\x00" * (wp.MAX_OUT_CHUNK_MS * wp.BYTES_PER_MS))
    assert len(json.dumps(largest)) <= wp.MAX_MESSAGE_BYTES  # with a long turn id and sequence number


def test_a_frame_holds_no_more_than_is_ahead_of_playback_when_the_vendor_sends_a_sentence_at_once() -> None:
    """A TTS that hands over a whole sentence in one chunk does not get one 3-second first frame: the first holds
    750 ms and each later one at most what the caller's player already has queued, so on a slow link the next
    frame arrives before the player runs dry."""
    sizes, _ = _audio_frames(FakeTTS(chunk_ms=20_000), "A sentence long enough to take a few seconds to say. " * 2)
    assert sizes[0] == 750
    queued = [sum(sizes[:i]) for i in range(1, len(sizes))]  # posted before each frame: at most the lead
    assert all(size <= max(750, lead) for size, lead in zip(sizes[1:], queued, strict=True)), sizes
    assert max(sizes) == 3000


def test_every_barge_in_read_of_a_turn_is_one_it_waits_for() -> None:
    """One check before each sentence and one before each frame, each started alongside the post before it; the
    turn's last frame starts none (no post follows it to stop): a read nobody uses would compete with that post."""
    events: list[str] = []

    class Sink:
        async def send(self, message: dict[str, Any]) -> bool:
            events.append(message["type"])
            return True

        async def cancelled(self) -> tuple[bool, int | None]:
            events.append("check")
            return False, None

    reply = "One two three four five. Six seven eight nine ten. Eleven twelve thirteen."
    engines = fake_engines(llm=FakeLLM(reply=reply), tts=FakeTTS())
    inp = TurnInput(turn_id="turn_1", seq=1, mode=TurnMode.TEXT, account_id="acc", conversation_id="conv", text="hi")
    result = asyncio.run(TurnRunner(engines).run(AgentConfig(name="x"), [], inp, Sink()))
    assert result.status == "completed" and events.count("agent_text") == 3 and events.count("audio") > 3
    assert events.count("check") == events.count("agent_text") + events.count("audio")


def test_the_turns_first_audio_frame_is_posted_with_no_barge_in_read_beside_it() -> None:
    """The first frame is the latency the caller hears: no read competes with its post. The check for the frame
    after it starts once it is out, and every later frame still waits for a check started after the post before."""
    in_flight = [0]
    posts: list[int] = []  # reads in flight while each audio frame was posted
    events: list[str] = []

    class Sink:
        async def send(self, message: dict[str, Any]) -> bool:
            if message["type"] == "audio":
                await asyncio.sleep(0)  # a read started alongside has begun by now
                posts.append(in_flight[0])
                await asyncio.sleep(0.005)
            events.append(message["type"])
            return True

        async def cancelled(self) -> tuple[bool, int | None]:
            in_flight[0] += 1
            events.append("check")
            await asyncio.sleep(0.002)
            in_flight[0] -= 1
            return False, None

    engines = fake_engines(llm=FakeLLM(reply="One two three four five six seven."), tts=FakeTTS())
    inp = TurnInput(turn_id="turn_1", seq=1, mode=TurnMode.TEXT, account_id="acc", conversation_id="conv", text="hi")
    result = asyncio.run(TurnRunner(engines).run(AgentConfig(name="x"), [], inp, Sink()))
    assert result.status == "completed" and len(posts) >= 3
    assert posts[0] == 0 and max(posts[1:-1]) == 1  # later frames keep their read alongside
    assert events.count("check") == events.count("agent_text") + len(posts)  # still one read per post after it


def test_a_vendor_streaming_in_real_time_gets_small_frames_so_playback_never_runs_dry() -> None:
    """A frame waits only for as much audio as is already ahead of the caller's playback: with a vendor that
    streams in real time that is about one of its chunks, never a large frame the player would not have."""
    sizes, _ = _audio_frames(FakeTTS(chunk_ms=100, per_chunk_s=0.1), "Real time speech for two.")  # 1,500 ms
    assert sizes and max(sizes) <= 200, sizes


def test_audio_chunks_under_80_ms_are_refused_unless_they_end_the_utterance() -> None:
    def parse(pcm: bytes, **extra: object) -> wp.AudioFrame:
        message = wp.parse_client_frame(frame(action="audio", data=base64.b64encode(pcm).decode(), **extra))
        assert isinstance(message, wp.AudioFrame)
        return message

    assert len(parse(b"\x00" * wp.MIN_CHUNK_BYTES).pcm()) == 2560  # 80 ms: accepted
    for size in (2, 640, wp.MIN_CHUNK_BYTES - 2):  # one sample, 20 ms, just under 80 ms
        with pytest.raises(wp.ProtocolError) as err:
            parse(b"\x00" * size).pcm()
        assert err.value.code == "audio_too_small" and err.value.details == {"bytes": size, "min_bytes": 2560}
    last = parse(b"\x00" * 640, end_of_utterance=True)
    assert last.end_of_utterance and len(last.pcm()) == 640
    with pytest.raises(wp.ProtocolError) as err:
        parse(b"\x00" * 640, end_of_utterance="yes please")
    assert err.value.code == "invalid_frame"
    assert wp.ready("conv_x", agent_id=None, agent_version=1)["audio"]["min_chunk_ms"] == 80


def test_voice_runtime_drops_stale_connections_after_a_snapstart_restore(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util
    import sys
    import types
    from pathlib import Path

    from airies.conversations import live_runtime as websocket
    from airies.core.config import Settings

    registered: list[object] = []
    fake = types.ModuleType("snapshot_restore_py")
    fake.register_after_restore = registered.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", fake)
    path = Path(__file__).resolve().parents[2] / "functions" / "voice_ws" / "voice_runtime.py"
    spec = importlib.util.spec_from_file_location("_test_voice_runtime", path)
    assert spec is not None and spec.loader is not None
    runtime = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runtime)
    assert registered == [runtime.after_restore]

    class Database:
        disposed = 0

        def dispose(self) -> None:
            self.disposed += 1

    old_client = object()
    store = types.SimpleNamespace(client=old_client)
    service = types.SimpleNamespace(
        settings=Settings(stage="local", aws_region="us-east-1"),
        database=Database(),
        store=store,
        recorder=None,
        publisher=None,
    )
    runtime.set_service(service)
    websocket._management_clients["https://example"] = object()
    loop_before = run_sync(_loop)  # this thread's kept event loop
    assert run_sync(_loop) is loop_before
    runtime.after_restore()
    assert service.database.disposed == 1
    assert store.client is old_client  # built into the snapshot, it never sent a request: nothing pooled to drop
    assert websocket._management_clients == {}
    loop_after = run_sync(_loop)
    assert loop_after is not loop_before and loop_before.is_closed()


async def _loop() -> object:
    return asyncio.get_running_loop()


def _load_voice_runtime(name: str) -> Any:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "functions" / "voice_ws" / "voice_runtime.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("initialization", ["snap-start", "on-demand"])
def test_voice_runtime_builds_its_service_into_a_snapstart_snapshot(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, tmp_path: Any, initialization: str
) -> None:
    """While SnapStart initializes (and only then), importing the voice functions' runtime builds the service, so
    a restored container's handshake or first frame finds it built. Building connects to no database: the
    database here refuses every connection. After the restore the snapshot's service is kept, its pool dropped."""
    import gc

    from moto import mock_aws
    from sqlalchemy.exc import DBAPIError

    from airies.core import database as database_module
    from airies.core.config import get_settings
    from airies.telephony.relay import RelayHandshake

    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", initialization)
    monkeypatch.setenv("AIRIES_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", "postgresql+pg8000://postgres@127.0.0.1:9/refuses")  # nothing listens on 9
    monkeypatch.setenv("AIRIES_WEBHOOK_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/123456789012/webhooks")
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setattr(gc, "freeze", lambda: None)  # the build's settle() would freeze this test process's heap
    monkeypatch.setattr(database_module, "_databases", {})  # the container-wide engines, this test's own
    get_settings.cache_clear()  # the container's settings are read from this environment, not an earlier test's
    request.addfinalizer(get_settings.cache_clear)
    with mock_aws():
        runtime = _load_voice_runtime(f"_test_voice_runtime_{initialization.replace('-', '_')}")
        runtime.start(relay_handshake=RelayHandshake)  # as $connect's init does
        turns = _load_voice_runtime(f"_test_voice_runtime_turns_{initialization.replace('-', '_')}")
        turns.start(turns=WebSocketService)  # as $default's init does
        built = runtime.runtime.built
        if initialization != "snap-start":
            assert built is None and turns.runtime.built is None  # an on-demand container builds it when invoked
            return
        # $connect's service opens sessions and runs no turn; $default's runs them and publishes their events.
        assert type(built) is ConnectionService and built.runtime.engines is no_turns
        assert isinstance(built.relay_verifier, RelayHandshake)
        with pytest.raises(RuntimeError):
            runtime.turn_service()
        turn_service = turns.turn_service()
        assert isinstance(turn_service, WebSocketService) and turn_service.relay_verifier is None
        publisher = turn_service.runtime.publisher
        assert publisher is not None and publisher.queue is not None
        store_client = built.store.client
        with pytest.raises(DBAPIError), built.database.session() as session:  # the database was never reached
            session.connection()
        runtime.after_restore()
        assert runtime.service() is built and built.store.client is store_client


def test_a_turn_that_needs_no_history_still_waits_for_its_read() -> None:
    """The history is read on a thread with the caller's database session while the speech is transcribed; a turn
    that ends without it (a caller's end-call phrase: a scripted goodbye) must not return while that read still
    runs, or the caller's next use of the session (storing the turn) races it (on PostgreSQL: a corrupted protocol
    exchange)."""
    import threading
    import time

    first_frame = threading.Event()
    reads: list[str] = []

    def history() -> list[dict[str, str]]:
        first_frame.wait(10)
        time.sleep(0.3)  # a slow query: still running when the short goodbye has been posted
        reads.append("done")
        return []

    class Sink:
        async def send(self, message: dict[str, Any]) -> bool:
            first_frame.set()
            return True

        async def cancelled(self) -> tuple[bool, int | None]:
            return False, None

    inp = TurnInput(
        turn_id="turn_1", seq=1, mode=TurnMode.AUDIO, account_id="acc", conversation_id="c", pcm=silence(500)
    )
    engines = fake_engines(stt=FakeSTT(text="ok goodbye"), tts=FakeTTS(ms_per_char=1))

    async def turn() -> tuple[Any, list[str]]:
        result = await TurnRunner(engines).run(AgentConfig(name="x"), history, inp, Sink())
        return result, list(reads)  # what had been read when the turn returned (asyncio.run waits for threads)

    result, read_when_returned = asyncio.run(turn())
    assert result.end_call == "caller_end_call_phrase"
    assert read_when_returned == ["done"]


@pytest.mark.parametrize(
    ("mode", "knowledge", "on_a_thread"),
    [(TurnMode.TEXT, False, False), (TurnMode.TEXT, True, True), (TurnMode.AUDIO, False, True)],
)
def test_the_history_is_read_on_a_thread_only_when_other_work_hides_it(
    mode: TurnMode, knowledge: bool, on_a_thread: bool
) -> None:
    """Speech to transcribe or passages to retrieve first: the history is read beside them, on a thread. A typed
    turn of an agent without knowledge has nothing to hide the read behind: it is read where the request is built,
    and the thread's hand-off is not paid before the LLM is asked."""
    import threading

    readers: list[int] = []

    def history() -> list[dict[str, str]]:
        readers.append(threading.get_ident())
        return [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "reply"}]

    async def retrieve(account_id: str, kb_ids: list[str], query: str) -> list[dict[str, Any]]:
        return [{"text": "a passage", "score": 0.9, "source": "doc"}]

    llm = FakeLLM(reply="Fine.")
    engines = fake_engines(stt=FakeSTT(text="hello"), llm=llm, tts=FakeTTS(ms_per_char=1), retrieve=retrieve)
    config = AgentConfig(name="x", knowledge_base_ids=["kb_1"] if knowledge else [])
    inp = TurnInput(
        turn_id="turn_1", seq=1, mode=mode, account_id="acc", conversation_id="c", text="hello", pcm=silence(500)
    )

    async def turn() -> tuple[Any, int]:
        result = await TurnRunner(engines).run(config, history, inp, _QuietSink())
        return result, threading.get_ident()

    result, loop_thread = asyncio.run(turn())
    assert result.status == "completed" and len(readers) == 1
    assert (readers[0] != loop_thread) is on_a_thread
    assert llm.requests[0].messages[1]["content"] == "earlier"  # the history reached the request either way


class _QuietSink:
    async def send(self, message: dict[str, Any]) -> bool:
        return True

    async def cancelled(self) -> tuple[bool, int | None]:
        return False, None


def test_kept_tts_engines_report_only_the_current_turns_provider() -> None:
    class Voice:
        last_tts_provider: str | None = None

        async def text_to_speech(self, text: str, **kwargs: Any) -> AsyncIterator[bytes]:
            self.last_tts_provider = "azure"  # a fallback voice spoke
            yield b"\x00\x00"

    async def speak(tts: VoiceTTS) -> None:
        async for _ in tts.synthesize("Hello.", TTSOptions(voice_id="v")):
            pass

    tts = VoiceTTS(Voice(), AgentConfig(name="x"))
    configured = tts.name
    asyncio.run(speak(tts))
    assert tts.name == "azure" != configured
    tts.start_turn()  # the same engines, the next turn: nothing spoken yet
    assert tts.name == configured


def test_a_live_calls_config_is_read_from_its_own_item_once_per_container() -> None:
    """The session item carries no config (its own item does; a session opened before kept one inline, read as
    such); a container reads the item once; none at all means the call's state is gone, so the call is over."""
    from airies.conversations.live_runtime import LiveRuntime
    from airies.conversations.sessions import LiveSession
    from airies.core.config import Settings

    class Store:
        def __init__(self) -> None:
            self.reads: list[str] = []
            self.items = {"conv_a": {"name": "Front desk", "silence_timeout_seconds": 12}}

        def config(self, conversation_id: str) -> dict[str, Any] | None:
            self.reads.append(conversation_id)
            return self.items.get(conversation_id)

    def session(cid: str, config: dict[str, Any] | None = None) -> LiveSession:
        return LiveSession(cid, "acc", "agent", 1, config or {}, "listening")

    store = Store()
    runtime = LiveRuntime(Settings(stage="local"), database=None, store=store)  # type: ignore[arg-type]
    assert runtime.config(session("conv_a")).silence_timeout_seconds == 12
    assert runtime.config(session("conv_a")).name == "Front desk" and store.reads == ["conv_a"]
    inline = runtime.config(session("conv_old", {"name": "Inline", "silence_timeout_seconds": 20}))
    assert inline.name == "Inline" and store.reads == ["conv_a"]
    with pytest.raises(wp.ProtocolError) as ended:
        runtime.config(session("conv_gone"))
    assert ended.value.code == "conversation_ended"


def test_a_frame_starts_the_config_read_so_it_runs_beside_the_frames_first_call() -> None:
    """``prefetch_config`` reads the config item on the I/O pool; ``config`` takes that read (one read in all), and
    a container that has the config reads nothing."""
    import threading

    from airies.conversations.live_runtime import LiveRuntime
    from airies.conversations.sessions import LiveSession
    from airies.core.config import Settings

    release = threading.Event()

    class Store:
        def __init__(self) -> None:
            self.reads: list[tuple[str, str]] = []

        def config(self, conversation_id: str) -> dict[str, Any] | None:
            self.reads.append((conversation_id, threading.current_thread().name))
            release.wait(5)
            return {"name": "Front desk"}

    store = Store()
    runtime = LiveRuntime(Settings(stage="local"), database=None, store=store)  # type: ignore[arg-type]
    runtime.prefetch_config("conv_a")
    runtime.prefetch_config("conv_a")  # one read in flight per conversation
    release.set()
    config = runtime.config(LiveSession("conv_a", "acc", "agent", 1, {}, "listening"))
    assert config.name == "Front desk"
    assert len(store.reads) == 1 and store.reads[0][1].startswith("voice-io")
    runtime.prefetch_config("conv_a")  # cached: nothing read
    assert len(store.reads) == 1 and "conv_a" not in runtime.config_reads


def test_the_voice_runtime_keeps_every_part_whatever_order_the_handlers_start_in() -> None:
    """The local gateway loads $connect, $default and $disconnect into one process: a later handler's ``start()``
    must not take away the relay handshake $connect's gave, nor the turns $default's gave."""
    from airies.telephony.relay import RelayHandshake

    runtime = _load_voice_runtime("_test_voice_runtime_start_order")
    assert runtime._relay_handshake is None
    runtime.start(relay_handshake=RelayHandshake)
    runtime.start(turns=WebSocketService)
    runtime.start()
    assert runtime._relay_handshake is RelayHandshake and runtime._turns is WebSocketService
