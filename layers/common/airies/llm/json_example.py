"""A deterministic JSON value that satisfies a JSON Schema, for the offline responder's JSON replies.

It covers what schemas of extracted data use: ``type`` (one or a list: the first that is not ``null``), ``enum``,
``const``, ``default``, objects (every property, required or not), arrays (``minItems`` items), strings
(``minLength``, ``maxLength``, common ``format`` values), integers and numbers (``minimum``/``maximum``, exclusive
bounds, ``multipleOf``), booleans, ``anyOf``/``oneOf`` (the first branch), ``allOf`` (merged) and local ``$ref``.
A ``pattern`` is not generated for: the value may not match it (the caller validates and says so).
"""

from __future__ import annotations

import math
from typing import Any

FORMATS = {
    "date": "2026-01-01",
    "date-time": "2026-01-01T00:00:00Z",
    "time": "00:00:00Z",
    "email": "caller@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}
MAX_DEPTH = 12


def example_for(schema: Any, root: dict[str, Any] | None = None, depth: int = 0) -> Any:
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return None
    root = schema if root is None else root
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return example_for(_resolve(root, ref), root, depth + 1)
    for keyword in ("const", "default"):
        if keyword in schema:
            return schema[keyword]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for keyword in ("anyOf", "oneOf"):
        branches = schema.get(keyword)
        if isinstance(branches, list) and branches:
            return example_for(branches[0], root, depth + 1)
    if isinstance(schema.get("allOf"), list):
        merged: dict[str, Any] = {key: value for key, value in schema.items() if key != "allOf"}
        for part in schema["allOf"]:
            if isinstance(part, dict):
                merged = {
                    **merged,
                    **part,
                    "properties": {**merged.get("properties", {}), **part.get("properties", {})},
                }
        return example_for(merged, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    return _typed(kind, schema, root, depth)


def _typed(kind: str, schema: dict[str, Any], root: dict[str, Any], depth: int) -> Any:
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: example_for(sub, root, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        count = int(schema.get("minItems") or 0)
        return [example_for(schema.get("items") or {}, root, depth + 1) for _ in range(count)]
    if kind == "string":
        text = FORMATS.get(str(schema.get("format")), "example")
        low = int(schema.get("minLength") or 0)
        text = text + "x" * max(0, low - len(text))
        high = schema.get("maxLength")
        return text[: int(high)] if isinstance(high, int) else text
    if kind in ("integer", "number"):
        return _number(kind, schema)
    if kind == "boolean":
        return False
    return None


def _number(kind: str, schema: dict[str, Any]) -> int | float:
    low, high = schema.get("minimum"), schema.get("maximum")
    if isinstance(schema.get("exclusiveMinimum"), int | float):
        low = schema["exclusiveMinimum"] + (1 if kind == "integer" else 0.5)
    if isinstance(schema.get("exclusiveMaximum"), int | float):
        high = schema["exclusiveMaximum"] - (1 if kind == "integer" else 0.5)
    value: float = 0
    if isinstance(low, int | float):
        value = max(value, low)
    if isinstance(high, int | float):
        value = min(value, high)
    step = schema.get("multipleOf")
    if isinstance(step, int | float) and step > 0:
        value = math.ceil(value / step) * step
    if kind == "integer":
        return math.ceil(value)
    return value


def _resolve(root: dict[str, Any], ref: str) -> Any:
    if not ref.startswith("#"):
        return None  # remote references are not fetched
    node: Any = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
