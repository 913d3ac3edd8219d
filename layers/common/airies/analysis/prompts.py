"""The messages of each analysis step: the agent's prompt for the step, the transcript, and what to answer."""

from __future__ import annotations

import json
from typing import Any

SYSTEM = (
    "You analyse a finished phone call between a caller and a voice agent. The transcript follows. "
    "Answer only from the transcript; never invent facts that are not in it."
)
SUMMARY = "Answer with the summary as plain text, without a heading."
STRUCTURED = "Answer with one JSON object, and nothing else, that validates against this JSON Schema:\n{schema}"
RETRY = (
    "Your answer was not valid: {error}. Answer again with one JSON object, and nothing else, that validates "
    "against the schema."
)

# The JSON each success-evaluation rubric answers, as a JSON Schema (checked like structured data).
RUBRICS: dict[str, dict[str, Any]] = {
    "pass_fail": {
        "type": "object",
        "properties": {"success": {"type": "boolean"}, "reason": {"type": "string"}},
        "required": ["success", "reason"],
    },
    "numeric_1_10": {
        "type": "object",
        "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 10}, "reason": {"type": "string"}},
        "required": ["score", "reason"],
    },
    "verdict": {
        "type": "object",
        "properties": {"verdict": {"type": "string", "minLength": 1}},
        "required": ["verdict"],
    },
}
RUBRIC_WORDS = {
    "pass_fail": "Decide whether the call succeeded (success true or false) and give the reason in one sentence.",
    "numeric_1_10": "Score the call from 1 (failed) to 10 (fully succeeded) and give the reason in one sentence.",
    "verdict": "Write your verdict on the call in two or three sentences.",
}


def transcript_message(transcript: str) -> dict[str, str]:
    return {"role": "user", "content": f"Transcript:\n{transcript}"}


def summary_messages(prompt: str, transcript: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": f"{SYSTEM}\n\n{prompt}\n{SUMMARY}"}, transcript_message(transcript)]


def json_messages(prompt: str, schema: dict[str, Any], transcript: str) -> list[dict[str, str]]:
    instructions = STRUCTURED.format(schema=json.dumps(schema, sort_keys=True))
    return [{"role": "system", "content": f"{SYSTEM}\n\n{prompt}\n{instructions}"}, transcript_message(transcript)]


def evaluation_prompt(prompt: str, rubric: str) -> str:
    return f"{prompt}\n{RUBRIC_WORDS[rubric]}"


def retry_message(error: str) -> dict[str, str]:
    return {"role": "user", "content": RETRY.format(error=error)}
