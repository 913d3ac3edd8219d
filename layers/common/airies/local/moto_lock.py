"""One lock around moto's backends, in process and in server mode.

DynamoDB, S3 and SQS apply each request atomically; moto's in-memory backends do not (a GetItem with a projection
iterates an item's attributes while another thread's UpdateItem adds one, and fails with "dictionary changed size
during iteration"). A voice turn reads and writes the session table from several threads at once, as it does against
DynamoDB, so the local stack and the tests serve moto one request at a time.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

MOTO_LOCK = threading.RLock()


def linearize_in_process_moto() -> None:
    """Make ``moto.mock_aws`` handle one request at a time (idempotent; every later ``mock_aws`` is covered)."""
    from moto.core.botocore_stubber import BotocoreStubber  # moto is a test tool: not in the functions' layers

    original = BotocoreStubber.process_request
    if getattr(original, "linearized", False):
        return

    @functools.wraps(original)
    def process_request(self: Any, request: Any) -> Any:
        with MOTO_LOCK:
            return original(self, request)

    process_request.linearized = True  # type: ignore[attr-defined]
    BotocoreStubber.process_request = process_request  # type: ignore[method-assign]
