"""ORM models of the knowledge capability (filled in by its issue)."""

from __future__ import annotations
