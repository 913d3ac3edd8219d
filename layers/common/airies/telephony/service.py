"""Telephony: phone numbers imported from a carrier, inbound calls answered by an agent, outbound calls placed for
one, and the carrier's call status kept in step with the conversation.

Conversations are created, updated and ended only through the conversations service (handed in per operation,
built by the edge with the account's billing checks), so a phone call passes the same credit and concurrency
checks as any other conversation. The carrier's REST API is reached through ``vendors.CARRIERS``.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from airies.agents.versions import get_agent
from airies.conversations.models import Conversation
from airies.conversations.relay_protocol import FIRST_MESSAGE_KEY, PHONE_METADATA_KEY, relay_url
from airies.conversations.schemas import CallerInfo, ConversationCreate, ConversationUpdate
from airies.conversations.service import ConversationService
from airies.core.config import Settings
from airies.core.errors import (
    AiriesError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    ValidationFailedError,
)
from airies.core.ids import new_id
from airies.core.models import utcnow
from airies.core.secrets import EnvelopeCipher, Sealed, get_cipher, platform_key
from airies.telephony import media_streams, signatures, twiml
from airies.telephony.models import PhoneCall, PhoneNumber
from airies.telephony.schemas import CallCreate, CallOut, PhoneNumberCreate, PhoneNumberOut, PhoneNumberUpdate
from airies.telephony.vendors import CARRIERS
from airies.telephony.vendors.base import Carrier, CarrierCredentials, OutboundCall

log = logging.getLogger(__name__)

CARRIER = "twilio"
Form = Mapping[str, Sequence[str]]
# Twilio's call statuses that end a call, and the conversation end reason of each.
FINAL_STATUSES = {
    "completed": "call_completed",
    "busy": "call_busy",
    "no-answer": "call_no_answer",
    "failed": "call_failed",
    "canceled": "call_canceled",
}
CALL_STATUSES = frozenset({"queued", "initiated", "ringing", "in-progress", *FINAL_STATUSES})


def first(form: Form, name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


def required(form: Form, *names: str) -> dict[str, str]:
    """The named form fields, or 400 naming every missing one."""
    found = {name: first(form, name) or "" for name in names}
    missing = [name for name, value in found.items() if not value]
    if missing:
        raise BadRequestError(
            f"missing form fields: {', '.join(missing)}",
            code="missing_fields",
            details=[{"field": name, "code": "missing", "message": "required"} for name in missing],
        )
    return found


def number_out(number: PhoneNumber) -> PhoneNumberOut:
    return PhoneNumberOut(
        id=number.id,
        phone_number=number.number,
        carrier=number.carrier,
        carrier_account_sid=number.carrier_account_sid,
        credentials=number.credentials,
        agent_id=number.agent_id,
        friendly_name=number.friendly_name,
        voice_url=number.voice_url,
        status_callback_url=number.status_callback_url,
        telephony_mode=number.telephony_mode,
        created_at=number.created_at,
        updated_at=number.updated_at,
    )


def call_out(call: PhoneCall) -> CallOut:
    return CallOut(
        id=call.id,
        conversation_id=call.conversation_id,
        call_sid=call.call_sid,
        direction=call.direction,
        from_=call.from_number,
        to=call.to_number,
        status=call.status,
        duration_seconds=call.duration_seconds,
        answered_by=call.answered_by,
        created_at=call.created_at,
        ended_at=call.ended_at,
    )


def dialled_number(to: str) -> str:
    """The number a call was made to: ``To`` itself, or the user part of a SIP URI (``sip:+1415...@domain``), so a
    PBX reaches an imported number's agent through a Twilio SIP domain or trunk pointed at the same webhook."""
    if to.startswith(("sip:", "sips:")):
        return to.split(":", 1)[1].split("@", 1)[0].split(";", 1)[0]
    return to


def _caller(number: str) -> CallerInfo:
    try:
        return CallerInfo(phone=number)
    except ValidationError:  # a SIP URI, client:<name> or "anonymous": kept in the phone metadata only
        return CallerInfo()


def _token_context(account_id: str, account_sid: str) -> dict[str, str]:
    return {"account_id": account_id, "carrier_account_sid": account_sid, "purpose": "airies-carrier-token"}


