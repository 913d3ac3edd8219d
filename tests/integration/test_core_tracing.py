"""Provider calls become X-Ray subsegments: a voice turn run as on Lambda (a sampled trace header, the X-Ray SDK's
Lambda context) sends ``## llm`` and ``## tts`` spans to a UDP socket standing in for the X-Ray daemon, each a child
of the invocation's segment and annotated with its provider."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from aws_xray_sdk.core.lambda_launcher import LambdaContext as XRayLambdaContext
from aws_xray_sdk.core.recorder import AWSXRayRecorder
from moto import mock_aws

from airies.core import observability
from tests.doubles.conv_engines import FakeLLM, fake_engines
from tests.integration.test_conv_handlers import AGENT, Harness

TRACE_ROOT = "1-67891233-abcdef012345678912345678"
PARENT = "53995c3f42cd8ad8"


class Daemon:
    """The X-Ray daemon's UDP side: every datagram is a header line and one JSON document."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"

    def documents(self) -> list[dict[str, Any]]:
        found = []
        while True:
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                return found
            header, _, body = data.decode().partition("\n")
            assert json.loads(header) == {"format": "json", "version": 1}
            found.append(json.loads(body))


class TracerOnLambda:
    """What Powertools' Tracer hands out as ``provider`` on Lambda: the X-Ray recorder with the Lambda context."""

    def __init__(self, daemon: Daemon) -> None:
        self.provider = AWSXRayRecorder()
        self.provider.configure(context=XRayLambdaContext(), daemon_address=daemon.address, sampling=False)


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch):
    daemon = Daemon()
    monkeypatch.setenv("LAMBDA_TASK_ROOT", "/var/task")
    monkeypatch.setenv("_X_AMZN_TRACE_ID", f"Root={TRACE_ROOT};Parent={PARENT};Sampled=1")
    monkeypatch.setattr(observability, "tracer", TracerOnLambda(daemon))
    yield daemon
    daemon.sock.close()


def test_a_turns_provider_calls_are_subsegments_of_the_invocation(daemon, database, settings) -> None:
    with mock_aws():
        h = Harness(
            database,
            settings,
            fake_engines(llm=FakeLLM(reply="We open at nine. See you then.")),
            first_message_mode="assistant_waits_for_user",
        )
        cid, token = h.start()
        conn, _ = h.connect(cid, token)
        daemon.documents()  # nothing traced before the turn matters here
        h.send(conn, {"action": "text", "text": "When do you open?"})
    spans = daemon.documents()
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    assert set(by_name) == {"## llm", "## tts"}
    assert len(by_name["## llm"]) == 1 and len(by_name["## tts"]) == 2  # one per spoken sentence
    for span in spans:
        assert span["type"] == "subsegment" and span["namespace"] == "remote"
        assert span["trace_id"] == TRACE_ROOT and span["parent_id"] == PARENT
        assert span["end_time"] >= span["start_time"] and span.get("in_progress", False) is False
    assert by_name["## llm"][0]["annotations"] == {"provider": AGENT["llm"]["provider"]}


def test_a_span_records_the_providers_error_and_the_call_still_raises(daemon) -> None:
    with pytest.raises(ConnectionError), observability.provider_span("stt", "deepgram"):
        raise ConnectionError("refused")
    (span,) = daemon.documents()
    assert span["name"] == "## stt" and span["error"] is True
    assert span["annotations"] == {"provider": "deepgram"}
    assert span["metadata"]["airies"]["error"] == "ConnectionError"


def test_without_a_sampled_trace_nothing_is_sent(daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_X_AMZN_TRACE_ID", f"Root={TRACE_ROOT};Parent={PARENT};Sampled=0")
    with observability.provider_span("llm", "openai"):
        pass
    assert daemon.documents() == []
