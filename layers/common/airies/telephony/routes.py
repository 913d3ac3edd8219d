"""Telephony API.

With the account's secret key: ``/phone-numbers`` (import a Twilio number, list, read, reassign, delete) and
``/calls`` (place an outbound call, read it). Public, signed by Twilio with the number's auth token:
``/telephony/twilio/voice`` (an inbound call: answers TwiML), ``/telephony/twilio/status`` (call status
callbacks) and ``/telephony/twilio/relay-action`` (the relay ended: dial a transfer, or hang up). Webhooks are form-encoded; a forged or missing signature is 403 and nothing is written.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from airies.accounts.auth import Caller, current_caller
from airies.accounts.models import Account
from airies.conversations.routes import service as conversation_service
from airies.core.errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError
from airies.core.schemas import request_body
from airies.telephony import signatures, twiml
from airies.telephony.relay import transfer_destination
from airies.telephony.schemas import CallCreate, PhoneNumberCreate, PhoneNumberOut, PhoneNumberUpdate
from airies.telephony.service import Form, TelephonyService, call_out, first, number_out

router = APIRouter(tags=["telephony"])
# Twilio's webhook forms are a few hundred bytes; anything near this is not Twilio.
MAX_WEBHOOK_BYTES = 16_384
FORM_TYPE = "application/x-www-form-urlencoded"
TWIML_TYPE = "application/xml"
# The carrier's form, read by the route itself (to check its signature over every field).
TWILIO_FORM = request_body(
    {FORM_TYPE: {"type": "object", "additionalProperties": {"type": "string"}}},
    "Twilio's form-encoded webhook fields (CallSid, From, To, CallStatus, ...), signed in X-Twilio-Signature",
)


def telephony(request: Request, session: Session) -> TelephonyService:
    settings = request.app.state.settings
    return TelephonyService(
        session, settings, api_origin=signatures.api_origin(settings, request.scope.get("aws.event"))
    )


# -- phone numbers (secret key) ---------------------------------------------------------------------------------------
@router.post("/phone-numbers", status_code=201)
def import_phone_number(
    body: PhoneNumberCreate, request: Request, caller: Caller = Depends(current_caller)
) -> PhoneNumberOut:
    """Import a number the business owns at Twilio (or from the platform account) and point its webhooks at Airies."""
    return number_out(telephony(request, caller.session).import_number(caller.account_id, body))


@router.get("/phone-numbers")
def list_phone_numbers(request: Request, caller: Caller = Depends(current_caller)) -> dict[str, list[PhoneNumberOut]]:
    """The account's phone numbers."""
    numbers = telephony(request, caller.session).list_numbers(caller.account_id)
    return {"data": [number_out(number) for number in numbers]}


@router.get("/phone-numbers/{number_id}")
def get_phone_number(number_id: str, request: Request, caller: Caller = Depends(current_caller)) -> PhoneNumberOut:
    """One phone number with its agent."""
    return number_out(telephony(request, caller.session).get_number(caller.account_id, number_id))


@router.put("/phone-numbers/{number_id}")
def update_phone_number(
    number_id: str, body: PhoneNumberUpdate, request: Request, caller: Caller = Depends(current_caller)
) -> PhoneNumberOut:
    """Reassign a number to another agent or change its label; its Twilio webhooks are set again."""
    svc = telephony(request, caller.session)
    return number_out(svc.update_number(caller.account_id, number_id, body))


@router.delete("/phone-numbers/{number_id}", status_code=204)
def delete_phone_number(number_id: str, request: Request, caller: Caller = Depends(current_caller)) -> Response:
    """Remove a number; its webhooks at Twilio are cleared."""
    telephony(request, caller.session).delete_number(caller.account_id, number_id)
    return Response(status_code=204)


# -- outbound calls (secret key) --------------------------------------------------------------------------------------
@router.post("/calls", status_code=201)
def create_call(body: CallCreate, request: Request, caller: Caller = Depends(current_caller)) -> dict[str, Any]:
    """Place an outbound call from one of the account's numbers to the agent's caller (limits checked first)."""
    svc = telephony(request, caller.session)
    call = svc.place_call(caller.account_id, body, conversation_service(request, caller))
    return call_out(call).wire()


