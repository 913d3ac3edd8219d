"""The terminal call client's pure parts: utterance framing (every utterance ends), waterfall, money, arguments."""

from __future__ import annotations

import base64
import json
from decimal import Decimal

import pytest

from airies.__main__ import main as airies_main
from airies.conversations import protocol as wp
from airies.local.call_client import (
    FRAME_BYTES,
    CallError,
    Turn,
    audio_frames,
    decimal_of,
    format_waterfall,
    parse_args,
)


def _sizes(frames: list[dict]) -> list[int]:
    return [len(base64.b64decode(f["data"])) for f in frames if f["action"] == "audio"]


def test_an_utterance_with_a_short_tail_ends_on_its_last_chunk() -> None:
    frames = audio_frames(b"\x01\x00" * (FRAME_BYTES // 2 + 1000), first_seq=7)  # 200 ms + 62.5 ms
    assert _sizes(frames) == [FRAME_BYTES, 2000]
    assert [f["seq"] for f in frames] == [7, 8]
    assert frames[-1]["end_of_utterance"] is True and "end_of_utterance" not in frames[0]
    for frame in frames:  # every frame is one the server accepts
        parsed = wp.parse_client_frame(json.dumps(frame))
        assert isinstance(parsed, wp.AudioFrame) and parsed.pcm()


def test_an_utterance_of_whole_frames_is_closed_by_an_end_of_utterance_frame() -> None:
    frames = audio_frames(b"\x01\x00" * FRAME_BYTES, first_seq=0)  # exactly 400 ms: two whole frames
    assert _sizes(frames) == [FRAME_BYTES, FRAME_BYTES]
    assert frames[-1] == {"action": "end_of_utterance", "last_seq": 1}


def test_waterfall_lines_carry_each_stage_and_first_audio() -> None:
    lines = format_waterfall({"endpointing_ms": 500, "stt_ms": 100.5, "llm_first_token_ms": 300, "first_audio_ms": 450})
    text = "\n".join(lines)
    assert [line.split()[0] for line in lines] == ["endpointing", "STT", "LLM", "first"]
    assert "100.5 ms" in text and "950.0 ms" in text  # first audio: 500 ms endpointing + 450 ms
    assert format_waterfall({}) == ["    (no latency recorded)"]


def test_costs_add_exactly_from_decimal_strings() -> None:
    total = sum((decimal_of(v) for v in ("0.000001250", "0.1", "0.2", None)), Decimal(0))
    assert total == Decimal("0.300001250")
    assert f"{decimal_of('0.000000240'):f}" == "0.000000240"  # the server's digits, trailing zeros kept


@pytest.mark.parametrize("value", [0.1, 1, True, "1e-7", "NaN", "abc", "", {"usd": "0.1"}])
def test_an_amount_that_is_not_a_decimal_string_is_a_protocol_error(value: object) -> None:
    with pytest.raises(CallError, match="protocol error: an amount must be a decimal string"):
        decimal_of(value)


def test_turns_keep_the_order_given_across_options() -> None:
    args = parse_args(["--agent", "agt_1", "--say", "hi", "--wav", "a.wav", "--text", "bye", "--say", "again"])
    assert args.turns == [Turn("say", "hi"), Turn("wav", "a.wav"), Turn("text", "bye"), Turn("say", "again")]


def test_python_m_airies_lists_its_commands(capsys) -> None:  # type: ignore[no-untyped-def]
    assert airies_main([]) == 2
    assert "call" in capsys.readouterr().out
    assert airies_main(["--help"]) == 0
