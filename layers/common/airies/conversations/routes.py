"""Conversations REST API: start (token + WebSocket URL), list/read/update/delete, text and audio turns over HTTP,
transcripts (JSON or plain text), cost and analytics."""

from __future__ import annotations

import base64
import logging
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import PlainTextResponse

from airies.accounts.auth import Caller, current_caller
from airies.conversations import protocol as wp
from airies.conversations.events import EventPublisher
from airies.conversations.http_turns import HttpTurns
from airies.conversations.live_sessions import LiveSessions
from airies.conversations.models import Conversation, ConversationTurn
from airies.conversations.schemas import (
    ConversationCreate,
    ConversationDetail,
    ConversationOut,
    ConversationStarted,
    ConversationUpdate,
    MessageIn,
    TurnAudioOut,
    TurnOut,
    TurnResponse,
)
from airies.conversations.service import (
    billing_credit_gate,
    billing_start_check,
    billing_usage_sink,
    default_recorder,
)
from airies.conversations.sessions import build_session_store
from airies.core.errors import BadRequestError, ConflictError, PayloadTooLargeError, UnsupportedMediaTypeError
from airies.core.schemas import BINARY, Limit, Page, request_body
from airies.webhooks.service import build_webhook_publisher

router = APIRouter(prefix="/conversations", tags=["conversations"])
log = logging.getLogger(__name__)


def service(request: Request, caller: Caller) -> HttpTurns:
    settings = request.app.state.settings
    state = request.app.state
    engines = getattr(state, "conversation_engines", None)  # tests and the local stack may inject
    recorder = getattr(state, "conversation_recorder", None)  # tests may inject; else S3, as on the WebSocket
    if recorder is None:
        recorder = state.conversation_recorder = default_recorder(settings)  # built on first recorded turn
    return HttpTurns(
        caller.session,
        settings,
        engines=engines,
        usage_sink=billing_usage_sink(settings, caller.session),
        credit_gate=billing_credit_gate(settings, caller.session),
        recorder=recorder,
        start_check=lambda session, account_id: billing_start_check(
            settings, session, account_id, lambda ids: live_sessions(request).holding_callers(ids)
        ),
        database=request.app.state.database,
        tokens=getattr(state, "conversation_tokens", None),  # tests may inject (a clock)
        publisher=webhook_publisher(request),
        turn_metrics=getattr(state, "turn_metrics", None),  # the Lambda handler's (its invocation flushes them)
    )


def webhook_publisher(request: Request) -> EventPublisher:
    """The server-message publisher (one per app; tests may inject ``app.state.webhook_publisher``)."""
    state = request.app.state
    publisher: EventPublisher | None = getattr(state, "webhook_publisher", None)
    if publisher is None:
        publisher = state.webhook_publisher = build_webhook_publisher(state.settings, state.database)
    return publisher


def live_sessions(request: Request) -> LiveSessions:
    """The live-sessions facade (live-session store + the connection poster), to end a live call when its
    conversation is ended or deleted over REST. Built on first use; tests may inject ``app.state.live_sessions``.
    On AWS the API function needs the state table and ManageConnections."""
    state = request.app.state
    live: LiveSessions | None = getattr(state, "live_sessions", None)
    if live is None:
        settings = state.settings
        live = state.live_sessions = LiveSessions(
            settings, state.database, build_session_store(settings), publisher=webhook_publisher(request)
        )
    return live


def _live_activity(request: Request, conversation: Conversation) -> Any:
    """The live session's last activity (to bill the minutes to it), None without one. Never fails the request:
    the database row decides, and a live session left open is closed by its next turn or the sweeper."""
    if conversation.status != "active":  # only a connection (or an HTTP turn) makes a conversation active
        return None
    try:
        return live_sessions(request).live_activity(conversation.id)
    except Exception:
        log.exception("could not read the live session of %s", conversation.id)
        return None


def _close_live(request: Request, conversation: Conversation, reason: str) -> None:
    try:
        live_sessions(request).close_live_session(conversation.id, reason, conversation)
    except Exception:
        log.exception("could not end the live session of %s", conversation.id)


def conversation_out(c: Conversation) -> dict[str, Any]:
    return {
        "id": c.id,
        "agent_id": c.agent_id,
        "agent_version": c.agent_version,
        "status": c.status,
        "channel": c.channel,
        "caller": c.caller,
        "metadata": c.metadata_,
        "started_at": c.started_at,
        "ended_at": c.ended_at,
        "end_reason": c.end_reason,
        "duration_seconds": c.duration_seconds,
        "turn_count": c.turn_count,
        "interruption_count": c.interruption_count,
        "usage": c.usage,
        "cost_usd": c.cost_usd or Decimal(0),
        "recording_enabled": c.recording_enabled,
        "created_at": c.created_at,
    }


