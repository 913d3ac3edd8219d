"""The embeddable widget's API.

With the account's secret key: ``/publishable-keys`` (create, list, revoke). With a publishable key, from a web
page on one of the key's origins: ``POST /widget/{publishable_key}/conversations`` starts a conversation with one of
the key's agents and returns only what the visitor's browser needs to talk (WebSocket URL and conversation token).
A publishable key can do nothing else: every other route refuses it (``deps.authenticate``). CORS headers are sent
only to the key's own origins, on the preflight and on every answer (errors included, so the widget can show them).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from airies.accounts.auth import Caller, current_caller
from airies.conversations import protocol as wp
from airies.conversations.routes import service as conversation_service
from airies.conversations.schemas import ConversationCreate
from airies.core.errors import AiriesError, RateLimitedError, error_body
from airies.core.schemas import request_body
from airies.widget.schemas import (
    PublishableKeyCreate,
    PublishableKeyOut,
    WidgetConversationCreate,
    WidgetConversationStarted,
)
from airies.widget.service import PublishableKeyService, key_out, visitor_id

router = APIRouter(tags=["widget"])
PREFLIGHT_MAX_AGE = "600"


@router.post("/publishable-keys", status_code=201)
def create_publishable_key(body: PublishableKeyCreate, caller: Caller = Depends(current_caller)) -> PublishableKeyOut:
    """Create a publishable key for the web widget, bound to one agent and to allowed origins."""
    return key_out(PublishableKeyService(caller.session).create(caller.account_id, body))


@router.get("/publishable-keys")
def list_publishable_keys(caller: Caller = Depends(current_caller)) -> dict[str, list[PublishableKeyOut]]:
    """The account's publishable keys."""
    return {"data": [key_out(key) for key in PublishableKeyService(caller.session).list(caller.account_id)]}


@router.delete("/publishable-keys/{key_id}", status_code=204)
def revoke_publishable_key(key_id: str, caller: Caller = Depends(current_caller)) -> Response:
    """Revoke a publishable key: the widget stops starting conversations with it."""
    PublishableKeyService(caller.session).revoke(caller.account_id, key_id)
    return Response(status_code=204)


def cors_headers(origin: str) -> dict[str, str]:
    return {"access-control-allow-origin": origin, "vary": "Origin"}


def _error(exc: AiriesError, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(exc, RateLimitedError) and retry_after:
        headers["retry-after"] = str(int(retry_after + 0.999))
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)


@router.options("/widget/{publishable_key}/conversations", include_in_schema=False)
def widget_preflight(publishable_key: str, request: Request) -> Response:
    origin = request.headers.get("origin")
    try:
        with request.app.state.database.session() as session:
            PublishableKeyService(session).for_origin(publishable_key, origin)
    except AiriesError as exc:
        return _error(exc)  # no CORS headers: the browser keeps the page from calling
    assert origin is not None  # for_origin refused a missing origin
    headers = {
        **cors_headers(origin),
        "access-control-allow-methods": "POST, OPTIONS",
        "access-control-allow-headers": "content-type",
        "access-control-max-age": PREFLIGHT_MAX_AGE,
    }
    return Response(status_code=204, headers=headers)


@router.post(
    "/widget/{publishable_key}/conversations",
    status_code=201,
    response_model=WidgetConversationStarted,
    openapi_extra=request_body(
        {"application/json": WidgetConversationCreate.model_json_schema()}, "the agent to talk to", required=False
    ),
)
async def widget_start_conversation(publishable_key: str, request: Request) -> Any:
    """The web widget starts a conversation with the publishable key's agent (no API key: the publishable key is in
    the path)."""
    origin = request.headers.get("origin")
    try:
        await run_in_threadpool(_check_origin, request, publishable_key, origin)
    except AiriesError as exc:
        return _error(exc)
    assert origin is not None
    headers = cors_headers(origin)
    try:
        body = WidgetConversationCreate.model_validate_json(await request.body() or b"{}")
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(p) for p in err["loc"]) or "body", "code": err["type"], "message": err["msg"]}
            for err in exc.errors()
        ]
        status = 400 if any(err["type"] == "json_invalid" for err in exc.errors()) else 422
        code = "malformed_json" if status == 400 else "invalid_request"
        return JSONResponse(error_body(code, "request failed validation", problems), status, headers=headers)
    try:
        started = await run_in_threadpool(_start, request, publishable_key, origin, body.agent_id)
    except AiriesError as exc:
        return _error(exc, headers)
    return JSONResponse(started.model_dump(mode="json"), status_code=201, headers=headers)


def _check_origin(request: Request, publishable_key: str, origin: str | None) -> None:
    with request.app.state.database.session() as session:
        PublishableKeyService(session).for_origin(publishable_key, origin)


def _start(request: Request, publishable_key: str, origin: str, agent_id: str) -> WidgetConversationStarted:
    state = request.app.state
    source = request.client.host if request.client else "unknown"
    with state.database.session() as session:
        keys = PublishableKeyService(session)
        key = keys.for_origin(publishable_key, origin, lock=True)
        visitor = visitor_id(key.id, source)
        account = keys.check_start(key, agent_id, visitor)
        caller = Caller(account=account, session=session, settings=state.settings)
        svc = conversation_service(request, caller)
        conversation, token, expires = svc.start_conversation(
            account.id,
            ConversationCreate(
                agent_id=agent_id,
                metadata={"source": "widget", "publishable_key_id": key.id, "origin": origin},
            ),
        )
        keys.record_start(key, conversation.id, visitor, origin)
        return WidgetConversationStarted(
            conversation_id=conversation.id,
            ws_url=svc.ws_url(conversation.id, token),
            token=token,
            token_expires_at=expires,
            protocol_version=wp.PROTOCOL_VERSION,
        )
