"""A local server speaking the ElevenLabs REST API, for the official elevenlabs SDK (``base_url=server.url``).

Covered: ``POST /v1/text-to-speech/{voice_id}[/stream]?output_format=`` (chunked audio: real eSpeak NG
speech when it is installed, resampled to pcm_16000 / pcm_24000 / ulaw_8000; silent MP3 frames for
mp3_*), ``GET /v1/voices``, ``GET /v2/voices``, ``POST /v1/voices/add`` (instant voice cloning,
multipart name + files), ``DELETE /v1/voices/{voice_id}``. Header ``xi-api-key``. Errors use
``{"detail": {"status", "message"}}``: 401 invalid_api_key, 404 voice_not_found, 422 validation,
429 too_many_concurrent_requests.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from typing import Any

from tests.doubles._wire import RecordedRequest, Reply, WireDouble, chunks, fake_mp3, parse_multipart, speak_pcm16

PREMADE = [
    ("21m00Tcm4TlvDq8ikWAM", "Rachel", "american", "female"),
    ("EXAVITQu4vr4xnSDxMaL", "Sarah", "american", "female"),
    ("pNInz6obpgDQGcFmaJgB", "Adam", "american", "male"),
]
FORMATS = {
    "pcm_8000",
    "pcm_16000",
    "pcm_22050",
    "pcm_24000",
    "pcm_44100",
    "pcm_48000",
    "ulaw_8000",
    "mp3_44100_128",
    "mp3_22050_32",
}


def _detail(status: int, code: str, message: str) -> Reply:
    return Reply(status, {"detail": {"status": code, "message": message}})


class ElevenLabsServer(WireDouble):
    default_latency = 0.10  # time to first byte
    chunk_bytes = 3200  # 100 ms of pcm_16000

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.voices: dict[str, dict[str, Any]] = {
            vid: {
                "voice_id": vid,
                "name": name,
                "category": "premade",
                "labels": {"accent": accent, "gender": gender},
                "description": None,
                "preview_url": f"https://storage.example/{vid}.mp3",
                "samples": None,
            }
            for vid, name, accent, gender in PREMADE
        }
        self.clone_samples: dict[str, list[tuple[str, int]]] = {}
        self._lock_voices = threading.Lock()

    def check_auth(self, request: RecordedRequest) -> bool:
        return request.headers.get("xi-api-key") == self.api_key

    def unauthorized(self) -> Reply:
        return _detail(401, "invalid_api_key", "Invalid API key")

    def default_error_body(self, status: int) -> Any:
        if status == 429:
            return {"detail": {"status": "too_many_concurrent_requests", "message": "Too many concurrent requests."}}
        return {"detail": {"status": "internal_error", "message": "An internal error occurred."}}

    def handle(self, request: RecordedRequest) -> tuple[int, dict[str, str], Any]:
        path = request.path
        if (match := re.fullmatch(r"/v1/text-to-speech/([^/]+)(/stream)?", path)) and request.method == "POST":
            return self._tts(request, match.group(1))
        if path in ("/v1/voices", "/v2/voices") and request.method == "GET":
            with self._lock_voices:
                voices = list(self.voices.values())
            body: dict[str, Any] = {"voices": voices}
            if path == "/v2/voices":
                body |= {"has_more": False, "total_count": len(voices), "next_page_token": None}
            return 200, {}, body
        if path == "/v1/user" and request.method == "GET":  # what key validation asks
            return 200, {}, {"subscription": {"tier": "creator", "character_count": 0, "character_limit": 100000}}
        if path == "/v1/voices/add" and request.method == "POST":
            return self._clone(request)
        if (match := re.fullmatch(r"/v1/voices/([^/]+)", path)) and request.method == "DELETE":
            with self._lock_voices:
                voice = self.voices.get(match.group(1))
                if voice is None or voice["category"] == "premade":
                    raise _detail(404, "voice_not_found", f"A voice with voice_id {match.group(1)} does not exist.")
                del self.voices[match.group(1)]
            return 200, {}, {"status": "ok"}
        raise Reply(404, {"detail": "Not Found"})

    def _tts(self, request: RecordedRequest, voice_id: str) -> tuple[int, dict[str, str], Any]:
        if voice_id not in self.voices:
            raise _detail(404, "voice_not_found", f"A voice with the voice_id {voice_id} was not found.")
        output_format = (request.query.get("output_format") or ["mp3_44100_128"])[0]
        if output_format not in FORMATS:
            raise Reply(
                422,
                {
                    "detail": [
                        {"loc": ["query", "output_format"], "msg": "invalid output format", "type": "value_error"}
                    ]
                },
            )
        try:
            payload = json.loads(request.body or b"{}")
        except ValueError as exc:
            raise Reply(400, {"detail": {"status": "invalid_json", "message": "body is not JSON"}}) from exc
        text = payload.get("text")
        if not isinstance(text, str) or not text.strip():
            raise Reply(
                422, {"detail": [{"loc": ["body", "text"], "msg": "field required", "type": "value_error.missing"}]}
            )
        codec, rate = output_format.split("_")[0], int(output_format.split("_")[1])
        if codec == "mp3":
            audio = fake_mp3(0.06 * len(text.split()) + 0.3)
            content_type = "audio/mpeg"
        else:
            from airies.voice.audio.codecs import pcm16_to_ulaw

            pcm = speak_pcm16(text, rate)
            audio = pcm16_to_ulaw(pcm) if codec == "ulaw" else pcm
            content_type = "audio/basic" if codec == "ulaw" else "audio/pcm"
        size = self.chunk_bytes if codec == "pcm" else self.chunk_bytes // 2
        return 200, {"content-type": content_type, "request-id": uuid.uuid4().hex}, iter(chunks(audio, size))

    def _clone(self, request: RecordedRequest) -> tuple[int, dict[str, str], Any]:
        fields, files = parse_multipart(request)
        name = fields.get("name", "").strip()
        if not name:
            raise Reply(
                422, {"detail": [{"loc": ["body", "name"], "msg": "field required", "type": "value_error.missing"}]}
            )
        samples = [f for f in files if f[0] == "files"]
        if not samples:
            raise Reply(
                422, {"detail": [{"loc": ["body", "files"], "msg": "field required", "type": "value_error.missing"}]}
            )
        if any(len(data) < 100 for _, _, data, _ in samples):
            raise _detail(400, "invalid_audio", "One of the uploaded samples is too short or corrupted.")
        voice_id = uuid.uuid4().hex[:20]
        labels = json.loads(fields["labels"]) if fields.get("labels") else {}
        with self._lock_voices:
            self.voices[voice_id] = {
                "voice_id": voice_id,
                "name": name,
                "category": "cloned",
                "labels": labels,
                "description": fields.get("description"),
                "preview_url": None,
                "samples": None,
            }
            self.clone_samples[voice_id] = [(filename, len(data)) for _, filename, data, _ in samples]
        return 200, {}, {"voice_id": voice_id, "requires_verification": False}