def turn_out(t: ConversationTurn) -> TurnOut:
    return TurnOut(
        id=t.id,
        seq=t.seq,
        input_mode=t.input_mode,
        user_text=t.user_text,
        agent_text=t.agent_text,
        interrupted=t.interrupted,
        status=t.status,
        latency=t.latency,
        usage=t.usage,
        cost=t.cost,
        cost_usd=t.cost_usd or Decimal(0),
        recording=t.recording,
        tool_calls=t.tool_calls or [],
        started_at=t.started_at,
        ended_at=t.ended_at,
    )


@router.post("", status_code=201)
def start_conversation(
    body: ConversationCreate, request: Request, caller: Caller = Depends(current_caller)
) -> ConversationStarted:
    """Start a conversation with a deployed agent: its id and a short-lived WebSocket token."""
    svc = service(request, caller)
    conversation, token, expires = svc.start_conversation(caller.account_id, body)
    # Commit before answering: the client connects to the WebSocket the moment it has the token, and $connect
    # must find the conversation (the request's unit of work would only commit as the response goes out).
    caller.session.commit()
    return ConversationStarted(
        **conversation_out(conversation),
        ws_url=svc.ws_url(conversation.id, token),
        token=token,
        token_expires_at=expires,
        protocol_version=wp.PROTOCOL_VERSION,
    )


@router.get("")
def list_conversations(
    request: Request,
    caller: Caller = Depends(current_caller),
    limit: Annotated[Limit, Query(le=100)] = 20,
    cursor: str | None = Query(None, max_length=40),
    agent_id: str | None = Query(None, max_length=40),
    status: Literal["created", "active", "ended"] | None = None,
) -> Page[ConversationOut]:
    """The account's conversations, a page at a time."""
    rows, next_cursor = service(request, caller).list(
        caller.account_id, limit=limit, cursor=cursor, agent_id=agent_id, status=status
    )
    return Page(
        data=[ConversationOut(**conversation_out(c)) for c in rows],
        next_cursor=next_cursor,
        has_more=next_cursor is not None,
    )


# Static paths before /{conversation_id}.
@router.get("/analytics")
def analytics(
    request: Request,
    caller: Caller = Depends(current_caller),
    period: Literal["24h", "7d", "30d", "90d"] = "7d",
    agent_id: str | None = Query(None, max_length=40),
) -> dict[str, Any]:
    """Conversation statistics over a period, optionally for one agent."""
    return service(request, caller).get_conversation_analytics(caller.account_id, period, agent_id)


@router.get("/{conversation_id}")
def get_conversation(
    conversation_id: str, request: Request, caller: Caller = Depends(current_caller)
) -> ConversationDetail:
    """One conversation."""
    svc = service(request, caller)
    conversation = svc.get(caller.account_id, conversation_id)
    turns = svc.get_conversation_history(caller.account_id, conversation_id)
    return ConversationDetail(
        **conversation_out(conversation),
        turns=[turn_out(t) for t in turns],
        analysis_status=conversation.analysis_status,
        analysis=conversation.analysis,
    )


@router.put("/{conversation_id}")
def update_conversation(
    conversation_id: str, body: ConversationUpdate, request: Request, caller: Caller = Depends(current_caller)
) -> ConversationOut:
    """Change a conversation's metadata, or end it (status ended)."""
    svc = service(request, caller)
    current = svc.get(caller.account_id, conversation_id)  # 404 before touching any live state
    ending = body.status == "ended" and current.status != "ended"
    active_until = _live_activity(request, current) if ending else None
    conversation = svc.update(caller.account_id, conversation_id, body, active_until=active_until)
    if ending:
        # Committed first: a caller who reconnects on "ended" must find the row ended.
        caller.session.commit()
        _close_live(request, conversation, "api_request")
    return ConversationOut(**conversation_out(conversation))


@router.delete("/{conversation_id}", status_code=204)
def delete_conversation(conversation_id: str, request: Request, caller: Caller = Depends(current_caller)) -> Response:
    """Delete a conversation (a live one is ended first)."""
    svc = service(request, caller)
    current = svc.get(caller.account_id, conversation_id)
    live = current.status != "ended"
    active_until = _live_activity(request, current) if live else None
    summary = svc.delete(caller.account_id, conversation_id, active_until=active_until)
    caller.session.commit()
    if live:
        _close_live(request, summary, "deleted")
    return Response(status_code=204)


@router.post("/{conversation_id}/token")
def refresh_token(
    conversation_id: str, request: Request, caller: Caller = Depends(current_caller)
) -> ConversationStarted:
    """A fresh short-lived WebSocket token for a conversation that has not ended: a call that dropped after the
    first token expired reconnects with it (``ready`` then says ``resumed: true``)."""
    svc = service(request, caller)
    conversation = svc.get(caller.account_id, conversation_id)
    if conversation.status == "ended":
        raise ConflictError("this conversation has ended", code="conversation_ended")
    token, expires = svc.tokens.issue(conversation.id, caller.account_id)
    return ConversationStarted(
        **conversation_out(conversation),
        ws_url=svc.ws_url(conversation.id, token),
        token=token,
        token_expires_at=expires,
        protocol_version=wp.PROTOCOL_VERSION,
    )


