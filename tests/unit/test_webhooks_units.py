"""Signing and verification (the module and the documented snippet agree), backoff, the end-of-call report."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from airies.webhooks.delivery import MAX_BACKOFF_S, backoff_s, payload_body
from airies.webhooks.payloads import end_of_call_report, latency_summary
from airies.webhooks.signing import generate_secret, signature_header, verify
from tests.doubles.webhook_receiver import documented_verifier

SECRET = "whsec_test_secret_value"
BODY = payload_body({"id": "evt_1", "type": "tool.called", "data": {"tool": "book", "arguments": {"day": "mon"}}})


@pytest.fixture(scope="module")
def snippet():
    return documented_verifier()


def test_a_fresh_signature_verifies_with_the_module_and_the_documented_snippet(snippet) -> None:
    header = signature_header(SECRET, BODY)
    assert header.startswith("t=") and ",v1=" in header
    assert verify(SECRET, header, BODY)
    assert snippet(SECRET, header, BODY)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda header, body: (header, body.replace(b"mon", b"tue")),  # the body changed
        lambda header, body: (header.replace("t=", "t=1"), body),  # the timestamp changed
        lambda header, body: (header[:-1] + ("0" if header[-1] != "0" else "1"), body),  # the signature changed
        lambda header, body: ("v1=" + header.split("v1=")[1], body),  # no timestamp
        lambda header, body: (header.split(",")[0], body),  # no signature
        lambda header, body: ("", body),
    ],
)
def test_a_tampered_message_is_refused(snippet, tamper) -> None:
    header, body = tamper(signature_header(SECRET, BODY), BODY)
    assert not verify(SECRET, header, body)
    assert not snippet(SECRET, header, body)


def test_another_secret_is_refused(snippet) -> None:
    header = signature_header(SECRET, BODY)
    assert not verify(generate_secret(), header, BODY)
    assert not snippet(generate_secret(), header, BODY)


def test_a_stale_timestamp_is_refused(snippet) -> None:
    old = signature_header(SECRET, BODY, timestamp=int(time.time()) - 301)
    assert not verify(SECRET, old, BODY) and not snippet(SECRET, old, BODY)
    future = signature_header(SECRET, BODY, timestamp=int(time.time()) + 301)
    assert not verify(SECRET, future, BODY) and not snippet(SECRET, future, BODY)
    recent = signature_header(SECRET, BODY, timestamp=int(time.time()) - 200)
    assert verify(SECRET, recent, BODY) and snippet(SECRET, recent, BODY)
    assert snippet(SECRET, old, BODY, tolerance_s=600)  # the receiver chooses its window


def test_secrets_are_random_and_prefixed() -> None:
    secrets = {generate_secret() for _ in range(20)}
    assert len(secrets) == 20 and all(s.startswith("whsec_") and len(s) > 40 for s in secrets)


def test_the_body_is_compact_and_stable() -> None:
    assert payload_body({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    assert [backoff_s(n, 30, lambda: 1.0) for n in (1, 2, 3, 4)] == [30, 60, 120, 240]
    assert [backoff_s(n, 30, lambda: 0.0) for n in (1, 2, 3)] == [15, 30, 60]
    assert backoff_s(40, 30, lambda: 1.0) == MAX_BACKOFF_S
    # about a day of retries: the full schedule (no jitter) reaches 24 h after about 14 attempts
    elapsed, attempts = 0.0, 0
    while elapsed < 86_400:
        attempts += 1
        elapsed += backoff_s(attempts, 30, lambda: 1.0)
    assert 12 <= attempts <= 16


def test_end_of_call_report_takes_plain_values() -> None:
    started = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
    report = end_of_call_report(
        conversation_id="conv_1",
        end_reason="caller_hung_up",
        started_at=started,
        ended_at=started + timedelta(seconds=95.5),
        transcript=[{"role": "user", "text": "hi"}, {"role": "agent", "text": "hello"}],
        cost_by_component={"llm": Decimal("0.0012"), "tts": Decimal("0.00003")},
        turn_latencies=[{"llm_ms": 300, "tts_ms": 100}, {"llm_ms": 500}, {"llm_ms": 400, "tts_ms": 120}],
        recording_urls=["https://example.com/r.wav"],
    )
    assert report["duration_seconds"] == 95.5
    assert report["cost"] == {
        "total": "0.001230000",
        "components": {"llm": "0.001200000", "tts": "0.000030000"},
    }
    assert report["latency"] == {
        "turns": 3,
        "llm_ms": {"p50_ms": 400, "p95_ms": 500},
        "tts_ms": {"p50_ms": 100, "p95_ms": 120},
    }
    assert report["transcript"][1] == {"role": "agent", "text": "hello"} and report["analysis"] is None
    assert latency_summary([]) == {"turns": 0}
