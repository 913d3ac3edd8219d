"""What both systems get from their providers: the latencies injected and the one reply the fake LLM streams."""

from __future__ import annotations

TTFT_MS = 250.0  # request -> first token
TOKEN_MS = 15.0  # between tokens
TTS_MS = 100.0  # TTS call -> first chunk

# 40 tokens, 3 sentences (GPT-style: words with their leading space, punctuation apart).
REPLY_TOKENS = (
    *("Sure", ",", " I", " can", " definitely", " help", " you", " with", " that", " order", " today", "."),
    *(" It", " shipped", " from", " our", " warehouse", " yesterday", " and", " should", " arrive", " by"),
    *(" Friday", " afternoon", "."),
    *(" Is", " there", " anything", " else", " you", " would", " like", " me", " to", " check", " for", " you"),
    *(" right", " now", "?"),
)
REPLY = "".join(REPLY_TOKENS)
FIRST_SENTENCE_END = REPLY_TOKENS.index(".")  # the token that closes the first sentence
