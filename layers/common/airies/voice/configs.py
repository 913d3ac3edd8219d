"""Voice and transcriber configs arrive as pydantic models (an agent's), dataclasses or dicts (a route's body)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def config_field(obj: Any, name: str, default: Any = None) -> Any:
    """Read a field from a pydantic model, dataclass or dict (callers pass "config-like" objects)."""
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)
