"""ORM models of the billing capability (filled in by its issue)."""

from __future__ import annotations
