"""The shape of the Stripe webhook events Airies acts on, checked once before anything is recorded.

A signed event is Stripe's, but its body can still be something the handlers cannot read (a replay tool, an API
version change, a test payload): it is refused with 400 ``invalid_event`` and nothing is stored, instead of failing
halfway with a 500 that Stripe would retry for days. Only the fields the handlers read are declared; Stripe's other
fields pass through untouched (``extra="allow"``). Amounts and timestamps are JSON integers (never strings or
fractions) within ranges a 64-bit column and ``datetime`` can hold.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

# Stripe amounts are integers of the currency's smallest unit; its largest charge is 8 digits for USD (12 for some
# currencies): 10^12 leaves room and stays far below 2^63 once summed.
MAX_STRIPE_AMOUNT = 10**12
# Seconds since the epoch, up to 9999-12-31 (the largest a datetime holds).
MAX_STRIPE_TIMESTAMP = 253_402_300_799

StripeId = Annotated[StrictStr, Field(min_length=1, max_length=255)]
Amount = Annotated[StrictInt, Field(ge=0, le=MAX_STRIPE_AMOUNT)]
Timestamp = Annotated[StrictInt, Field(ge=0, le=MAX_STRIPE_TIMESTAMP)]
Metadata = dict[StrictStr, StrictStr]


class _StripeObject(BaseModel):
    model_config = ConfigDict(extra="allow")


class ObjectRef(_StripeObject):
    """An expanded reference (``{"id": ...}``) where Stripe usually sends the id alone."""

    id: StripeId


class PaymentIntentObject(_StripeObject):
    id: StripeId
    amount: Amount
    status: StrictStr | None = None
    currency: StrictStr | None = None
    metadata: Metadata | None = None


class SubscriptionDetails(_StripeObject):
    subscription: StripeId | None = None
    metadata: Metadata | None = None


class InvoiceParent(_StripeObject):
    subscription_details: SubscriptionDetails | None = None


class InvoiceObject(_StripeObject):
    id: StripeId
    customer: StripeId | None = None
    subscription: StripeId | ObjectRef | None = None
    parent: InvoiceParent | None = None
    subscription_details: SubscriptionDetails | None = None
    billing_reason: StrictStr | None = None
    amount_paid: Amount | None = None
    metadata: Metadata | None = None


class RefundObject(_StripeObject):
    id: StripeId
    amount: Amount
    created: Timestamp | None = None
    status: StrictStr | None = None


class RefundList(_StripeObject):
    data: list[RefundObject] = Field(default_factory=list)


class ChargeObject(_StripeObject):
    id: StripeId
    payment_intent: StripeId | ObjectRef | None = None
    customer: StripeId | None = None
    amount_refunded: Amount
    refunds: RefundList | None = None
    metadata: Metadata | None = None


class DisputeObject(_StripeObject):
    id: StripeId
    payment_intent: StripeId | ObjectRef | None = None
    amount: Amount
    status: StrictStr | None = None


class SubscriptionItem(_StripeObject):
    current_period_end: Timestamp | None = None


class SubscriptionItems(_StripeObject):
    data: list[SubscriptionItem] = Field(default_factory=list)


class PlanRef(_StripeObject):
    id: StripeId | None = None


class SubscriptionObject(_StripeObject):
    id: StripeId
    status: StrictStr | None = None
    customer: StripeId | None = None
    current_period_end: Timestamp | None = None
    items: SubscriptionItems | None = None
    plan: PlanRef | None = None
    cancel_at_period_end: StrictBool | None = None
    metadata: Metadata | None = None


# Every event type the payment service handles, and the shape of its ``data.object``.
HANDLED_EVENT_OBJECTS: dict[str, type[_StripeObject]] = {
    "payment_intent.succeeded": PaymentIntentObject,
    "payment_intent.payment_failed": PaymentIntentObject,
    "invoice.paid": InvoiceObject,
    "invoice.payment_failed": InvoiceObject,
    "charge.refunded": ChargeObject,
    "charge.dispute.created": DisputeObject,
    "charge.dispute.closed": DisputeObject,
    "customer.subscription.created": SubscriptionObject,
    "customer.subscription.updated": SubscriptionObject,
    "customer.subscription.deleted": SubscriptionObject,
}


class EventData(BaseModel):
    object: dict[str, Any]


class StripeEventEnvelope(BaseModel):
    """Every event, handled or not: the id gates replays, ``created`` orders subscription states."""

    model_config = ConfigDict(extra="allow")

    id: StripeId
    type: Annotated[StrictStr, Field(min_length=1, max_length=100)]
    created: Timestamp
    livemode: StrictBool = False
    data: EventData


class InvalidStripeEvent(ValueError):
    """A signed body that is not an event the handlers can read; ``problems`` says where."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        super().__init__("the Stripe event does not have the expected shape")
        self.problems = problems


def _problems(exc: ValidationError, prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "field": ".".join([prefix, *(str(part) for part in err["loc"])]).strip(".") or "event",
            "code": err["type"],
            "message": err["msg"],
        }
        for err in exc.errors()
    ]


def parse_stripe_event(payload: bytes | str) -> tuple[StripeEventEnvelope, dict[str, Any]]:
    """The event and its ``data.object`` (normalised by the type's model when the type is handled), or
    ``InvalidStripeEvent``."""
    try:
        envelope = StripeEventEnvelope.model_validate_json(payload)
    except ValidationError as exc:
        raise InvalidStripeEvent(_problems(exc, "")) from exc
    model = HANDLED_EVENT_OBJECTS.get(envelope.type)
    if model is None:
        return envelope, envelope.data.object
    try:
        obj = model.model_validate(envelope.data.object)
    except ValidationError as exc:
        raise InvalidStripeEvent(_problems(exc, "data.object")) from exc
    return envelope, obj.model_dump(exclude_unset=True)
