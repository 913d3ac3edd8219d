"""Every OpenAI-compatible Chat Completions endpoint through the official ``openai`` SDK.

One class serves OpenAI, Groq, DeepInfra and any self-hosted endpoint (vLLM, Ollama): only the name, base URL,
key and model list differ. An endpoint a tenant supplied gets ``url_guard``: the SDK's HTTP client is then the
guard's (every connection to a checked public address, redirects included). The SDK's own retries are off (``max_retries=0``): failover is the router's job, and
an SDK retry would hide a slow or failing provider from the router's statistics.

Errors become ``airies.core.errors.ProviderError`` with ``details["reason"]`` one of ``connect_timeout``, ``timeout``,
``connection``, ``rate_limited`` (``retry_after`` from ``Retry-After``/``retry-after-ms``), ``server_error``,
``auth``, ``bad_request``, ``not_found``, ``stream_error``, ``dropped`` (the stream ended without a finish reason),
``url_not_allowed`` (the URL guard refused where the endpoint's name now points).
``retryable`` means "another provider may succeed" (the router fails over); ``bad_request`` is not retryable.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncGenerator
from typing import Any

from airies.core.errors import ProviderError
from airies.core.guarded_http import guarded_async_client
from airies.core.url_guard import URLGuard, URLNotAllowed
from airies.core.vendor_clients import LoopBoundClient
from airies.llm.vendors.base import (
    LLMEvent,
    LLMRequest,
    LLMResponse,
    StreamEnd,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from airies.llm.vendors.tokens import count_message_tokens, count_text_tokens


class OpenAICompatibleProvider:
    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str | None,
        models: list[str] | None = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 15.0,
        stream_usage: bool = True,
        key_source: str = "platform",
        url_guard: URLGuard | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url
        self.api_key = api_key or "not-needed"  # self-hosted endpoints often take no key; the SDK wants one
        self.models = models or []
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.stream_usage = stream_usage
        self.key_source = key_source
        self.url_guard = url_guard
        self._clients = LoopBoundClient(lambda: self._new_client(self.api_key))

    def __repr__(self) -> str:  # never print the key
        return (
            f"OpenAICompatibleProvider(name={self.name!r}, base_url={self.base_url!r}, key_source={self.key_source!r})"
        )

    # -- client -------------------------------------------------------------------------------------
    def client(self, api_key: str | None = None) -> Any:
        if api_key is not None:  # a one-off client (key validation): not cached
            return self._new_client(api_key)
        return self._clients.get()

    def _new_client(self, api_key: str) -> Any:
        import openai  # lazy: 47 MB SDK, only loaded when an LLM is actually called

        timeout = openai.Timeout(self.read_timeout, connect=self.connect_timeout, pool=self.connect_timeout)
        # Any: the SDK types its own vendored httpx client; the guard's httpx client is what it accepts at run time
        http_client: Any = guarded_async_client(self.url_guard) if self.url_guard is not None else None
        return openai.AsyncOpenAI(
            api_key=api_key, base_url=self.base_url, timeout=timeout, max_retries=0, http_client=http_client
        )

    def _params(self, request: LLMRequest) -> dict[str, Any]:
        # The messages and tools go into the JSON body as they are (``extra_body`` is merged into it unchanged).
        # Passed as parameters, the SDK walks every message and schema against its parameter types to rename
        # aliased keys, which chat parameters have none of: on a turn's critical path, 4.9 ms at 42 messages and
        # 0.5 ms at 4 (benchmarks/vs_pipecat).
        body: dict[str, Any] = {"messages": request.messages}
        params: dict[str, Any] = {
            "model": request.model,
            "messages": [],
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "extra_body": body,
        }
        if request.tools:
            body["tools"] = request.tools
            if request.tool_choice is not None:
                params["tool_choice"] = request.tool_choice
        if request.response_format is not None:
            params["response_format"] = request.response_format
        return params

    # -- streaming ----------------------------------------------------------------------------------
    async def stream(self, request: LLMRequest) -> AsyncGenerator[LLMEvent, None]:
        started = time.perf_counter()
        params = self._params(request)
        if self.stream_usage:
            params["stream_options"] = {"include_usage": True}
        text_parts: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        usage: Usage | None = None
        finish_reason: str | None = None
        ttft_ms: float | None = None
        stream = None
        try:
            stream = await self.client().chat.completions.create(stream=True, **params)
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = _usage(chunk.usage)
                for choice in chunk.choices:
                    delta = choice.delta
                    if delta is not None and delta.content:
                        if ttft_ms is None:
                            ttft_ms = (time.perf_counter() - started) * 1000
                        text_parts.append(delta.content)
                        yield TextDelta(delta.content)
                    for tool in (delta.tool_calls if delta is not None else None) or []:
                        if ttft_ms is None:
                            ttft_ms = (time.perf_counter() - started) * 1000
                        slot = calls.setdefault(tool.index, {"id": "", "name": "", "arguments": ""})
                        name = tool.function.name if tool.function else None
                        arguments = (tool.function.arguments if tool.function else None) or ""
                        if tool.id:
                            slot["id"] = tool.id
                        if name:
                            slot["name"] += name
                        slot["arguments"] += arguments
                        yield ToolCallDelta(index=tool.index, id=tool.id, name=name, arguments=arguments)
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
        except ProviderError:
            raise
        except Exception as exc:
            raise map_error(self.name, exc) from exc
        finally:
            # Also on cancellation (a caller barging in): closing the response tells the upstream to stop generating.
            if stream is not None:
                try:
                    await stream.close()
                except Exception:
                    pass
        if finish_reason is None:
            raise ProviderError(
                f"{self.name} stream ended before the reply finished",
                provider=self.name,
                retryable=True,
                details="dropped",
            )
        text = "".join(text_parts)
        tool_calls = tuple(
            ToolCall(id=c["id"], name=c["name"], arguments=c["arguments"]) for _, c in sorted(calls.items())
        )
        if usage is None:
            usage = estimate_usage(request, text, tool_calls)
        yield StreamEnd(
            usage=usage,
            finish_reason=finish_reason,
            provider=self.name,
            model=request.model,
            ttft_ms=ttft_ms,
            total_ms=(time.perf_counter() - started) * 1000,
            tool_calls=tool_calls,
            metadata={"is_language_model": True, "key_source": self.key_source},
        )

    # -- non-streaming ------------------------------------------------------------------------------
    async def complete(self, request: LLMRequest) -> LLMResponse:
        started = time.perf_counter()
        try:
            completion = await self.client().chat.completions.create(stream=False, **self._params(request))
        except Exception as exc:
            raise map_error(self.name, exc) from exc
        if not completion.choices:
            raise ProviderError(f"{self.name} returned no choices", provider=self.name, retryable=True, details="empty")
        choice = completion.choices[0]
        message = choice.message
        text = message.content or ""
        tool_calls = tuple(
            ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments or "")
            for call in (message.tool_calls or [])
            if getattr(call, "function", None) is not None
        )
        usage = _usage(completion.usage) if completion.usage is not None else estimate_usage(request, text, tool_calls)
        elapsed = (time.perf_counter() - started) * 1000
        end = StreamEnd(
            usage=usage,
            finish_reason=choice.finish_reason,
            provider=self.name,
            model=request.model,
            ttft_ms=elapsed,  # no stream: the first token arrives with the whole reply
            total_ms=elapsed,
            tool_calls=tool_calls,
            metadata={"is_language_model": True, "key_source": self.key_source},
        )
        return LLMResponse(text=text, tool_calls=tool_calls, end=end)

    # -- models and keys ----------------------------------------------------------------------------
    async def list_models(self, api_key: str | None = None) -> list[str]:
        client = self.client(api_key)
        try:
            page = await client.models.list()
            return sorted(model.id for model in page.data)
        except Exception as exc:
            raise map_error(self.name, exc) from exc
        finally:
            if api_key is not None:
                await client.close()

    async def validate_api_key(self, api_key: str | None = None) -> bool:
        """True if the provider accepts the key; False if it rejects it (401/403); raises if unreachable."""
        try:
            await self.list_models(api_key)
        except ProviderError as exc:
            if exc.details.get("reason") == "auth":
                return False
            raise
        return True


def _usage(raw: Any) -> Usage:
    details = getattr(raw, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    return Usage(
        prompt_tokens=int(raw.prompt_tokens or 0),
        completion_tokens=int(raw.completion_tokens or 0),
        cached_tokens=int(cached or 0),
    )


def estimate_usage(request: LLMRequest, text: str, tool_calls: tuple[ToolCall, ...] = ()) -> Usage:
    completion = count_text_tokens(text) + sum(
        count_text_tokens(call.name) + count_text_tokens(call.arguments) for call in tool_calls
    )
    return Usage(prompt_tokens=count_message_tokens(request.messages), completion_tokens=completion, estimated=True)


def parse_retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is None:
            return None
        return max(0.0, parsed.timestamp() - time.time())


def map_error(provider: str, exc: BaseException) -> ProviderError:
    import openai

    if isinstance(exc, URLNotAllowed):
        return ProviderError(f"{provider}: {exc.message}", provider=provider, retryable=True, details="url_not_allowed")
    if isinstance(exc, openai.APITimeoutError):
        cause = exc.__cause__
        reason = "connect_timeout" if cause is not None and "Connect" in type(cause).__name__ else "timeout"
        return ProviderError(f"{provider} timed out", provider=provider, retryable=True, details=reason)
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError(f"{provider} connection failed", provider=provider, retryable=True, details="connection")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = f"{provider} returned HTTP {status}"
        if status == 429:
            return ProviderError(
                message,
                provider=provider,
                retryable=True,
                upstream_status=status,
                retry_after=parse_retry_after(exc.response.headers),
                details="rate_limited",
            )
        if status >= 500 or status in (408, 409):
            return ProviderError(
                message, provider=provider, retryable=True, upstream_status=status, details="server_error"
            )
        if status in (401, 403):
            return ProviderError(message, provider=provider, retryable=True, upstream_status=status, details="auth")
        if status == 404:
            return ProviderError(
                message, provider=provider, retryable=True, upstream_status=status, details="not_found"
            )
        return ProviderError(message, provider=provider, retryable=False, upstream_status=status, details="bad_request")
    if isinstance(exc, openai.APIError):  # an error event inside an SSE stream
        return ProviderError(
            f"{provider} stream error: {exc}", provider=provider, retryable=True, details="stream_error"
        )
    return ProviderError(
        f"{provider} failed: {type(exc).__name__}", provider=provider, retryable=True, details="unexpected"
    )
