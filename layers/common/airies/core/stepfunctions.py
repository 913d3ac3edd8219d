"""Errors as Step Functions sees them: a task's error *name* (the exception class) decides Retry and Catch.

The state machines under infra/statemachines/ retry ``ProviderRetryableError`` (and Lambda/database faults) with
backoff and never retry ``ProviderRejectedError``: a provider that refused a request refuses it again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airies.core.errors import ProviderError


class ProviderRetryableError(Exception):
    """A transient provider failure (network, 5xx, rate limit): the state machine retries it with backoff."""


class ProviderRejectedError(Exception):
    """The provider refused the request (4xx, bad key, bad input): retrying cannot help; the state machine catches
    it at once and records the failure."""


@contextmanager
def step_errors() -> Iterator[None]:
    """Re-raise a ``ProviderError`` under the name the state machine's Retry/Catch match on."""
    try:
        yield
    except ProviderError as exc:
        kind = ProviderRetryableError if exc.retryable else ProviderRejectedError
        raise kind(f"{exc.message} ({exc.details})") from exc


def caught_error_reason(error: Any, limit: int = 2000) -> str:
    """What a Catch put in the state's input (``{"Error", "Cause"}``; a Lambda error's Cause is its JSON), as one
    line: ``"<Error>: <message>"``."""
    if isinstance(error, dict):
        cause = error.get("Cause") or ""
        try:
            cause = json.loads(cause).get("errorMessage", cause)
        except (ValueError, AttributeError):
            pass
        return f"{error.get('Error', 'error')}: {cause}"[:limit]
    return str(error)[:limit]