class TelephonyService:
    def __init__(
        self,
        session: Session,
        settings: Settings,
        *,
        carriers: Mapping[str, Any] = CARRIERS,
        cipher: EnvelopeCipher | None = None,
        api_origin: str | None = None,
    ) -> None:
        """``api_origin``: where the carrier reaches the API (``signatures.api_origin``)."""
        self.session = session
        self.settings = settings
        self.api_origin = api_origin or signatures.api_origin(settings)
        self.carriers = carriers
        self._cipher = cipher

    @property
    def cipher(self) -> EnvelopeCipher:
        if self._cipher is None:
            self._cipher = get_cipher(self.settings)
        return self._cipher

    # -- credentials and the carrier ------------------------------------------------------------------------------
    def platform_credentials(self) -> CarrierCredentials | None:
        sid = self.settings.twilio_account_sid
        token = platform_key(self.settings, "twilio_auth_token") if sid else None
        return CarrierCredentials(sid, token) if sid and token else None

    def credentials(self, number: PhoneNumber) -> CarrierCredentials | None:
        """The number's carrier credentials (None: the platform's account is no longer configured)."""
        if number.credentials == "platform":
            platform = self.platform_credentials()
            return platform if platform and platform.account_sid == number.carrier_account_sid else None
        sealed = Sealed(
            ciphertext=number.token_ciphertext or "",
            encrypted_data_key=number.token_data_key or "",
            key_ref=number.token_key_ref or "",
        )
        token = self.cipher.open(sealed, _token_context(number.account_id, number.carrier_account_sid))
        return CarrierCredentials(number.carrier_account_sid, token)

    def carrier(self, credentials: CarrierCredentials) -> Carrier:
        client: Carrier = self.carriers[CARRIER].client(credentials, self.settings)
        return client

    def _carrier_for(self, number: PhoneNumber) -> Carrier:
        credentials = self.credentials(number)
        if credentials is None:
            raise ValidationFailedError(
                "the platform's Twilio account is not configured: import the number with its own credentials",
                code="carrier_credentials_required",
            )
        return self.carrier(credentials)

    def webhook_url(self, path: str) -> str:
        return signatures.public_url(self.api_origin, self.settings, path)

    # -- phone numbers --------------------------------------------------------------------------------------------
    def _check_agent(self, account_id: str, agent_id: str | None) -> None:
        if agent_id is not None:
            get_agent(self.session, account_id, agent_id)  # 404 for a foreign or unknown agent

    def _check_mode(self, mode: str | None) -> None:
        """A number may stream raw media only when the platform runs the media bridge."""
        if mode == media_streams.MEDIA_STREAM and not self.settings.media_bridge_url:
            raise ConflictError(
                "telephony_mode media_stream needs the media bridge, which this platform does not run "
                "(AIRIES_MEDIA_BRIDGE_URL is not set)",
                code="media_bridge_not_configured",
                details=[{"field": "telephony_mode", "code": "media_bridge_not_configured", "message": "use relay"}],
            )

    def get_number(self, account_id: str, number_id: str) -> PhoneNumber:
        number = self.session.scalar(
            select(PhoneNumber).where(PhoneNumber.id == number_id, PhoneNumber.account_id == account_id)
        )
        if number is None:
            raise NotFoundError("phone_number", number_id)
        return number

    def list_numbers(self, account_id: str) -> builtins.list[PhoneNumber]:
        return list(
            self.session.scalars(
                select(PhoneNumber).where(PhoneNumber.account_id == account_id).order_by(PhoneNumber.id)
            )
        )

    def import_number(self, account_id: str, body: PhoneNumberCreate) -> PhoneNumber:
        """Find the number in the Twilio account, point its voice and status webhooks at us, then store it."""
        self._check_agent(account_id, body.agent_id)
        self._check_mode(body.telephony_mode)
        if self.session.scalar(select(PhoneNumber.id).where(PhoneNumber.number == body.phone_number)):
            raise ConflictError("this phone number is already imported", code="phone_number_taken")
        if body.twilio is not None:
            credentials = CarrierCredentials(body.twilio.account_sid, body.twilio.auth_token)
        else:
            platform = self.platform_credentials()
            if platform is None:
                raise ValidationFailedError(
                    "twilio credentials are required (the platform has no Twilio account configured)",
                    code="carrier_credentials_required",
                    details=[{"field": "twilio", "code": "missing", "message": "account_sid and auth_token"}],
                )
            credentials = platform
        carrier = self.carrier(credentials)
        found = carrier.find_number(body.phone_number)
        if found is None:
            raise ValidationFailedError(
                f"{body.phone_number} is not a number of Twilio account {credentials.account_sid}",
                code="number_not_found_at_carrier",
                details=[{"field": "phone_number", "code": "not_found_at_carrier", "message": "not in the account"}],
            )
        voice, status = self.webhook_url(signatures.VOICE_PATH), self.webhook_url(signatures.STATUS_PATH)
        carrier.configure_number(found.sid, voice_url=voice, status_callback=status)
        now = utcnow()
        number = PhoneNumber(
            id=new_id("pn"),
            account_id=account_id,
            number=body.phone_number,
            carrier=CARRIER,
            carrier_account_sid=credentials.account_sid,
            carrier_number_sid=found.sid,
            credentials="own" if body.twilio is not None else "platform",
            agent_id=body.agent_id,
            friendly_name=body.friendly_name,
            telephony_mode=body.telephony_mode,
            voice_url=voice,
            status_callback_url=status,
            created_at=now,
            updated_at=now,
        )
        if body.twilio is not None:
            sealed = self.cipher.seal(credentials.auth_token, _token_context(account_id, credentials.account_sid))
            number.token_ciphertext = sealed.ciphertext
            number.token_data_key = sealed.encrypted_data_key
            number.token_key_ref = sealed.key_ref
        try:
            with self.session.begin_nested():  # a concurrent import of the same number loses here
                self.session.add(number)
        except IntegrityError as exc:
            raise ConflictError("this phone number is already imported", code="phone_number_taken") from exc
        return number

    def update_number(self, account_id: str, number_id: str, body: PhoneNumberUpdate) -> PhoneNumber:
        """Only the fields sent change; the webhooks are set at the carrier again (the public URL may have moved)."""
        number = self.get_number(account_id, number_id)
        sent = body.model_fields_set
        if "agent_id" in sent:
            self._check_agent(account_id, body.agent_id)
        if body.telephony_mode is not None:
            self._check_mode(body.telephony_mode)
        voice, status = self.webhook_url(signatures.VOICE_PATH), self.webhook_url(signatures.STATUS_PATH)
        self._carrier_for(number).configure_number(number.carrier_number_sid, voice_url=voice, status_callback=status)
        if "agent_id" in sent:
            number.agent_id = body.agent_id
        if "friendly_name" in sent:
            number.friendly_name = body.friendly_name
        if body.telephony_mode is not None:
            number.telephony_mode = body.telephony_mode
        number.voice_url, number.status_callback_url = voice, status
        number.updated_at = utcnow()
        self.session.flush()
        return number

    def delete_number(self, account_id: str, number_id: str) -> None:
        """Forget the number and clear its webhooks at the carrier (best effort: the carrier account may be gone)."""
        number = self.get_number(account_id, number_id)
        try:
            self._carrier_for(number).configure_number(number.carrier_number_sid, voice_url="", status_callback="")
        except AiriesError:
            log.warning("could not clear the webhooks of %s at the carrier", number.id, exc_info=True)
        self.session.delete(number)
        self.session.flush()

    # -- inbound --------------------------------------------------------------------------------------------------
    def inbound_number(self, form: Form) -> PhoneNumber | None:
        """The imported number an inbound call is for (its ``To``, in the carrier account that sent it)."""
        fields = required(form, "CallSid", "AccountSid", "From", "To")
        number = self.session.scalar(select(PhoneNumber).where(PhoneNumber.number == dialled_number(fields["To"])))
        if number is None or number.carrier_account_sid != fields["AccountSid"]:
            return None
        return number

    def verify(self, number: PhoneNumber, url: str, form: Form, signature: str | None) -> None:
        credentials = self.credentials(number)
        signatures.check_signature(number.carrier, credentials.auth_token if credentials else "", url, form, signature)

    def answer_inbound(self, number: PhoneNumber, form: Form, conversations: ConversationService) -> str:
        """TwiML for a verified inbound call: the agent's ConversationRelay, or a polite refusal when the number
        has no agent, the agent is not deployed, or the account is out of credit or at its concurrent limit."""
        fields = required(form, "CallSid", "From", "To")
        if number.agent_id is None:
            return twiml.unavailable_twiml()
        call = self.session.scalar(select(PhoneCall).where(PhoneCall.call_sid == fields["CallSid"]))
        if call is not None:  # the carrier retried the webhook: the same conversation, a fresh token
            conversation = conversations.get(number.account_id, call.conversation_id)
            token, _ = conversations.tokens.issue(conversation.id, number.account_id)
            return self._connect(number, conversations, conversation, token)
        phone = {"direction": "inbound", "call_sid": fields["CallSid"], "from": fields["From"], "to": fields["To"]}
        try:
            with self.session.begin_nested():  # a refused start leaves nothing behind
                conversation, token, _ = conversations.start_conversation(
                    number.account_id,
                    ConversationCreate(
                        agent_id=number.agent_id,
                        caller=_caller(fields["From"]),
                        metadata={"source": "phone", PHONE_METADATA_KEY: phone},
                    ),
                )
        except AiriesError as exc:
            log.info("inbound call %s on %s refused: %s", fields["CallSid"], number.id, exc.code)
            return twiml.unavailable_twiml()
        self._record_call(number, conversation.id, fields["CallSid"], "inbound", fields["From"], fields["To"])
        return self._connect(number, conversations, conversation, token)

    def _connect(
        self,
        number: PhoneNumber,
        conversations: ConversationService,
        conversation: Conversation,
        token: str,
        first: str | None = None,
    ) -> str:
        """The TwiML that connects a call to its conversation: the media bridge for a media_stream number (while
        the bridge is configured; else the relay, logged), ConversationRelay otherwise."""
        if number.telephony_mode == media_streams.MEDIA_STREAM:
            if self.settings.media_bridge_url:
                config = conversations.config_for(conversation)
                return twiml.stream_twiml(config, self.settings.media_bridge_url, conversation.id, token)
            log.warning("%s streams media but the media bridge is not configured: the relay answers", number.id)
        return self._relay(conversations, conversation, token, first)

    def _relay(
        self, conversations: ConversationService, conversation: Conversation, token: str, first: str | None = None
    ) -> str:
        config = conversations.config_for(conversation)
        url = relay_url(self.settings.public_ws_url, conversation.id, token)
        return twiml.relay_twiml(config, url, first_message=first, action=self.webhook_url(signatures.ACTION_PATH))

    def _record_call(
        self, number: PhoneNumber, conversation_id: str, call_sid: str | None, direction: str, from_: str, to: str
    ) -> PhoneCall:
        now = utcnow()
        call = PhoneCall(
            id=new_id("call"),
            account_id=number.account_id,
            phone_number_id=number.id,
            conversation_id=conversation_id,
            call_sid=call_sid,
            direction=direction,
            from_number=from_,
            to_number=to,
            status="ringing" if direction == "inbound" else "queued",
            created_at=now,
            updated_at=now,
        )
        self.session.add(call)
        self.session.flush()
        return call

    # -- outbound -------------------------------------------------------------------------------------------------
    def place_call(self, account_id: str, body: CallCreate, conversations: ConversationService) -> PhoneCall:
        """Limits first (the conversation's start check), then the conversation, then the carrier dials with TwiML
        that connects the relay. A carrier failure raises, so the unit of work stores nothing."""
        number = self.session.scalar(
            select(PhoneNumber).where(PhoneNumber.account_id == account_id, PhoneNumber.number == body.from_)
        )
        if number is None:
            raise NotFoundError("phone_number", body.from_)
        carrier = self._carrier_for(number)
        phone = {"direction": "outbound", "from": body.from_, "to": body.to}
        metadata = {**body.metadata, "source": "phone", PHONE_METADATA_KEY: phone}
        try:
            create = ConversationCreate(agent_id=body.agent_id, caller=_caller(body.to), metadata=metadata)
        except ValidationError as exc:  # the call's own keys pushed the metadata over its limit
            raise ValidationFailedError(
                "metadata is too large", details=[{"field": "metadata", "code": "too_large", "message": str(exc)}]
            ) from exc
        if body.first_message and number.telephony_mode == media_streams.MEDIA_STREAM:
            raise ValidationFailedError(
                "first_message overrides are spoken by the relay: a media_stream number speaks the agent's own",
                details=[{"field": "first_message", "code": "not_supported", "message": "media_stream number"}],
            )
        conversation, token, _ = conversations.start_conversation(account_id, create)
        answer = self._connect(number, conversations, conversation, token, body.first_message)
        greeting = {FIRST_MESSAGE_KEY: body.first_message} if body.first_message else {}
        call_sid = carrier.place_call(
            OutboundCall(
                to=body.to,
                from_=body.from_,
                twiml=answer,
                status_callback=self.webhook_url(signatures.STATUS_PATH),
                machine_detection=body.machine_detection,
            )
        )
        conversations.update(
            account_id,
            conversation.id,
            ConversationUpdate(metadata={PHONE_METADATA_KEY: {**phone, "call_sid": call_sid, **greeting}}),
        )
        return self._record_call(number, conversation.id, call_sid, "outbound", body.from_, body.to)

    def get_call(self, account_id: str, call_id: str) -> PhoneCall:
        call = self.session.scalar(select(PhoneCall).where(PhoneCall.id == call_id, PhoneCall.account_id == account_id))
        if call is None:
            raise NotFoundError("call", call_id)
        return call

    # -- status callbacks -----------------------------------------------------------------------------------------
    def call_for_status(self, form: Form) -> tuple[PhoneCall, PhoneNumber]:
        required(form, "CallStatus")
        return self.call_for(form)

    def call_for(self, form: Form) -> tuple[PhoneCall, PhoneNumber]:
        """The call a carrier request is about (its ``CallSid``, in the carrier account that sent it), or 404."""
        fields = required(form, "CallSid", "AccountSid")
        call = self.session.scalar(select(PhoneCall).where(PhoneCall.call_sid == fields["CallSid"]))
        number = self.session.get(PhoneNumber, call.phone_number_id) if call and call.phone_number_id else None
        if call is None or number is None or number.carrier_account_sid != fields["AccountSid"]:
            raise NotFoundError("call", fields["CallSid"])
        return call, number

    def apply_status(
        self, call: PhoneCall, number: PhoneNumber, form: Form, conversations: ConversationService
    ) -> PhoneCall:
        """A verified status callback: the call row, the conversation's phone metadata and, at the end, the
        conversation itself (ended with the call's outcome as its reason)."""
        status = required(form, "CallStatus")["CallStatus"]
        if status not in CALL_STATUSES:
            raise BadRequestError(f"unknown CallStatus {status!r}", code="invalid_status")
        duration = first(form, "CallDuration")
        if call.ended_at is not None:  # a late or repeated callback changes nothing after the end
            return call
        call.status = status
        if duration is not None and duration.isdigit():
            call.duration_seconds = int(duration)
        call.answered_by = first(form, "AnsweredBy") or call.answered_by
        call.updated_at = utcnow()
        try:
            conversation = conversations.get(call.account_id, call.conversation_id)
        except NotFoundError:  # deleted over REST: the call row still follows the carrier
            conversation = None
        if conversation is not None:
            if status == "in-progress":
                conversations.mark_active(conversation)
            phone = {**(conversation.metadata_ or {}).get(PHONE_METADATA_KEY, {}), "status": status}
            if call.duration_seconds is not None:
                phone["duration_seconds"] = call.duration_seconds
            if call.answered_by:
                phone["answered_by"] = call.answered_by
            conversations.update(
                call.account_id, conversation.id, ConversationUpdate(metadata={PHONE_METADATA_KEY: phone})
            )
        if status in FINAL_STATUSES:
            call.ended_at = utcnow()
            if conversation is not None and call.duration_seconds:
                # A media_stream call uses no ConversationRelay: its voice leg only (STT and TTS are its turns').
                streams = number.telephony_mode == media_streams.MEDIA_STREAM
                products = [*([] if streams else ["conversation_relay"]), f"voice_{call.direction}"]
                conversations.book_phone_minutes(
                    conversation, carrier=CARRIER, products=products, seconds=call.duration_seconds
                )
            if conversation is not None:
                conversations.end_conversation(
                    call.account_id, conversation.id, FINAL_STATUSES[status], active_until=call.ended_at
                )
        self.session.flush()
        return call
