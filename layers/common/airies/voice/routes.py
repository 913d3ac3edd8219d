"""Routes of the voices capability: voice lists, cloning, previews and transcriptions. Decisions live in
``airies.voice.service``; these handlers only parse uploads and shape responses."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile
from pydantic import Field

from airies.accounts.auth import Caller, current_caller
from airies.core.errors import BadRequestError, UnsupportedMediaTypeError
from airies.core.schemas import BINARY, StrictModel, request_body
from airies.voice.audio.formats import AudioFormatError, sniff_format, write_wav
from airies.voice.factory import build_voice_service
from airies.voice.schemas import VoiceList, VoiceOut
from airies.voice.service import MAX_CLONE_SAMPLE_BYTES, VoiceService
from airies.voice.stt.base import Transcript

router = APIRouter(tags=["voices"])

MAX_UPLOAD_BYTES = 25 * 1024 * 1024
PREVIEW_MAX_CHARS = 500


def voice_service(request: Request, caller: Caller = Depends(current_caller)) -> VoiceService:
    return build_voice_service(request.app.state.settings, account_id=caller.account_id, session=caller.session)


def transcript_out(transcript: Transcript) -> dict[str, Any]:
    return {
        "text": transcript.text,
        "words": [
            {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3), "confidence": w.confidence}
            for w in transcript.words
        ],
        "confidence": transcript.confidence,
        "language": transcript.language,
        "duration_seconds": round(transcript.duration_seconds, 3),
        "provider": transcript.provider,
        "model": transcript.model,
        "metadata": transcript.metadata,
    }


@router.get("/voices")
async def list_voices(
    provider: str | None = Query(None, max_length=40), service: VoiceService = Depends(voice_service)
) -> dict[str, Any]:
    """The voices agents may use, by provider."""
    providers = await service.get_available_voices(provider)
    data = []
    for entry in providers.values():
        row = {k: v for k, v in entry.items() if k != "voices"}
        row["voices"] = [asdict(v) for v in entry["voices"]]
        data.append(row)
    return {"data": data}


@router.get("/voices/mine")
def list_my_voices(service: VoiceService = Depends(voice_service)) -> VoiceList:
    """The account's cloned voices."""
    return VoiceList(data=[VoiceOut.model_validate(row) for row in service.list_account_voices()])


@router.post("/voices/clone", status_code=201)
async def clone_voice(
    name: str = Form(..., min_length=1, max_length=200),
    files: list[UploadFile] = File(..., description="1-25 audio samples of the voice (wav, mp3, ...)"),
    description: str | None = Form(None, max_length=1000),
    provider: str = Form("elevenlabs", max_length=40),
    service: VoiceService = Depends(voice_service),
) -> VoiceOut:
    """Clone a voice from audio samples (multipart form)."""
    samples: list[tuple[str, bytes]] = []
    for upload in files:
        data = await upload.read(MAX_CLONE_SAMPLE_BYTES + 1)
        samples.append((upload.filename or f"sample{len(samples) + 1}", data))
    row = await service.clone_voice(name, samples, provider=provider, description=description)
    return VoiceOut.model_validate(row)


@router.delete("/voices/{voice_id}", status_code=204)
async def delete_voice(voice_id: str, service: VoiceService = Depends(voice_service)) -> Response:
    """Delete a cloned voice."""
    await service.delete_voice(voice_id)
    return Response(status_code=204)


class PreviewRequest(StrictModel):
    text: str = Field(min_length=1, max_length=PREVIEW_MAX_CHARS)
    provider: str = Field("espeak", min_length=1, max_length=40)
    voice_id: str = Field(min_length=1, max_length=200)
    model: str | None = Field(None, max_length=100)
    speed: float = Field(1.0, ge=0.5, le=2.0)
    stability: float = Field(0.5, ge=0.0, le=1.0)
    similarity_boost: float = Field(0.75, ge=0.0, le=1.0)
    style: float = Field(0.0, ge=0.0, le=1.0)
    format: str = Field("wav", pattern="^(wav|mp3)$")


