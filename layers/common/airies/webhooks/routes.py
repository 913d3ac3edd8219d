"""Server messages (webhooks): the account's default endpoint, per-agent endpoints, the delivery log.

PUT|GET|DELETE /webhooks/endpoint                  the account default
POST           /webhooks/endpoint/rotate-secret
PUT|GET|DELETE /agents/{agent_id}/webhook          one agent's own endpoint (else the default applies)
POST           /agents/{agent_id}/webhook/rotate-secret
GET            /webhooks/deliveries                status, attempts, last code, latency (paged, filters)
GET            /webhooks/deliveries/{event_id}     one, with its payload
POST           /webhooks/deliveries/{event_id}/redeliver
POST           /webhooks/test                      a ``webhook.test`` event to the account's or an agent's endpoint
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from airies.accounts.auth import Caller, current_caller
from airies.core.schemas import Limit, Page
from airies.webhooks.queue import DeliveryQueue, build_delivery_queue
from airies.webhooks.schemas import (
    DeliveryDetail,
    DeliveryOut,
    DeliveryStatus,
    EndpointOut,
    EndpointPut,
    EventType,
    TestEventRequest,
)
from airies.webhooks.service import WebhookService, delivery_detail, delivery_out

router = APIRouter(tags=["webhooks"])

AgentId = Annotated[str, Path(max_length=40)]
EventId = Annotated[str, Path(max_length=40)]


def delivery_queue(request: Request) -> DeliveryQueue | None:
    """The app's delivery queue, built once from its settings (tests override this dependency)."""
    state = request.app.state
    if not hasattr(state, "webhook_queue"):
        state.webhook_queue = build_delivery_queue(state.settings)
    return state.webhook_queue


def webhook_service(
    caller: Caller = Depends(current_caller), queue: DeliveryQueue | None = Depends(delivery_queue)
) -> WebhookService:
    return WebhookService(caller.session, caller.settings, queue=queue)


def _put(
    service: WebhookService, caller: Caller, agent_id: str | None, body: EndpointPut, response: Response
) -> EndpointOut:
    endpoint, created = service.put_endpoint(caller.account_id, agent_id, body)
    response.status_code = 201 if created else 200
    return endpoint


# -- the account default ------------------------------------------------------------------------------------------
@router.put("/webhooks/endpoint", responses={201: {"model": EndpointOut}})
def put_default_endpoint(
    body: EndpointPut,
    response: Response,
    caller: Caller = Depends(current_caller),
    service: WebhookService = Depends(webhook_service),
) -> EndpointOut:
    """Set the account's default server URL and events (201 with the signing secret, shown once, when created)."""
    return _put(service, caller, None, body, response)


@router.get("/webhooks/endpoint")
def get_default_endpoint(
    caller: Caller = Depends(current_caller), service: WebhookService = Depends(webhook_service)
) -> EndpointOut:
    """The account's default webhook endpoint (its secret is never shown again)."""
    return service.get_endpoint(caller.account_id, None)


@router.delete("/webhooks/endpoint", status_code=204)
def delete_default_endpoint(
    caller: Caller = Depends(current_caller), service: WebhookService = Depends(webhook_service)
) -> Response:
    """Remove the account's default webhook endpoint."""
    service.delete_endpoint(caller.account_id, None)
    return Response(status_code=204)


@router.post("/webhooks/endpoint/rotate-secret")
def rotate_default_secret(
    caller: Caller = Depends(current_caller), service: WebhookService = Depends(webhook_service)
) -> EndpointOut:
    """Replace the default endpoint's signing secret; the new one is shown once."""
    return service.rotate_secret(caller.account_id, None)


# -- one agent's own endpoint -------------------------------------------------------------------------------------
@router.put("/agents/{agent_id}/webhook", responses={201: {"model": EndpointOut}})
def put_agent_endpoint(
    agent_id: AgentId,
    body: EndpointPut,
    response: Response,
    caller: Caller = Depends(current_caller),
    service: WebhookService = Depends(webhook_service),
) -> EndpointOut:
    """Set the agent's own server URL and events (it wins over the account default)."""
    return _put(service, caller, agent_id, body, response)


@router.get("/agents/{agent_id}/webhook")
def get_agent_endpoint(
    agent_id: AgentId, caller: Caller = Depends(current_caller), service: WebhookService = Depends(webhook_service)
) -> EndpointOut:
    """The agent's own webhook endpoint."""
    return service.get_endpoint(caller.account_id, agent_id)


@router.delete("/agents/{agent_id}/webhook", status_code=204)
def delete_agent_endpoint(
    agent_id: AgentId, caller: Caller = Depends(current_caller), service: WebhookService = Depends(webhook_service)
) -> Response:
    """Remove the agent's own webhook endpoint (the account default applies again)."""
    service.delete_endpoint(caller.account_id, agent_id)
    return Response(status_code=204)


@router.post("/agents/{agent_id}/webhook/rotate-secret")
def rotate_agent_secret(
    agent_id: AgentId, caller: Caller = Depends(current_caller), service: WebhookService = Depends(webhook_service)
) -> EndpointOut:
    """Replace the agent endpoint's signing secret; the new one is shown once."""
    return service.rotate_secret(caller.account_id, agent_id)


# -- deliveries ---------------------------------------------------------------------------------------------------
@router.get("/webhooks/deliveries")
def list_deliveries(
    caller: Caller = Depends(current_caller),
    service: WebhookService = Depends(webhook_service),
    limit: Annotated[Limit, Query(le=100)] = 20,
    cursor: str | None = Query(None, max_length=40),
    status: DeliveryStatus | None = None,
    event_type: EventType | None = None,
    agent_id: str | None = Query(None, max_length=40),
) -> Page[DeliveryOut]:
    """Events sent to your endpoints, newest first, with status, attempts, last response code and latency."""
    rows, next_cursor = service.list_deliveries(
        caller.account_id, limit=limit, cursor=cursor, status=status, event_type=event_type, agent_id=agent_id
    )
    return Page(data=[delivery_out(row) for row in rows], next_cursor=next_cursor, has_more=next_cursor is not None)


@router.get("/webhooks/deliveries/{event_id}")
def get_delivery(
    event_id: EventId, caller: Caller = Depends(current_caller), service: WebhookService = Depends(webhook_service)
) -> DeliveryDetail:
    """One event's delivery record."""
    return delivery_detail(service.get_delivery(caller.account_id, event_id))


@router.post("/webhooks/deliveries/{event_id}/redeliver", status_code=202)
def redeliver(
    event_id: EventId, caller: Caller = Depends(current_caller), service: WebhookService = Depends(webhook_service)
) -> DeliveryOut:
    """Send one event again (same event id, so receivers can deduplicate)."""
    return delivery_out(service.redeliver(caller.account_id, event_id))


@router.post("/webhooks/test", status_code=202)
def send_test_event(
    body: TestEventRequest | None = None,
    caller: Caller = Depends(current_caller),
    service: WebhookService = Depends(webhook_service),
) -> DeliveryOut:
    """Send a signed test event to the endpoint that applies."""
    return delivery_out(service.send_test(caller.account_id, body.agent_id if body else None))
