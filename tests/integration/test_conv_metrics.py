"""The EMF document a voice turn emits through VoiceMessageFunction's handler (what the alarms and dashboard read)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from moto import mock_aws

from airies.conversations.turn_metrics import TurnMetrics
from airies.core import observability
from airies.core.metrics import MonitoringService
from airies.llm.vendors.base import LLMRequest
from airies.local.invoke import LambdaContext, _clear_container_caches, load_handler, patched_environ, resolve_function
from airies.local.template import function_environment
from tests.doubles.conv_engines import FakeLLM, fake_engines
from tests.doubles.openai_server import OpenAIDouble, Reply
from tests.integration.test_conv_handlers import Harness, frames_of
from tests.integration.test_llm_router import make_router

LATENCIES = {
    "FirstAudioLatency": "first_audio_ms",
    "TurnDuration": "total_ms",
    "SttLatency": "stt_ms",
    "LlmFirstTokenLatency": "llm_first_token_ms",
    "TtsFirstByteLatency": "tts_first_byte_ms",
}


def emf_documents(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"_aws"' in line]


def message_event(connection_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """A full API Gateway WebSocket message event (the handler parses it with Powertools)."""
    now = time.time()
    request_id = uuid.uuid4().hex
    return {
        "requestContext": {
            "routeKey": "$default",
            "eventType": "MESSAGE",
            "messageDirection": "IN",
            "messageId": request_id[:16],
            "connectionId": connection_id,
            "connectedAt": int(now * 1000),
            "requestTimeEpoch": int(now * 1000),
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "requestId": request_id,
            "extendedRequestId": request_id,
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "stage": "test",
            "apiId": "abc123",
            "identity": {"sourceIp": "127.0.0.1"},
        },
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


def test_a_voice_turn_emits_its_latencies_and_counts_as_emf(database, settings, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    spec, ctx = resolve_function("VoiceMessageFunction")
    env = {**function_environment(spec, ctx), "DATABASE_URL": database.url}
    with mock_aws(), patched_environ(env):
        h = Harness(database, settings, fake_engines(llm=FakeLLM(reply="We open at nine.")))
        # As WebSocketService.for_lambda wires it: the handlers' Powertools Metrics, flushed per invocation.
        h.service.runtime.turn_metrics = TurnMetrics(
            MonitoringService(metrics=observability.metrics, logger=observability.logger)
        )
        cid, token = h.start()
        conn, _ = h.connect(cid, token)
        _clear_container_caches()
        handler, module = load_handler(spec)
        module.turn_service.__globals__["set_service"](h.service)  # voice_runtime's, as the local gateway hands it in
        try:
            capsys.readouterr()
            handler(message_event(conn, {"action": "text", "text": "When do you open?"}), LambdaContext(spec))
        finally:
            _clear_container_caches()
        out = capsys.readouterr().out
        turns = h.turns(cid)  # the first message (spoken before the caller's first turn) and the answer
    (doc,) = [d for d in emf_documents(out) if "TurnDuration" in d]
    directive = doc["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == observability.metrics.namespace
    assert doc["service"] == "airies" and directive["Dimensions"] == [["service"]]
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    for name, stage in LATENCIES.items():
        if name == "SttLatency":
            assert name not in units  # a text turn transcribes nothing
            continue
        measured = [t.latency[stage] for t in turns if t.latency.get(stage) is not None]
        assert units[name] == "Milliseconds" and measured and doc[name] in (measured, measured[0])
    assert [t.user_text for t in turns][-1] == "When do you open?"
    assert units["TurnsCompleted"] == "Count" and doc["TurnsCompleted"] in ([1.0] * len(turns), float(len(turns)))
    assert "TurnsFailed" not in units and "BargeIns" not in units


def test_a_turn_the_router_moved_to_its_fallback_counts_a_provider_failover(
    database, settings, capsys, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The real router over two OpenAI-wire doubles: the primary answers 503, the fallback the reply. The turn keeps
    how many attempts failed over, and its EMF document counts them as ProviderFailovers."""
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    with OpenAIDouble() as primary, OpenAIDouble() as fallback, mock_aws():
        primary.script(Reply(status=503))
        fallback.script(Reply(text="We open at nine."))
        router = make_router(primary, fallback)

        def routed(request: LLMRequest) -> Any:
            pinned = LLMRequest(
                model="gpt-4o-mini", provider="openai", messages=request.messages, max_tokens=request.max_tokens
            )
            return router.stream(pinned)

        h = Harness(database, settings, fake_engines(llm=routed), first_message_mode="assistant_waits_for_user")
        h.service.runtime.turn_metrics = TurnMetrics(
            MonitoringService(metrics=observability.metrics, logger=observability.logger)
        )
        cid, token = h.start()
        conn, _ = h.connect(cid, token)
        capsys.readouterr()
        h.send(conn, {"action": "text", "text": "When do you open?"})
        observability.metrics.flush_metrics()
        out = capsys.readouterr().out
        (turn,) = h.turns(cid)
    assert turn.agent_text == "We open at nine." and turn.usage["llm_provider"] == "groq"
    assert turn.usage["llm_failovers"] == 1
    (doc,) = [d for d in emf_documents(out) if "TurnDuration" in d]
    units = {m["Name"]: m["Unit"] for m in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert units["ProviderFailovers"] == "Count" and doc["ProviderFailovers"] in (1.0, [1.0])


def test_a_typed_turn_the_flood_guard_refuses_is_no_failed_turn(database, settings, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A text frame over the control-frame limit is refused by its turn's claim: an error frame, not a failed turn."""
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    with mock_aws():
        h = Harness(database, settings, fake_engines(), first_message_mode="assistant_waits_for_user")
        h.service.runtime.turn_metrics = TurnMetrics(
            MonitoringService(metrics=observability.metrics, logger=observability.logger)
        )
        cid, token = h.start()
        conn, _ = h.connect(cid, token)
        for _ in range(10):  # the second's 10 control frames (the clock stands still); the live state is now known
            h.send(conn, {"action": "ping"})
        capsys.readouterr()
        h.send(conn, {"action": "text", "text": "When do you open?"})
        observability.metrics.flush_metrics()
        out = capsys.readouterr().out
        refused = frames_of(conn)[-1]
        assert h.turns(cid) == []
    assert refused["type"] == "error" and refused["code"] == "rate_limited"
    assert not [d for d in emf_documents(out) if "TurnsFailed" in d]
