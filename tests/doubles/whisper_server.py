"""A local server speaking OpenAI's audio transcription API (``POST /v1/audio/transcriptions``), for the openai SDK.

Wire format: ``Authorization: Bearer KEY``; multipart form (file, model, response_format,
timestamp_granularities[], language, prompt); ``verbose_json`` answers ``{task, language, duration,
text, words: [{word, start, end}], segments}``, ``json`` answers ``{text}``; errors
``{"error": {message, type, param, code}}`` (400 bad file, 401 invalid_api_key, 429 rate_limit_exceeded).

    with WhisperServer() as server:
        client = AsyncOpenAI(api_key=server.api_key, base_url=server.url + "/v1")
"""

from __future__ import annotations

from typing import Any

from tests.doubles._stt import Recognizer, TranscriptSource
from tests.doubles._wire import RecordedRequest, Reply, WireDouble, parse_multipart, words_with_timings

LANGUAGE_NAMES = {"en": "english", "de": "german", "fr": "french", "es": "spanish"}


def _error(status: int, message: str, *, type_: str = "invalid_request_error", code: str | None = None) -> Reply:
    return Reply(status, {"error": {"message": message, "type": type_, "param": None, "code": code}})


class WhisperServer(WireDouble):
    default_latency = 0.15

    def __init__(self, *, recognizer: Recognizer | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.transcripts = TranscriptSource(recognizer)

    def check_auth(self, request: RecordedRequest) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.api_key}"

    def unauthorized(self) -> Reply:
        return _error(401, "Incorrect API key provided.", code="invalid_api_key")

    def default_error_body(self, status: int) -> Any:
        if status == 429:
            return {
                "error": {
                    "message": "Rate limit reached for requests",
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            }
        return {
            "error": {
                "message": "The server had an error while processing your request.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }

    def handle(self, request: RecordedRequest) -> tuple[int, dict[str, str], Any]:
        if request.method != "POST" or request.path != "/v1/audio/transcriptions":
            raise _error(404, f"Invalid URL ({request.method} {request.path})")
        from airies.voice.audio.codecs import AudioFormatError, read_wav

        fields, files = parse_multipart(request)
        model = fields.get("model")
        if not model:
            raise _error(400, "you must provide a model parameter")
        upload = next((f for f in files if f[0] == "file"), None)
        if upload is None:
            raise _error(400, "you must provide a file parameter")
        try:
            pcm, rate = read_wav(upload[2])
        except AudioFormatError as exc:
            raise _error(
                400,
                "Invalid file format. Supported formats: ['flac', 'm4a', 'mp3', 'mp4', 'mpeg', 'mpga', 'oga', 'ogg', 'wav', 'webm']",
            ) from exc
        duration = len(pcm) / 2 / rate
        if duration < 0.1:
            raise _error(400, "Audio file is too short. Minimum audio length is 0.1 seconds.", code="audio_too_short")
        text = self.transcripts.text_for(pcm, rate)
        response_format = fields.get("response_format", "json")
        if response_format == "text":
            return 200, {"content-type": "text/plain"}, text
        if response_format != "verbose_json":
            return 200, {}, {"text": text, "usage": {"type": "duration", "seconds": round(duration)}}
        if model != "whisper-1":
            raise _error(400, f"response_format 'verbose_json' is not compatible with model '{model}'")
        language = LANGUAGE_NAMES.get(fields.get("language", "en"), "english")
        body: dict[str, Any] = {
            "task": "transcribe",
            "language": language,
            "duration": round(duration, 2),
            "text": text,
            "segments": [
                {
                    "id": 0,
                    "seek": 0,
                    "start": 0.0,
                    "end": round(duration, 2),
                    "text": text,
                    "tokens": [],
                    "temperature": 0.0,
                    "avg_logprob": -0.2,
                    "compression_ratio": 1.0,
                    "no_speech_prob": 0.01,
                }
            ]
            if text
            else [],
            "usage": {"type": "duration", "seconds": round(duration)},
        }
        if "word" in fields.get("timestamp_granularities[]", "") or any(
            k.startswith("timestamp_granularities") and "word" in v for k, v in fields.items()
        ):
            body["words"] = words_with_timings(text, duration)
        return 200, {}, body
