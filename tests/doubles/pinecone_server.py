"""Wire-level Pinecone data-plane double: the REST routes the official SDK calls, on 127.0.0.1:0.

``POST /vectors/upsert``, ``POST /query`` (exact cosine, metadata filters with $eq/$ne/$in/$and/$or and implicit
equality), ``POST /vectors/delete`` (ids, deleteAll, filter), ``POST /describe_index_stats``. It enforces the real
limits the store must respect (1,000 vectors and 2 MB per upsert, a fixed dimension) and checks ``Api-Key``.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

import numpy as np

from tests.doubles._wire import JsonServer

MAX_UPSERT_VECTORS = 1000
MAX_REQUEST_BYTES = 2 * 1024 * 1024


def _compare(op: str, value: Any, arg: Any) -> bool:
    if op == "$eq":
        return value == arg
    if op == "$ne":
        return value != arg
    if op == "$in":
        return value in arg
    if op == "$nin":
        return value not in arg
    return False


def _match(metadata: dict[str, Any], flt: dict[str, Any] | None) -> bool:
    if not flt:
        return True
    for key, cond in flt.items():
        if key == "$and":
            if not all(_match(metadata, c) for c in cond):
                return False
            continue
        if key == "$or":
            if not any(_match(metadata, c) for c in cond):
                return False
            continue
        value = metadata.get(key)
        if not isinstance(cond, dict):
            cond = {"$eq": cond}
        for op, arg in cond.items():
            if not _compare(op, value, arg):
                return False
    return True


class PineconeDouble(JsonServer):
    def __init__(self, *, api_key: str = "pc-test-key", dimension: int | None = None) -> None:
        self.api_key = api_key
        self.dimension = dimension
        self.namespaces: dict[str, dict[str, tuple[np.ndarray, dict[str, Any]]]] = {}
        self.requests: Counter[str] = Counter()
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    @property
    def host(self) -> str:
        return self.url

    def respond(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, Any]]:
        return self.handle(path, headers, raw)

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, Any]]:
        lowered = {k.lower(): v for k, v in headers.items()}
        if lowered.get("api-key") != self.api_key:
            return 401, {"code": 16, "message": "Invalid API Key"}
        if len(raw) > MAX_REQUEST_BYTES:
            return 400, {"code": 3, "message": f"Request size {len(raw)} exceeds the maximum supported size"}
        body = json.loads(raw or b"{}")
        route = path.split("?", 1)[0]
        with self.lock:
            self.requests[route] += 1
            self.bodies.append((route, body))
            namespace = body.get("namespace", "")
            if route == "/vectors/upsert":
                vectors = body.get("vectors", [])
                if len(vectors) > MAX_UPSERT_VECTORS:
                    return 400, {"code": 3, "message": f"batch of {len(vectors)} exceeds {MAX_UPSERT_VECTORS}"}
                store = self.namespaces.setdefault(namespace, {})
                for v in vectors:
                    values = np.asarray(v["values"], dtype=np.float32)
                    if self.dimension is None:
                        self.dimension = len(values)
                    if len(values) != self.dimension:
                        return 400, {
                            "code": 3,
                            "message": f"Vector dimension {len(values)} does not match the dimension of the index {self.dimension}",
                        }
                    store[v["id"]] = (values, dict(v.get("metadata") or {}))
                return 200, {"upsertedCount": len(vectors)}
            if route == "/query":
                store = self.namespaces.get(namespace, {})
                query = np.asarray(body["vector"], dtype=np.float32)
                flt = body.get("filter")
                scored = []
                for vid, (values, metadata) in store.items():
                    if not _match(metadata, flt):
                        continue
                    denom = float(np.linalg.norm(values) * np.linalg.norm(query)) or 1.0
                    scored.append((float(values @ query) / denom, vid, metadata, values))
                scored.sort(key=lambda item: -item[0])
                matches = []
                for score, vid, metadata, values in scored[: body["topK"]]:
                    match: dict[str, Any] = {"id": vid, "score": score, "values": []}
                    if body.get("includeValues"):
                        match["values"] = values.tolist()
                    if body.get("includeMetadata"):
                        match["metadata"] = metadata
                    matches.append(match)
                return 200, {"matches": matches, "namespace": namespace, "usage": {"readUnits": 5}}
            if route == "/vectors/delete":
                if namespace not in self.namespaces:  # serverless indexes answer 404 for a never-written namespace
                    return 404, {"code": 5, "message": "Namespace not found", "details": []}
                store = self.namespaces[namespace]
                if body.get("deleteAll"):
                    self.namespaces.pop(namespace, None)
                elif "ids" in body:
                    for vid in body["ids"]:
                        store.pop(vid, None)
                elif "filter" in body:
                    for vid in [vid for vid, (_, md) in store.items() if _match(md, body["filter"])]:
                        store.pop(vid)
                return 200, {}
            if route == "/describe_index_stats":
                spaces = {ns: {"vectorCount": len(vs)} for ns, vs in self.namespaces.items() if vs}
                return 200, {
                    "namespaces": spaces,
                    "dimension": self.dimension or 0,
                    "indexFullness": 0.0,
                    "totalVectorCount": sum(s["vectorCount"] for s in spaces.values()),
                    "metric": "cosine",
                    "vectorType": "dense",
                }
        return 404, {"code": 5, "message": f"no route {route}"}
