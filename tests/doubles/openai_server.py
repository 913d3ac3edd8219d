"""A local HTTP server speaking the OpenAI Chat Completions wire protocol, for the real ``openai`` SDK.

Usage::

    with OpenAIDouble() as server:                       # 127.0.0.1, port 0
        client = AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
        server.script(Reply(text="Hi there."), Reply(status=429, retry_after=2))   # one reply per request, in order
        server.default = Reply(text="Fallback reply.")   # when the script is empty
        server.responder = lambda body: Reply(...)       # or decide from the request body (overrides both)
        ... server.requests                              # every request: Recorded(path, headers, body)
        ... server.aborted                               # replies the client hung up on mid-stream

Speaks: ``POST /v1/chat/completions`` (JSON, or SSE with ``stream: true``; ``stream_options.include_usage`` adds
the final usage chunk), tool calls (streamed as id/name first, then argument fragments), usage with
``prompt_tokens_details.cached_tokens``, error bodies ``{"error": {"message","type","code"}}`` with any status,
``Retry-After`` / ``retry-after-ms`` headers, ``GET /v1/models``; ``api_keys`` (a set) makes other keys get 401.

Faults and latencies per reply: ``headers_delay_s`` (before the status line: a slow first byte),
``first_token_delay_s`` (headers sent, then nothing), ``chunk_delay_s`` (between chunks), ``drop_after_chunks``
with ``drop_mode="reset"`` (socket closed mid-body: the SDK raises a connection error) or ``"eof"`` (the body ends
cleanly but without a finish reason or ``[DONE]``), ``error_event_after_chunks`` (an SSE ``{"error": ...}`` event).
Delays are interruptible: ``stop()`` never waits for a sleeping handler.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_MODELS = ["gpt-4o-mini", "gpt-4o", "llama-3.1-8b-instant", "llama-3.3-70b-versatile"]


@dataclass
class Reply:
    text: str = "Hello from the test double."
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # {"name", "arguments" (JSON str), "id"?}
    finish_reason: str | None = None  # default: "tool_calls" when there are tool calls, else "stop"
    words_per_chunk: int = 1
    prompt_tokens: int | None = None  # default: a rough count of the request's message characters / 4
    completion_tokens: int | None = None  # default: number of words + tool-call fragments
    cached_tokens: int = 0
    include_usage: bool = True  # False: the provider "omits usage" (no usage chunk, no usage field)
    status: int = 200
    error_message: str = "simulated failure"
    error_type: str = "server_error"
    retry_after: float | str | None = None  # Retry-After header value
    retry_after_ms: float | None = None
    headers_delay_s: float = 0.0
    first_token_delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    drop_after_chunks: int | None = None
    drop_mode: str = "reset"  # reset | eof
    error_event_after_chunks: int | None = None


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: dict[str, Any] | None


class OpenAIDouble:
    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, models: list[str] | None = None) -> None:
        self.models = list(models or DEFAULT_MODELS)
        self.default = Reply()
        self.responder: Callable[[dict[str, Any]], Reply] | None = None
        self.api_keys: set[str] | None = None
        self.requests: list[Recorded] = []
        self.aborted = 0  # replies the client hung up on before the end
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer((host, port), _make_handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> OpenAIDouble:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> OpenAIDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- behaviour --------------------------------------------------------------------------------------
    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self.requests.clear()
        self.default = Reply()
        self.responder = None
        self.api_keys = None

    def next_reply(self, body: dict[str, Any]) -> Reply:
        if self.responder is not None:
            return self.responder(body)
        with self._lock:
            return self._script.popleft() if self._script else self.default

    @property
    def chat_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def sleep(self, seconds: float) -> bool:
        """Sleep unless the server stops; True if it is stopping."""
        return self._stopping.wait(seconds) if seconds > 0 else self._stopping.is_set()


def _approx_tokens(messages: list[dict[str, Any]]) -> int:
    chars = sum(len(str(m.get("content") or "")) for m in messages)
    return max(1, chars // 4) + 4 * len(messages)


def _make_handler(double: OpenAIDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like the real APIs (chunked SSE bodies)

        def setup(self) -> None:
            super().setup()
            # No Nagle: small SSE writes must leave at once, or delayed ACKs add ~40 ms no real API has.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        # -- helpers ---------------------------------------------------------------------------------
        def _authorized(self) -> bool:
            if double.api_keys is None:
                return True
            header = self.headers.get("Authorization", "")
            return header.removeprefix("Bearer ").strip() in double.api_keys

        def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()

        def _error(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> None:
            self._json(status, {"error": {"message": message, "type": kind, "code": kind, "param": None}}, headers)

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _event(self, payload: Any) -> None:
            text = payload if isinstance(payload, str) else json.dumps(payload)
            self._chunk(f"data: {text}\n\n".encode())

        def _reset(self) -> None:
            # SO_LINGER 0: close with RST, exactly what a crashed upstream looks like.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        # -- routes ----------------------------------------------------------------------------------
        def do_GET(self) -> None:
            double.requests.append(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, None))
            if not self._authorized():
                return self._error(401, "Incorrect API key provided", "invalid_api_key")
            if self.path.rstrip("/").endswith("/models"):
                data = [{"id": m, "object": "model", "created": 0, "owned_by": "double"} for m in double.models]
                return self._json(200, {"object": "list", "data": data})
            return self._error(404, "not found", "not_found")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = None
            double.requests.append(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            if body is None:
                return self._error(400, "invalid JSON body", "invalid_request_error")
            if not self._authorized():
                return self._error(401, "Incorrect API key provided", "invalid_api_key")
            if not self.path.rstrip("/").endswith("/chat/completions"):
                return self._error(404, "not found", "not_found")
            if not body.get("model") or not isinstance(body.get("messages"), list):
                return self._error(400, "model and messages are required", "invalid_request_error")
            reply = double.next_reply(body)
            try:
                if double.sleep(reply.headers_delay_s):
                    return
                if reply.status != 200:
                    headers = {}
                    if reply.retry_after is not None:
                        headers["Retry-After"] = str(reply.retry_after)
                    if reply.retry_after_ms is not None:
                        headers["retry-after-ms"] = str(reply.retry_after_ms)
                    kind = "rate_limit_exceeded" if reply.status == 429 else reply.error_type
                    return self._error(reply.status, reply.error_message, kind, headers)
                if body.get("stream"):
                    return self._stream(body, reply)
                return self._complete(body, reply)
            except (BrokenPipeError, ConnectionResetError):
                double.aborted += 1  # the client went away mid-reply
                self.close_connection = True

        def _usage(self, body: dict[str, Any], reply: Reply, fragments: int) -> dict[str, Any]:
            prompt = reply.prompt_tokens if reply.prompt_tokens is not None else _approx_tokens(body["messages"])
            completion = reply.completion_tokens if reply.completion_tokens is not None else fragments
            return {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
            }

        def _pieces(self, reply: Reply) -> list[str]:
            words = re.findall(r"\S+\s*", reply.text)
            size = max(1, reply.words_per_chunk)
            return ["".join(words[i : i + size]) for i in range(0, len(words), size)]

        def _complete(self, body: dict[str, Any], reply: Reply) -> None:
            if double.sleep(reply.first_token_delay_s):
                return
            calls = [
                {
                    "id": call.get("id") or f"call_{index}",
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call.get("arguments", "{}")},
                }
                for index, call in enumerate(reply.tool_calls)
            ]
            message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
            if calls:
                message["tool_calls"] = calls
            payload: dict[str, Any] = {
                "id": "chatcmpl-double",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": reply.finish_reason or ("tool_calls" if calls else "stop"),
                        "logprobs": None,
                    }
                ],
            }
            if reply.include_usage:
                payload["usage"] = self._usage(body, reply, len(self._pieces(reply)) + len(calls))
            self._json(200, payload)

        def _stream(self, body: dict[str, Any], reply: Reply) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            base = {
                "id": "chatcmpl-double",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body["model"],
            }

            def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
                return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

            events: list[dict[str, Any]] = [chunk({"role": "assistant", "content": ""})]
            events += [chunk({"content": piece}) for piece in self._pieces(reply)]
            for index, call in enumerate(reply.tool_calls):
                call_id = call.get("id") or f"call_{index}"
                head = {
                    "index": index,
                    "id": call_id,
                    "type": "function",
                    "function": {"name": call["name"], "arguments": ""},
                }
                events.append(chunk({"tool_calls": [head]}))
                arguments = call.get("arguments", "{}")
                for start in range(0, len(arguments), 8):
                    fragment = {"index": index, "function": {"arguments": arguments[start : start + 8]}}
                    events.append(chunk({"tool_calls": [fragment]}))
            content_events = len(events) - 1
            finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
            events.append(chunk({}, finish))
            wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            if wants_usage and reply.include_usage:
                events.append({**base, "choices": [], "usage": self._usage(body, reply, content_events)})

            if double.sleep(reply.first_token_delay_s):
                return
            for sent, event in enumerate(events):
                if reply.drop_after_chunks is not None and sent >= reply.drop_after_chunks + 1:  # +1: the role chunk
                    if reply.drop_mode == "eof":
                        self._chunk(b"")  # a clean end of body, without finish reason or [DONE]
                    else:
                        self._reset()
                    return
                if reply.error_event_after_chunks is not None and sent >= reply.error_event_after_chunks + 1:
                    self._event({"error": {"message": reply.error_message, "type": "server_error", "code": None}})
                    self._chunk(b"")
                    return
                if sent > 1 and double.sleep(reply.chunk_delay_s):
                    return
                self._event(event)
            self._event("[DONE]")
            self._chunk(b"")

    return Handler