def _turn_response(turn: ConversationTurn, result: Any, frames: list[dict[str, Any]]) -> TurnResponse:
    pcm = b"".join(base64.b64decode(f["data"]) for f in frames if f.get("type") == "audio")
    return TurnResponse(
        turn=turn_out(turn),
        transcript=result.user_text,
        reply=result.agent_text,
        end_call=result.end_call is not None,  # the turn's end reason, when it ended the call
        end_reason=result.end_call,
        audio=TurnAudioOut(encoding="pcm_s16le", sample_rate=wp.SAMPLE_RATE, data=base64.b64encode(pcm).decode())
        if pcm
        else None,
    )


@router.post("/{conversation_id}/message")
async def post_message(
    conversation_id: str, body: MessageIn, request: Request, caller: Caller = Depends(current_caller)
) -> TurnResponse:
    """Send a typed user message and get the agent's reply (optionally with its audio)."""
    turn, result, frames = await service(request, caller).process_message(
        caller.account_id, conversation_id, body.text, with_audio=body.with_audio
    )
    return _turn_response(turn, result, frames)


@router.post(
    "/{conversation_id}/audio",
    openapi_extra=request_body(
        {"audio/wav": BINARY, "audio/l16": BINARY, "application/octet-stream": BINARY},
        "a WAV file (mono, PCM16 or μ-law) or raw PCM16 16 kHz mono",
    ),
)
async def post_audio(conversation_id: str, request: Request, caller: Caller = Depends(current_caller)) -> TurnResponse:
    """Body: a WAV file (any rate, mono, PCM16 or μ-law) or raw PCM16 16 kHz mono (``audio/l16``, ``application/octet-stream``)."""
    content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    raw = await request.body()
    if content_type in ("audio/wav", "audio/x-wav", "audio/wave"):
        from airies.voice.audio.codecs import read_wav, resample_pcm16

        try:
            pcm, rate = read_wav(raw)  # mono PCM16 at the declared rate
        except ValueError as exc:
            raise BadRequestError(f"unreadable WAV: {exc}", code="bad_audio") from exc
        # The duration limit applies before resampling: a WAV declaring a tiny rate would otherwise be expanded
        # in memory by up to 16 kHz / rate before the limit is checked on the 16 kHz result.
        limit = request.app.state.settings.ws_max_utterance_seconds
        if len(pcm) > limit * rate * 2:
            raise PayloadTooLargeError(f"an utterance may be at most {limit} s")
        if rate != wp.SAMPLE_RATE:
            try:
                pcm = resample_pcm16(pcm, rate, wp.SAMPLE_RATE)
            except ValueError as exc:
                raise BadRequestError(f"unsupported WAV: {exc}", code="bad_audio") from exc
    elif content_type in ("audio/l16", "audio/pcm", "application/octet-stream"):
        pcm = raw
    else:
        raise UnsupportedMediaTypeError("send audio/wav or raw PCM16 16 kHz mono (audio/l16)")
    turn, result, frames = await service(request, caller).handle_audio_input(caller.account_id, conversation_id, pcm)
    return _turn_response(turn, result, frames)


@router.get("/{conversation_id}/transcript", response_model=None)
def transcript(
    conversation_id: str,
    request: Request,
    caller: Caller = Depends(current_caller),
    format: Literal["json", "text"] | None = None,
) -> Any:
    """The conversation's transcript, as JSON turns or plain text."""
    svc = service(request, caller)
    wants_text = format == "text" or (format is None and "text/plain" in request.headers.get("accept", ""))
    if wants_text:
        return PlainTextResponse(svc.transcript_text(caller.account_id, conversation_id))
    conversation = svc.get(caller.account_id, conversation_id)
    turns = svc.get_conversation_history(caller.account_id, conversation_id)
    messages: list[dict[str, Any]] = []
    for t in turns:
        if t.user_text:
            messages.append({"role": "user", "text": t.user_text, "turn_id": t.id, "at": t.started_at.isoformat()})
        if t.agent_text:
            messages.append(
                {
                    "role": "agent",
                    "text": t.agent_text,
                    "turn_id": t.id,
                    "interrupted": t.interrupted,
                    "at": t.ended_at.isoformat(),
                }
            )
    return {
        "conversation_id": conversation.id,
        "status": conversation.status,
        "end_reason": conversation.end_reason,
        "messages": messages,
    }


@router.get("/{conversation_id}/cost")
def cost(conversation_id: str, request: Request, caller: Caller = Depends(current_caller)) -> dict[str, Any]:
    """The conversation's cost by component (decimal strings)."""
    return service(request, caller).calculate_conversation_cost(caller.account_id, conversation_id)