@router.post("/voices/preview")
async def preview_voice(body: PreviewRequest, service: VoiceService = Depends(voice_service)) -> Response:
    """Speak ``text`` with a voice so it can be heard before an agent uses it (no fallback: exactly this voice)."""
    await service.check_voice(body.provider, body.voice_id)
    voice = body.model_dump(exclude={"text", "format"})
    output_format = "mp3_44100_128" if body.format == "mp3" else "pcm_16000"
    audio = await service.synthesize_all(body.text, voice=voice, output_format=output_format, strict=True)
    if body.format == "wav":
        audio, media_type = write_wav(audio, 16000), "audio/wav"
    else:
        media_type = "audio/mpeg"
    return Response(
        content=audio, media_type=media_type, headers={"X-Voice-Provider": service.last_tts_provider or body.provider}
    )


async def _uploaded_audio(request: Request) -> tuple[bytes, dict[str, str]]:
    """Audio bytes and form fields of a multipart upload (field ``file``) or of a raw ``audio/wav`` body."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_part_size=MAX_UPLOAD_BYTES)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise BadRequestError("send the audio as a multipart file field named 'file'", code="missing_file")
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        phrases = [v for k, v in form.multi_items() if k == "expected_phrases" and isinstance(v, str)]
        fields["expected_phrases"] = "\n".join(phrases)
        return await upload.read(), fields
    if content_type.split(";")[0].strip() in ("audio/wav", "audio/x-wav", "audio/wave", "application/octet-stream"):
        return await request.body(), dict(request.query_params)
    raise UnsupportedMediaTypeError(
        f"unsupported content type '{content_type or 'none'}': send multipart/form-data or audio/wav"
    )


@router.post(
    "/transcriptions",
    openapi_extra=request_body(
        {
            "audio/wav": BINARY,
            "application/octet-stream": BINARY,
            "multipart/form-data": {
                "type": "object",
                "required": ["file"],
                "properties": {"file": BINARY, "expected_phrases": {"type": "array", "items": {"type": "string"}}},
            },
        },
        "a WAV file (16-bit PCM or μ-law), raw or as the multipart field 'file'",
    ),
)
async def transcribe(request: Request, service: VoiceService = Depends(voice_service)) -> dict[str, Any]:
    """Audio (WAV: 16-bit PCM or μ-law) in, transcript with word timings out."""
    from airies.voice.audio.codecs import read_wav  # numpy: lazily, off the API cold start

    data, fields = await _uploaded_audio(request)
    if not data:
        raise BadRequestError("audio is empty", code="empty_audio")
    kind = sniff_format(data)
    if kind != "wav":
        raise UnsupportedMediaTypeError(
            f"audio must be a WAV file (16-bit PCM or μ-law); got {kind}",
            details={"detected_format": kind},
        )
    try:
        pcm16, sample_rate = read_wav(data)
    except AudioFormatError as exc:
        raise BadRequestError(str(exc), code="invalid_audio") from exc
    requested = fields.get("provider") or None
    transcriber = {
        "provider": requested,
        "model": fields.get("model") or None,
        "language": fields.get("language") or "en",
        "keywords": [k.strip() for k in (fields.get("keywords") or "").split(",") if k.strip()],
    }
    phrases = [p.strip() for p in (fields.get("expected_phrases") or "").splitlines() if p.strip()]
    service.check_stt_provider(requested)  # an unknown provider name: 404 before any decoding work
    transcript = await service.speech_to_text(pcm16, sample_rate, transcriber=transcriber, expected_phrases=phrases)
    out = transcript_out(transcript)
    # Which engine ran is in "provider"; say so plainly when it is not the one asked for (no key: offline engine).
    out["requested_provider"] = requested
    out["fallback"] = requested is not None and transcript.provider != requested
    return out
