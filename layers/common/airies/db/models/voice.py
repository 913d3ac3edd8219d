"""ORM models of the voice capability (filled in by its issue)."""

from __future__ import annotations
