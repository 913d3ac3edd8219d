"""A local server speaking Deepgram's pre-recorded API (``POST /v1/listen``), for the official deepgram-sdk.

Wire format (Deepgram docs, API v1): ``Authorization: Token KEY``; audio bytes in the body (a WAV, or raw
audio with ``encoding``/``sample_rate`` query params); JSON answer ``{metadata, results: {channels:
[{alternatives: [{transcript, confidence, words: [{word, start, end, confidence, punctuated_word}]}],
detected_language}]}}``; errors ``{err_code, err_msg, request_id}`` (400 bad audio, 401 INVALID_AUTH,
429 TOO_MANY_REQUESTS, 5xx).

    with DeepgramServer(latency=0.15) as dg:
        dg.transcripts.script("hello there")
        client = AsyncDeepgramClient(api_key=dg.api_key, environment=dg.environment())
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

from tests.doubles._stt import Recognizer, TranscriptSource
from tests.doubles._wire import RecordedRequest, Reply, WireDouble, words_with_timings

MODEL_UUID = "1ed36bac-f71c-4f3f-a31f-02fd6525c489"


class DeepgramServer(WireDouble):
    default_latency = 0.15

    def __init__(self, *, recognizer: Recognizer | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.transcripts = TranscriptSource(recognizer)
        self.language = "en"

    def environment(self) -> Any:
        from deepgram.environment import DeepgramClientEnvironment

        ws = self.url.replace("http://", "ws://")
        return DeepgramClientEnvironment(base=self.url, production=ws, agent=ws, agent_rest=self.url)

    def check_auth(self, request: RecordedRequest) -> bool:
        return request.headers.get("authorization") == f"Token {self.api_key}"

    def _error(self, status: int, code: str, message: str) -> Reply:
        return Reply(status, {"err_code": code, "err_msg": message, "request_id": str(uuid.uuid4())})

    def unauthorized(self) -> Reply:
        return self._error(401, "INVALID_AUTH", "Invalid credentials.")

    def default_error_body(self, status: int) -> Any:
        codes = {
            429: ("TOO_MANY_REQUESTS", "Too many requests. Please try again later"),
            400: ("Bad Request", "Bad Request"),
        }
        code, message = codes.get(status, ("INTERNAL_SERVER_ERROR", "Internal server error"))
        return {"err_code": code, "err_msg": message, "request_id": str(uuid.uuid4())}

    def handle(self, request: RecordedRequest) -> tuple[int, dict[str, str], Any]:
        if request.method == "GET" and request.path == "/v1/projects":  # what key validation asks
            return 200, {}, {"projects": [{"project_id": "c9b2e9c5-0000-4000-8000-000000000001", "name": "Test"}]}
        if request.method != "POST" or request.path != "/v1/listen":
            raise self._error(404, "NOT_FOUND", f"{request.method} {request.path} not found")
        from airies.voice.audio.codecs import AudioFormatError, read_wav

        if not request.body:
            raise self._error(400, "Bad Request", "Bad Request: failed to process audio: corrupt or unsupported data")
        encoding = (request.query.get("encoding") or [None])[0]
        try:
            if encoding == "linear16":
                rate = int((request.query.get("sample_rate") or ["16000"])[0])
                pcm = request.body
            else:
                pcm, rate = read_wav(request.body)
        except (AudioFormatError, ValueError) as exc:
            raise self._error(
                400, "Bad Request", f"Bad Request: failed to process audio: corrupt or unsupported data ({exc})"
            ) from exc
        duration = len(pcm) / 2 / rate
        text = self.transcripts.text_for(pcm, rate)
        words = [{**w, "confidence": 0.97, "punctuated_word": w["word"]} for w in words_with_timings(text, duration)]
        model = (request.query.get("model") or ["nova-3"])[0]
        request_id = str(uuid.uuid4())
        return (
            200,
            {"dg-request-id": request_id},
            {
                "metadata": {
                    "transaction_key": "deprecated",
                    "request_id": request_id,
                    "sha256": hashlib.sha256(request.body).hexdigest(),
                    "created": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                    "duration": round(duration, 6),
                    "channels": 1,
                    "models": [MODEL_UUID],
                    "model_info": {MODEL_UUID: {"name": f"general-{model}", "version": "2025-01-01.0", "arch": model}},
                },
                "results": {
                    "channels": [
                        {
                            "alternatives": [{"transcript": text, "confidence": 0.97 if text else 0.0, "words": words}],
                            "detected_language": self.language,
                            "language_confidence": 0.99,
                        }
                    ]
                },
            },
        )
