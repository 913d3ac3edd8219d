"""Calling an agent's custom tools on the business's server.

``ToolRunner(guard, secret=...)``: ``await runner.call_many(calls)`` runs one turn's tool calls concurrently. Each
call: the LLM's arguments are parsed and validated against the tool's JSON Schema (invalid: never sent, the LLM is
told why), then POSTed as JSON ``{conversation_id, turn_id, tool_call_id, name, arguments}`` to ``server.url``,
signed like the server messages (``Airies-Signature``, ``airies.webhooks.signing``), through the URL guard (every
connection and every redirect checked again), waiting at most ``server.timeout_ms``. The answer is read up to
``max_response_bytes`` (more: the call failed). A 2xx answer's ``result`` (a JSON object's ``result`` member, else
the whole body) goes back to the LLM. An ``async`` tool is sent and not waited for.

Logs carry the tool name, status, HTTP status, duration and sizes: never the arguments or the answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from airies.core.json_schemas import schema_errors
from airies.core.observability import provider_span
from airies.core.url_guard import URLGuard, URLNotAllowed
from airies.core.vendor_clients import LoopBoundClient
from airies.tools.schemas import MAX_TIMEOUT_MS, ToolConfig
from airies.webhooks.signing import SIGNATURE_HEADER, signature_header

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

TOOL_CALL_ID_HEADER = "Airies-Tool-Call-Id"
MAX_RESPONSE_BYTES = 64 * 1024  # the most of a server's answer that is read
MAX_RESULT_CHARS = 4000  # the most of a result handed to the LLM and stored on the turn
MAX_REDIRECTS = 3
USER_AGENT = "Airies-Tools/1"

# (conversation id) -> the signing secret of the conversation's agent (its server-message endpoint's, else the
# account's; None: requests go unsigned). Called once per conversation and runner, on a thread.
SecretLookup = Callable[[str], str | None]


@dataclass(frozen=True)
class ToolInvocation:
    """One tool call the LLM made in a turn (``arguments``: the raw JSON text it wrote)."""

    conversation_id: str
    turn_id: str
    tool_call_id: str
    name: str
    arguments: str


@dataclass
class ToolOutcome:
    """What came of one call. ``result`` is what the LLM reads back (capped); ``status``: completed, failed,
    timeout, refused (never sent: bad arguments or a refused URL), sent (an async tool), canned (an agent test's)."""

    tool_call_id: str
    name: str
    arguments: Any
    status: str
    result: str
    duration_ms: float
    http_status: int | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in ("completed", "sent", "canned")

    def record(self) -> dict[str, Any]:
        """As stored on the turn (``ConversationTurn.tool_calls``) and published in ``tool.called``."""
        data: dict[str, Any] = {
            "id": self.tool_call_id,
            "name": self.name,
            "arguments": self.arguments,
            "result": self.result,
            "status": self.status,
            "duration_ms": self.duration_ms,
        }
        if self.http_status is not None:
            data["http_status"] = self.http_status
        if self.error:
            data["error"] = self.error
        data.update(self.extra)
        return data


def cap(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_arguments(raw: str) -> tuple[Any, str | None]:
    """(arguments, problem): the LLM's JSON text as a value; an empty text is ``{}``."""
    if not raw.strip():
        return {}, None
    try:
        return json.loads(raw), None
    except json.JSONDecodeError as exc:
        return raw, f"the arguments are not JSON ({exc.msg})"


def argument_problem(schema: Mapping[str, Any], arguments: Any) -> str | None:
    """The first way ``arguments`` break the tool's JSON Schema, or None."""
    try:
        errors = schema_errors(schema, arguments)
    except Exception as exc:  # e.g. a "$ref" nothing resolves (remote references are never fetched)
        return f"the tool's parameters schema cannot be applied ({type(exc).__name__})"
    if not errors:
        return None
    where = "/".join(str(part) for part in errors[0].path) or "(root)"
    return f"invalid arguments at {where}: {errors[0].message}"


def result_text(body: bytes, content_type: str) -> str:
    """What the LLM reads of a server's answer: a JSON object's ``result`` member, else the whole body."""
    text = body.decode("utf-8", errors="replace")
    if "json" in content_type or text.lstrip().startswith(("{", "[")):
        try:
            value = json.loads(text)
        except ValueError:
            return text
        if isinstance(value, dict) and "result" in value:
            value = value["result"]
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text


# Guarded clients shared by every runner with the same guard rules: one per event loop, so connections to a tool
# server are kept alive from turn to turn (no new TCP and TLS handshake per call) and the TLS context is built once.
_clients: dict[tuple[Any, ...], LoopBoundClient[httpx.AsyncClient]] = {}


def _guarded_http() -> ModuleType:
    """``airies.core.guarded_http`` (httpx and httpcore, ~45 ms), imported when a runner first builds its client, for
    cold start: every function that imports the turn pipeline (which holds a runner) imports this module, and most
    never call a tool."""
    from airies.core import guarded_http

    return guarded_http


def shared_clients(guard: URLGuard) -> LoopBoundClient[httpx.AsyncClient]:
    key = (guard.https_only, guard.allowed_hosts, guard.resolver)
    if key not in _clients:
        _clients[key] = LoopBoundClient(
            lambda: _guarded_http().guarded_async_client(
                guard,
                follow_redirects=True,
                max_redirects=MAX_REDIRECTS,
                headers={"user-agent": USER_AGENT},
            )
        )
    return _clients[key]


class ToolRunner:
    def __init__(
        self,
        guard: URLGuard,
        *,
        secret: SecretLookup | None = None,
        canned: Mapping[str, Any] | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.guard = guard
        self.clients = shared_clients(guard)
        self._secret_lookup = secret
        # A container keeps a turn's engines (this runner among them) for a while and runs turns on several event
        # loops: a secret being read is a future of the loop that started it; a secret read is kept per conversation.
        self._secrets: dict[str, str | None] = {}
        self._reading: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Future[str | None]]] = (
            weakref.WeakKeyDictionary()
        )
        self.canned = dict(canned or {})  # tool name -> the result to answer without calling the server
        self.max_response_bytes = max_response_bytes
        self.clock = clock
        self.background: set[asyncio.Task[Any]] = set()  # async tools in flight

    def prefetch(self, conversation_id: str) -> None:
        """Start reading the signing secret now (on a thread), so a tool call does not wait for it later."""
        if self._secret_lookup is None or conversation_id in self._secrets:
            return
        reading = self._reading.setdefault(asyncio.get_running_loop(), {})
        if conversation_id not in reading:
            reading[conversation_id] = asyncio.ensure_future(asyncio.to_thread(self._read_secret, conversation_id))

    def _read_secret(self, conversation_id: str) -> str | None:
        assert self._secret_lookup is not None
        try:
            secret = self._secret_lookup(conversation_id)
        except Exception:  # the call goes out unsigned: a receiver that verifies refuses it, and the LLM is told
            log.exception("tool signing secret not read", extra={"conversation_id": conversation_id})
            return None
        self._secrets[conversation_id] = secret
        return secret

    async def secret(self, conversation_id: str) -> str | None:
        if self._secret_lookup is None:
            return None
        if conversation_id in self._secrets:
            return self._secrets[conversation_id]
        self.prefetch(conversation_id)
        reading = self._reading[asyncio.get_running_loop()]
        future = reading[conversation_id]
        try:
            return await future
        finally:
            if reading.get(conversation_id) is future:
                del reading[conversation_id]

    def _ms(self, start: float) -> float:
        return round((self.clock() - start) * 1000, 2)

    async def call_many(self, calls: Iterable[tuple[ToolConfig, ToolInvocation]]) -> list[ToolOutcome]:
        """One turn's calls, concurrently, on the guarded client of this event loop; outcomes in the calls' order."""
        calls = list(calls)
        if not calls:
            return []
        http = self.clients.get()
        return list(await asyncio.gather(*(self.call(tool, invocation, http) for tool, invocation in calls)))

    async def call(self, tool: ToolConfig, invocation: ToolInvocation, http: httpx.AsyncClient) -> ToolOutcome:
        start = self.clock()
        arguments, problem = parse_arguments(invocation.arguments)
        if problem is None:
            problem = argument_problem(tool.parameters, arguments)

        def outcome(status: str, result: str, **kwargs: Any) -> ToolOutcome:
            done = ToolOutcome(
                invocation.tool_call_id, tool.name, arguments, status, cap(result), self._ms(start), **kwargs
            )
            log.info(
                "tool call",
                extra={
                    "tool": tool.name,
                    "tool_call_id": invocation.tool_call_id,
                    "status": done.status,
                    "http_status": done.http_status,
                    "duration_ms": done.duration_ms,
                    "result_chars": len(done.result),
                },
            )
            return done

        if problem is not None:
            return outcome("refused", f"The call was not made: {problem}.", error=problem)
        if tool.name in self.canned:
            canned = self.canned[tool.name]
            return outcome("canned", canned if isinstance(canned, str) else json.dumps(canned))
        body = json.dumps(
            {
                "conversation_id": invocation.conversation_id,
                "turn_id": invocation.turn_id,
                "tool_call_id": invocation.tool_call_id,
                "name": tool.name,
                "arguments": arguments,
            },
            separators=(",", ":"),
        ).encode()
        headers = {
            **tool.server.headers,
            "content-type": "application/json",
            TOOL_CALL_ID_HEADER: invocation.tool_call_id,
        }
        secret = await self.secret(invocation.conversation_id)
        if secret:
            headers[SIGNATURE_HEADER] = signature_header(secret, body)
        if tool.async_:
            task = asyncio.ensure_future(self._post_alone(http, tool, body, headers))
            self.background.add(task)
            task.add_done_callback(self.background.discard)
            return outcome("sent", "The request was sent; its answer is not awaited.")
        try:
            status, answer, content_type = await asyncio.wait_for(
                self._post(http, tool, body, headers), tool.server.timeout_ms / 1000
            )
        except TimeoutError:
            return outcome("timeout", f"The server did not answer within {tool.server.timeout_ms} ms.", error="timeout")
        except URLNotAllowed as exc:
            return outcome("refused", "The tool's server address is not allowed.", error=exc.message)
        except _TooLarge:
            return outcome(
                "failed", "The server's answer was too large.", error=f"answer over {self.max_response_bytes} bytes"
            )
        except _guarded_http().HTTPError as exc:  # loaded with the client this call was given
            return outcome("failed", "The server could not be reached.", error=type(exc).__name__)
        if not 200 <= status < 300:
            return outcome("failed", f"The server answered HTTP {status}.", http_status=status, error=f"http {status}")
        return outcome("completed", result_text(answer, content_type), http_status=status)

    async def _post(
        self, http: httpx.AsyncClient, tool: ToolConfig, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes, str]:
        timeout = tool.server.timeout_ms / 1000
        with provider_span("tool", tool.name):
            return await self._stream_post(http, tool, body, headers, timeout)

    async def _stream_post(
        self, http: httpx.AsyncClient, tool: ToolConfig, body: bytes, headers: dict[str, str], timeout: float
    ) -> tuple[int, bytes, str]:
        async with http.stream("POST", tool.server.url, content=body, headers=headers, timeout=timeout) as response:
            received = bytearray()
            async for chunk in response.aiter_bytes():
                received += chunk
                if len(received) > self.max_response_bytes:
                    raise _TooLarge
            return response.status_code, bytes(received), response.headers.get("content-type", "")

    async def _post_alone(
        self, http: httpx.AsyncClient, tool: ToolConfig, body: bytes, headers: dict[str, str]
    ) -> None:
        """An async tool's request: nobody waits for its answer, which is dropped."""
        try:
            status, _, _ = await asyncio.wait_for(self._post(http, tool, body, headers), tool.server.timeout_ms / 1000)
            log.info("async tool call answered", extra={"tool": tool.name, "http_status": status})
        except Exception as exc:  # nobody waits for it: logged (without its content) and dropped
            log.warning("async tool call failed", extra={"tool": tool.name, "error": type(exc).__name__})

    async def drain(self, timeout: float = MAX_TIMEOUT_MS / 1000) -> None:
        """Wait for async tools still in flight (a request outlives its turn only until this returns)."""
        loop = asyncio.get_running_loop()
        mine = {task for task in self.background if task.get_loop() is loop}  # another loop's are its own turns'
        if mine:
            await asyncio.wait(mine, timeout=timeout)


class _TooLarge(Exception):
    pass


# (tool calls) -> their outcomes: what a turn calls (``ToolRunner.call_many``)
ToolCaller = Callable[[list[tuple[ToolConfig, ToolInvocation]]], Awaitable[list[ToolOutcome]]]
