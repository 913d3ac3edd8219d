"""Wire-level OpenAI embeddings double: ``POST /v1/embeddings`` as the official SDK calls it, on 127.0.0.1:0.

Vectors come from the offline hashing embedder (so retrieval through this double behaves like the real thing,
lexically) at the requested ``dimensions`` or the model's size; ``encoding_format`` base64 (the SDK's default)
and float are both served. Checks ``Authorization: Bearer``; enforces 2,048 inputs per request; ``fail_next``
scripts errors (429/500) to exercise the SDK's retries. Zero latency unless ``latency`` is set.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from airies.knowledge.embedders.base import approx_tokens
from airies.knowledge.embedders.hashing import HashingEmbedder
from tests.doubles._wire import JsonServer

MODEL_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}


class OpenAIEmbeddingsDouble(JsonServer):
    def __init__(self, *, api_key: str = "sk-test", latency: float = 0.0, vectors: str = "hashing") -> None:
        self.api_key = api_key
        self.latency = latency
        self.vectors = vectors  # "hashing" (lexically meaningful) | "random" (cheapest: seeded noise, benchmarks)
        self.requests: list[dict[str, Any]] = []
        self.failures: deque[tuple[int, dict[str, Any]]] = deque()
        self._embedders: dict[int, HashingEmbedder] = {}
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def respond(
        self, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        return self.handle(path, headers, raw)

    def fail_next(self, status: int, message: str = "scripted failure") -> None:
        self.failures.append((status, {"error": {"message": message, "type": "server_error", "code": None}}))

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        if self.latency:
            time.sleep(self.latency)
        lowered = {k.lower(): v for k, v in headers.items()}
        if lowered.get("authorization") != f"Bearer {self.api_key}":
            return (
                401,
                {
                    "error": {
                        "message": "Incorrect API key provided",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
                {},
            )
        if path.split("?", 1)[0] != "/v1/embeddings":
            return 404, {"error": {"message": f"no route {path}"}}, {}
        body = json.loads(raw or b"{}")
        with self.lock:
            self.requests.append(body)
            if self.failures:
                status, error = self.failures.popleft()
                return status, error, {"retry-after-ms": "10"} if status == 429 else {}
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
        if not inputs or len(inputs) > 2048:
            return 400, {"error": {"message": "input must have 1-2048 items", "type": "invalid_request_error"}}, {}
        model = body.get("model", "")
        dims = int(body.get("dimensions") or MODEL_DIMENSIONS.get(model, 1536))
        if self.vectors == "random":
            seed = len(self.requests) * 7919 + len(inputs)
            vectors = np.random.default_rng(seed).standard_normal((len(inputs), dims)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        else:
            with self.lock:
                embedder = self._embedders.setdefault(dims, HashingEmbedder(dimensions=dims))
            vectors = embedder.embed(inputs).vectors
        base64_format = body.get("encoding_format") == "base64"
        data = []
        for i, vector in enumerate(vectors):
            if base64_format:
                encoded: Any = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
            else:
                encoded = vector.tolist()
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        tokens = sum(approx_tokens(t) for t in inputs)
        return (
            200,
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
            {},
        )


if __name__ == "__main__":  # a separate process (benchmarks): prints its base URL, serves until stdin closes
    import sys

    mode = sys.argv[1] if len(sys.argv) > 1 else "hashing"
    with OpenAIEmbeddingsDouble(vectors=mode) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()