@router.get("/calls/{call_id}")
def get_call(call_id: str, request: Request, caller: Caller = Depends(current_caller)) -> dict[str, Any]:
    """One phone call with its status and conversation."""
    return call_out(telephony(request, caller.session).get_call(caller.account_id, call_id)).wire()


# -- Twilio webhooks (public, signed) ---------------------------------------------------------------------------------
async def read_form(request: Request) -> Form:
    """The webhook's form fields (every value of each), or a clear 4xx: 415 not a form, 413 too large, 400
    undecodable."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != FORM_TYPE:
        raise UnsupportedMediaTypeError(f"expected {FORM_TYPE}", details={"content_type": content_type or None})
    body = await request.body()
    if len(body) > MAX_WEBHOOK_BYTES:
        raise PayloadTooLargeError(f"a webhook body may be at most {MAX_WEBHOOK_BYTES} bytes")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequestError("the form body is not valid UTF-8", code="malformed_form") from exc
    form: dict[str, list[str]] = {}
    for name, value in pairs:
        if "\x00" in name or "\x00" in value:
            raise BadRequestError("the form contains a NUL character", code="invalid_characters")
        form.setdefault(name, []).append(value)
    return form


def _signed(request: Request, svc: TelephonyService) -> tuple[str, str | None]:
    """The URL the carrier signed (rebuilt from the API's public origin) and its signature."""
    path = request.url.path.removeprefix(svc.settings.api_base_path)
    url = signatures.public_url(svc.api_origin, svc.settings, path, request.url.query)
    return url, request.headers.get(signatures.SIGNATURE_HEADER)


@router.post(signatures.VOICE_PATH, response_class=Response, openapi_extra=TWILIO_FORM)
async def twilio_voice(request: Request) -> Response:
    """Twilio's voice webhook (public, signed): answers TwiML connecting the caller to the number's agent."""
    form = await read_form(request)
    answer = await run_in_threadpool(_answer_voice, request, form)
    return Response(answer, media_type=TWIML_TYPE)


def _answer_voice(request: Request, form: Form) -> str:
    settings = request.app.state.settings
    with request.app.state.database.session() as session:
        svc = telephony(request, session)
        url, signature = _signed(request, svc)
        number = svc.inbound_number(form)
        if number is None:  # not a number of ours: no token to check a signature with, nothing to create
            return twiml.unavailable_twiml()
        svc.verify(number, url, form, signature)
        account = session.get(Account, number.account_id)
        if account is None or account.status != "active":
            return twiml.unavailable_twiml()
        caller = Caller(account=account, session=session, settings=settings)
        return svc.answer_inbound(number, form, conversation_service(request, caller))


@router.post(signatures.STATUS_PATH, status_code=204, response_class=Response, openapi_extra=TWILIO_FORM)
async def twilio_status(request: Request) -> Response:
    """Twilio's call status callback (public, signed): keeps the conversation's status in step."""
    form = await read_form(request)
    await run_in_threadpool(_apply_status, request, form)
    return Response(status_code=204)


def _apply_status(request: Request, form: Form) -> None:
    settings = request.app.state.settings
    with request.app.state.database.session() as session:
        svc = telephony(request, session)
        url, signature = _signed(request, svc)
        call, number = svc.call_for_status(form)
        svc.verify(number, url, form, signature)
        account = session.get(Account, call.account_id)
        assert account is not None  # the call row cascades with its account
        caller = Caller(account=account, session=session, settings=settings)
        svc.apply_status(call, number, form, conversation_service(request, caller))


@router.post(signatures.ACTION_PATH, response_class=Response, openapi_extra=TWILIO_FORM)
async def twilio_relay_action(request: Request) -> Response:
    """ConversationRelay's ``<Connect>`` action (public, signed): the relay ended; ``<Dial>`` the destination the
    agent transferred the call to (its ``HandoffData``), or hang up."""
    form = await read_form(request)
    answer = await run_in_threadpool(_answer_action, request, form)
    return Response(answer, media_type=TWIML_TYPE)


def _answer_action(request: Request, form: Form) -> str:
    with request.app.state.database.session() as session:
        svc = telephony(request, session)
        url, signature = _signed(request, svc)
        _call, number = svc.call_for(form)
        svc.verify(number, url, form, signature)
        destination = transfer_destination(first(form, "HandoffData"))
        return twiml.dial_twiml(destination) if destination else twiml.hangup_twiml()
