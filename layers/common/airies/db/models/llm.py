"""ORM models of the llm capability (filled in by its issue)."""

from __future__ import annotations
