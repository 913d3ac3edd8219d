"""Shared plumbing for the wire-level provider doubles: a real HTTP/1.1 server on 127.0.0.1:0.

Each double records every request, checks the vendor's auth header, and can be told to fail
(``fail_next(status, body)``), to be slow (``latency`` before the first byte, ``chunk_delay``
between streamed chunks) or to answer from a script. The conversations capability and the
benchmarks reuse them, so behaviour is configurable but defaults are realistic:
STT ~150 ms, TTS first byte ~100 ms (set ``latency=0`` in unit tests that count nothing).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import numpy as np


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedFailure:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class Reply(Exception):
    """Raised by handlers to answer immediately (errors)."""

    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


class LocalHttpServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 (a free port), started with ``start()`` or ``with``: the lifecycle of
    every wire-level double. Subclasses implement ``serve(handler)`` for each request."""

    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the double first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _serve(self) -> None:
                double.serve(self)

            do_GET = do_POST = do_DELETE = do_PUT = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class JsonServer(LocalHttpServer):
    """A double whose vendor speaks plain JSON over REST: ``respond(method, path, headers, raw)`` returns
    ``(status, body)`` or ``(status, body, extra_headers)``."""

    def respond(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[Any, ...]:
        raise NotImplementedError

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        raw = handler.rfile.read(int(handler.headers.get("content-length") or 0))
        status, body, *extra = self.respond(handler.command, handler.path, dict(handler.headers), raw)
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(data)))
        for key, value in (extra[0] if extra else {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)


class WireDouble(LocalHttpServer):
    """Base class: subclasses implement ``handle(request) -> (status, headers, body | iterator of bytes)``."""

    default_latency = 0.0

    def __init__(self, *, api_key: str = "test-key", latency: float | None = None, chunk_delay: float = 0.0) -> None:
        self.api_key = api_key
        self.latency = self.default_latency if latency is None else latency
        self.chunk_delay = chunk_delay
        self.requests: list[RecordedRequest] = []
        self._failures: deque[ScriptedFailure] = deque()
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- behaviour
    def fail_next(
        self,
        status: int,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        times: int = 1,
        delay: float = 0.0,
    ) -> None:
        with self._lock:
            for _ in range(times):
                self._failures.append(ScriptedFailure(status, body, headers or {}, delay))

    def handle(self, request: RecordedRequest) -> tuple[int, dict[str, str], Any]:
        raise NotImplementedError

    def check_auth(self, request: RecordedRequest) -> bool:
        raise NotImplementedError

    def unauthorized(self) -> Reply:
        return Reply(401, {"error": "unauthorized"})

    def default_error_body(self, status: int) -> Any:
        return {"error": {"status": status}}

    # ---------------------------------------------------------------- plumbing
    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        split = urlsplit(handler.path)
        length = int(handler.headers.get("content-length") or 0)
        if handler.headers.get("transfer-encoding", "").lower() == "chunked":
            body = _read_chunked(handler)
        else:
            body = handler.rfile.read(length) if length else b""
        request = RecordedRequest(
            method=handler.command,
            path=split.path,
            query=parse_qs(split.query),
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=body,
        )
        with self._lock:
            self.requests.append(request)
            failure = self._failures.popleft() if self._failures else None
        try:
            if failure is not None:
                time.sleep(failure.delay)
                body_out = self.default_error_body(failure.status) if failure.body is None else failure.body
                raise Reply(failure.status, body_out, failure.headers)
            if not self.check_auth(request):
                raise self.unauthorized()
            time.sleep(self.latency)
            status, headers, payload = self.handle(request)
        except Reply as reply:
            status, headers, payload = reply.status, reply.headers, reply.body
        try:
            self._write(handler, status, headers, payload)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _write(self, handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str], payload: Any) -> None:
        if isinstance(payload, dict | list):
            payload = json.dumps(payload).encode()
            headers = {"content-type": "application/json", **headers}
        elif isinstance(payload, str):
            payload = payload.encode()
        elif payload is None:
            payload = b""
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        if isinstance(payload, bytes | bytearray):
            handler.send_header("content-length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            handler.wfile.flush()
            return
        # An iterator of chunks: HTTP/1.1 chunked transfer, so the client sees each chunk as it is sent.
        handler.send_header("transfer-encoding", "chunked")
        handler.end_headers()
        first = True
        for chunk in payload:
            if not first and self.chunk_delay:
                time.sleep(self.chunk_delay)
            first = False
            if chunk:
                handler.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                handler.wfile.flush()
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()


def _read_chunked(handler: BaseHTTPRequestHandler) -> bytes:
    out = bytearray()
    while True:
        size = int(handler.rfile.readline().strip().split(b";")[0] or b"0", 16)
        if size == 0:
            handler.rfile.readline()
            return bytes(out)
        out += handler.rfile.read(size)
        handler.rfile.readline()


def parse_multipart(request: RecordedRequest) -> tuple[dict[str, str], list[tuple[str, str, bytes, str]]]:
    """(form fields, [(field, filename, data, content_type)]) of a multipart/form-data body."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise Reply(400, {"error": "expected multipart/form-data"})
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + request.body)
    fields: dict[str, str] = {}
    files: list[tuple[str, str, bytes, str]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        data = part.get_payload(decode=True) or b""
        if filename is not None:
            files.append((str(name), filename, data, part.get_content_type()))
        else:
            fields[str(name)] = data.decode()
    return fields, files


# ---------------------------------------------------------------- audio the doubles speak


def speak_pcm16(text: str, sample_rate: int) -> bytes:
    """Real speech from eSpeak NG when it is installed (so round trips can be decoded), else a tone per word."""
    from airies.voice.audio.codecs import read_wav, resample_pcm16

    binary = shutil.which("espeak-ng")
    if binary and text.strip():
        out = subprocess.run([binary, "--stdout", "--stdin"], input=text.encode(), capture_output=True, check=True)
        pcm, rate = read_wav(out.stdout)
        return resample_pcm16(pcm, rate, sample_rate)
    words = max(1, len(text.split()))
    t = np.arange(int(sample_rate * 0.3 * words)) / sample_rate
    return (np.sin(2 * np.pi * 220 * t) * 8000).astype("<i2").tobytes()


# One silent MPEG-1 Layer III frame (128 kb/s, 44.1 kHz, mono): enough for clients that sniff MP3.
_MP3_FRAME = bytes([0xFF, 0xFB, 0x90, 0xC4]) + b"\x00" * 413


def fake_mp3(seconds: float) -> bytes:
    frames = max(1, int(seconds * 44100 / 1152))
    return b"ID3\x03\x00\x00\x00\x00\x00\x00" + _MP3_FRAME * frames


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def words_with_timings(text: str, duration: float) -> list[dict[str, Any]]:
    """Spread the words evenly over the audio: doubles cannot align, but timings stay monotonic and in range."""
    words = text.split()
    if not words:
        return []
    step = duration / len(words)
    return [{"word": w, "start": round(i * step, 3), "end": round((i + 1) * step, 3)} for i, w in enumerate(words)]
