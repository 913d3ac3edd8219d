"""ORM models of the conversations capability (filled in by its issue)."""

from __future__ import annotations
