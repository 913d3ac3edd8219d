"""No duplicated text after a mid-stream failover: the next provider gets the request plus the text already spoken as a
partial assistant message and an instruction to continue from there; whatever it sends is passed through
``PrefixSuppressor``, which drops a restart of the already-spoken text (the whole prefix, or a word-aligned overlap of
its tail), so a provider that ignores the instruction and starts over is not heard twice. Once a tool-call delta has
been emitted there is no failover (a half-built tool call cannot be continued): the error is raised.
"""

from __future__ import annotations

import dataclasses

from airies.llm.vendors.base import LLMRequest

CONTINUE_INSTRUCTION = (
    "Your previous reply was cut off after the text above. Continue it exactly where it stopped, "
    "without repeating anything already said."
)


class PrefixSuppressor:
    """Drops a restart of ``spoken`` from the start of a new provider's output.

    Buffers at most ``len(spoken)`` characters: once the buffer diverges from ``spoken`` (a real continuation) or
    covers it (a restart), it decides and passes everything after through unbuffered.
    """

    MIN_OVERLAP = 12  # a shorter shared tail is a coincidence, not a repeat

    def __init__(self, spoken: str) -> None:
        self.spoken = spoken
        self.buffer = ""
        self.decided = not spoken

    def feed(self, text: str) -> str:
        if self.decided:
            return text
        self.buffer += text
        if self.spoken.startswith(self.buffer):
            if len(self.buffer) < len(self.spoken):
                return ""  # still possibly a restart: hold
            self.decided = True
            return ""  # exactly the spoken text again: drop it
        if self._may_repeat_tail():
            return ""  # may still be a repeat of the last words: hold
        return self._decide()

    def _may_repeat_tail(self) -> bool:
        spoken, buffer = self.spoken, self.buffer
        for start in range(1, len(spoken) - self.MIN_OVERLAP + 1):
            if spoken[start - 1].isspace() and spoken[start:].startswith(buffer):
                return True
        return False

    def finish(self) -> str:
        if self.decided:
            return ""
        if self.spoken.startswith(self.buffer):
            self.decided = True
            return ""  # the new reply is a prefix of what was said: nothing new
        return self._decide()

    def _decide(self) -> str:
        self.decided = True
        buffer, spoken = self.buffer, self.spoken
        if buffer.startswith(spoken):
            return buffer[len(spoken) :]
        overlap = _tail_overlap(spoken, buffer) or _common_prefix(spoken, buffer)
        return buffer[overlap:]


def _tail_overlap(spoken: str, new: str) -> int:
    """Length of the longest word-aligned suffix of ``spoken`` that ``new`` starts with."""
    limit = min(len(spoken), len(new))
    for size in range(limit, PrefixSuppressor.MIN_OVERLAP - 1, -1):
        start = len(spoken) - size
        if (start == 0 or spoken[start - 1].isspace()) and new.startswith(spoken[start:]):
            return size
    return 0


def _common_prefix(spoken: str, new: str) -> int:
    """A restart that diverged part-way: the word-aligned shared beginning, if long enough to be a repeat."""
    size = 0
    for a, b in zip(spoken, new, strict=False):
        if a != b:
            break
        size += 1
    while size and not (size == len(new) or new[size - 1].isspace()):
        size -= 1
    return size if size >= PrefixSuppressor.MIN_OVERLAP else 0


def continuation_request(request: LLMRequest, spoken: str) -> LLMRequest:
    messages = [
        *request.messages,
        {"role": "assistant", "content": spoken},
        {"role": "system", "content": CONTINUE_INSTRUCTION},
    ]
    return dataclasses.replace(request, messages=messages)
