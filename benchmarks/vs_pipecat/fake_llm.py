"""One OpenAI-compatible Chat Completions SSE server for both systems, with injected latencies.

``POST /v1/chat/completions`` with ``stream: true``: the first token ``--ttft-ms`` (250) after the request arrives,
then one token every ``--token-ms`` (15) on absolute deadlines (sleep overshoot does not add up), the same 40-token (``reply.py``),
3-sentence reply every time (GPT-style tokens: words with their leading space, punctuation apart), then the usage
chunk and ``[DONE]``. Each request's timeline (CLOCK_MONOTONIC ns: arrival, every token written, done) and size is
appended as one JSON line to ``--log``, so the orchestrator can split each turn's overhead across processes.

Not ``tests/doubles/openai_server.py``: that double sleeps between chunks (the overshoot of 40 sleeps adds up) and
keeps what it saw in its own process. This one runs in a process of its own under the Pipecat environment's Python
(aiohttp comes with pipecat-ai), so neither system's interpreter serves the other's requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

from aiohttp import web

from benchmarks.vs_pipecat.reply import REPLY_TOKENS, TOKEN_MS, TTFT_MS


def _chunk(cid: str, created: int, delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None) -> bytes:
    obj: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": "fake-model",
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        obj["usage"] = usage
    return ("data: " + json.dumps(obj, separators=(",", ":")) + "\n\n").encode()


def _last_user(messages: list[dict[str, Any]]) -> str:
    content = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "") or ""
    if isinstance(content, list):  # content parts
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def make_app(ttft_s: float, token_s: float, log_path: str | None) -> web.Application:
    log = open(log_path, "a", buffering=1) if log_path else None  # noqa: SIM115 (open for the server's life)

    async def completions(request: web.Request) -> web.StreamResponse:
        t_arrival = time.monotonic_ns()
        loop = asyncio.get_running_loop()
        start = loop.time()
        raw = await request.read()
        body = json.loads(raw)
        messages = body.get("messages", [])
        cid, created = "chatcmpl-" + uuid.uuid4().hex[:16], int(time.time())
        if not body.get("stream"):
            return web.json_response(
                {"error": {"message": "only stream=true is served", "type": "bad_request"}}, status=400
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        token_ns = []
        for i, token in enumerate(REPLY_TOKENS):
            delay = start + ttft_s + i * token_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await response.write(
                _chunk(cid, created, {"role": "assistant", "content": token} if i == 0 else {"content": token})
            )
            token_ns.append(time.monotonic_ns())
        await response.write(_chunk(cid, created, {}, finish="stop"))
        prompt = sum(len(str(m.get("content") or "")) for m in messages) // 4
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": len(REPLY_TOKENS),
            "total_tokens": prompt + len(REPLY_TOKENS),
        }
        await response.write(_chunk(cid, created, None, usage=usage))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        if log is not None:
            line = {
                "user": _last_user(messages),
                "n_messages": len(messages),
                "body_bytes": len(raw),
                "t_arrival_ns": t_arrival,
                "token_ns": token_ns,
                "t_done_ns": time.monotonic_ns(),
            }
            log.write(json.dumps(line) + "\n")
        return response

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_get("/v1/models", models)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ttft-ms", type=float, default=TTFT_MS)
    parser.add_argument("--token-ms", type=float, default=TOKEN_MS)
    parser.add_argument("--log", default=None, help="JSON lines, one per request")
    args = parser.parse_args()
    app = make_app(args.ttft_ms / 1000, args.token_ms / 1000, args.log)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
