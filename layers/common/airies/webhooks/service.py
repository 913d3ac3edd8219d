"""Server messages: endpoints (the account default and per-agent ones), publishing events, the delivery log.

``WebhookService(session, settings, queue=...)``:

* endpoints: ``put_endpoint`` / ``get_endpoint`` / ``delete_endpoint`` / ``rotate_secret`` for the account default
  (``agent_id=None``) or one agent. The URL passes the URL guard; the signing secret is generated, sealed like the
  accounts' provider keys, and returned in full only when created or rotated.
* ``publish(account_id, agent_id, event_type, data, idempotency_key=...)``: picks the agent's endpoint, else the
  account's; stores the event (``evt_...``, pending) when that endpoint is enabled and wants the type, commits, then
  enqueues its first attempt. The same idempotency key returns the stored event instead of a second one.
* deliveries: ``list_deliveries`` / ``get_delivery`` / ``redeliver`` / ``send_test``. Another account's ids are 404.

``WebhookPublisher(database, settings, queue)``: ``publish`` in a unit of work of its own, for the platform's own
code (conversations, tools): a failure is logged and returns None, so an event can go missing but never a call.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from airies.core.config import Settings
from airies.core.database import Database
from airies.core.errors import ConflictError, NotFoundError
from airies.core.ids import new_id
from airies.core.models import utcnow
from airies.core.secrets import EnvelopeCipher, Sealed, get_cipher
from airies.core.url_guard import URLGuard, url_guard
from airies.webhooks.models import ACCOUNT_SCOPE, WebhookDelivery, WebhookEndpoint, agents_table, secret_context
from airies.webhooks.queue import DeliveryQueue, build_delivery_queue
from airies.webhooks.schemas import (
    EVENT_TYPES,
    TEST_EVENT,
    DeliveryDetail,
    DeliveryMessage,
    DeliveryOut,
    EndpointOut,
    EndpointPut,
)
from airies.webhooks.signing import generate_secret

MAX_IDEMPOTENCY_KEY = 200
log = logging.getLogger(__name__)


def endpoint_out(endpoint: WebhookEndpoint, secret: str | None = None) -> EndpointOut:
    return EndpointOut(
        id=endpoint.id,
        agent_id=endpoint.agent_id,
        url=endpoint.url,
        events=list(endpoint.events),
        enabled=endpoint.enabled,
        disabled_reason=endpoint.disabled_reason,
        masked_secret=f"whsec_****{endpoint.secret_hint}",
        secret=secret,
        created_at=endpoint.created_at,
        updated_at=endpoint.updated_at,
    )


def delivery_out(row: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut.model_validate(row, from_attributes=True)


def delivery_detail(row: WebhookDelivery) -> DeliveryDetail:
    return DeliveryDetail.model_validate(row, from_attributes=True)


class WebhookService:
    def __init__(
        self,
        session: Session,
        settings: Settings,
        *,
        queue: DeliveryQueue | None,
        cipher: EnvelopeCipher | None = None,
        guard: URLGuard | None = None,
    ) -> None:
        self.session = session
        self.settings = settings
        self.queue = queue
        self.cipher = cipher or get_cipher(settings)
        self.guard = guard or url_guard(settings)

    # -- endpoints ------------------------------------------------------------------------------------------------
    def _check_agent(self, account_id: str, agent_id: str) -> None:
        owned = self.session.execute(
            select(agents_table.c.id).where(agents_table.c.id == agent_id, agents_table.c.account_id == account_id)
        ).first()
        if owned is None:  # another account's agent is exactly as unknown as a missing one
            raise NotFoundError("agent", agent_id)

    def _endpoint(self, account_id: str, agent_id: str | None) -> WebhookEndpoint | None:
        return self.session.scalars(
            select(WebhookEndpoint).where(
                WebhookEndpoint.account_id == account_id, WebhookEndpoint.scope == (agent_id or ACCOUNT_SCOPE)
            )
        ).one_or_none()

    def _existing_endpoint(self, account_id: str, agent_id: str | None) -> WebhookEndpoint:
        if agent_id is not None:
            self._check_agent(account_id, agent_id)
        endpoint = self._endpoint(account_id, agent_id)
        if endpoint is None:
            raise NotFoundError("webhook endpoint", agent_id)
        return endpoint

    def _seal(self, endpoint: WebhookEndpoint) -> str:
        secret = generate_secret()
        sealed = self.cipher.seal(secret, secret_context(endpoint))
        endpoint.secret_ciphertext = sealed.ciphertext
        endpoint.secret_encrypted_data_key = sealed.encrypted_data_key
        endpoint.secret_key_ref = sealed.key_ref
        endpoint.secret_hint = secret[-4:]
        return secret

    def signing_secret(self, endpoint: WebhookEndpoint) -> str:
        sealed = Sealed(endpoint.secret_ciphertext, endpoint.secret_encrypted_data_key, endpoint.secret_key_ref)
        return self.cipher.open(sealed, secret_context(endpoint))

    def signing_secret_for(self, account_id: str, agent_id: str | None) -> str | None:
        """The secret that signs what goes to this agent's server: its own endpoint's, else the account default's
        (None when neither exists). Tool calls are signed with it too."""
        endpoint = self.endpoint_for(account_id, agent_id)
        return self.signing_secret(endpoint) if endpoint is not None else None

    def put_endpoint(self, account_id: str, agent_id: str | None, body: EndpointPut) -> tuple[EndpointOut, bool]:
        """Create or replace the endpoint; (endpoint, created). A new endpoint's answer carries its secret."""
        if agent_id is not None:
            self._check_agent(account_id, agent_id)
        self.guard.check(body.url, field="url")
        endpoint = self._endpoint(account_id, agent_id)
        secret = None
        if endpoint is None:
            endpoint = WebhookEndpoint(
                id=new_id("whe"), account_id=account_id, scope=agent_id or ACCOUNT_SCOPE, agent_id=agent_id
            )
            secret = self._seal(endpoint)
            try:
                with self.session.begin_nested():
                    self.session.add(endpoint)
                    self._apply(endpoint, body)
            except IntegrityError as exc:  # a concurrent first PUT won: replace its settings instead
                existing = self._endpoint(account_id, agent_id)
                if existing is None:
                    raise ConflictError("the webhook endpoint changed concurrently; try again") from exc
                endpoint, secret = existing, None
            else:
                return endpoint_out(endpoint, secret), True
        self._apply(endpoint, body)
        return endpoint_out(endpoint), False

    def _apply(self, endpoint: WebhookEndpoint, body: EndpointPut) -> None:
        endpoint.url = body.url
        endpoint.events = list(body.events)
        endpoint.enabled = body.enabled
        endpoint.disabled_reason = None if body.enabled else "disabled by the account"
        endpoint.updated_at = utcnow()
        self.session.flush()

    def get_endpoint(self, account_id: str, agent_id: str | None) -> EndpointOut:
        return endpoint_out(self._existing_endpoint(account_id, agent_id))

    def delete_endpoint(self, account_id: str, agent_id: str | None) -> None:
        self.session.delete(self._existing_endpoint(account_id, agent_id))
        self.session.flush()

    def rotate_secret(self, account_id: str, agent_id: str | None) -> EndpointOut:
        """A new signing secret at once (the old one stops signing); returned this once."""
        endpoint = self._existing_endpoint(account_id, agent_id)
        secret = self._seal(endpoint)
        endpoint.updated_at = utcnow()
        self.session.flush()
        return endpoint_out(endpoint, secret)

    def endpoint_for(self, account_id: str, agent_id: str | None) -> WebhookEndpoint | None:
        """The endpoint an agent's events go to: its own, else the account default."""
        if agent_id is not None:
            own = self._endpoint(account_id, agent_id)
            if own is not None:
                return own
        return self._endpoint(account_id, None)

    # -- events ---------------------------------------------------------------------------------------------------
    def publish(
        self,
        account_id: str,
        agent_id: str | None,
        event_type: str,
        data: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        commit: bool = True,
    ) -> WebhookDelivery | None:
        """Store the event and enqueue its delivery; None when no enabled endpoint wants it.

        The worker must find the event, so it is enqueued only once stored: ``commit=True`` commits the session and
        enqueues; ``commit=False`` leaves the transaction to its owner (a conversation's unit of work) and enqueues
        when that commits (never, when it rolls back). ``idempotency_key`` (e.g.
        ``f"{conversation_id}:conversation.ended"``) makes a publisher's retry return the first event."""
        if event_type not in EVENT_TYPES and event_type != TEST_EVENT:
            raise ValueError(f"unknown webhook event type {event_type!r}")
        if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise ValueError(f"idempotency_key must be 1-{MAX_IDEMPOTENCY_KEY} characters")
        endpoint = self.endpoint_for(account_id, agent_id)
        if endpoint is None or not endpoint.enabled:
            return None
        if event_type != TEST_EVENT and event_type not in endpoint.events:
            return None
        if idempotency_key is not None:
            existing = self._by_key(account_id, idempotency_key)
            if existing is not None:
                return self._resend_unsent(existing, commit=commit)
        event_id = new_id("evt")
        now = utcnow()
        row = WebhookDelivery(
            id=event_id,
            account_id=account_id,
            agent_id=agent_id,
            endpoint_id=endpoint.id,
            event_type=event_type,
            idempotency_key=idempotency_key or event_id,
            payload={
                "id": event_id,
                "type": event_type,
                "created_at": now.isoformat(),
                "account_id": account_id,
                "agent_id": agent_id,
                "data": json.loads(json.dumps(data, default=str)),
            },
            status="pending",
            attempts=0,
            window_started_at=now,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
        if not commit and self.session.get_bind().dialect.name == "sqlite":
            # pysqlite opens no transaction before the first write, so a SAVEPOINT there would be committed by its
            # RELEASE, outside the owner's transaction. Without it a concurrent publish of the same key fails the
            # owner's transaction instead of returning the first event (SQLite runs locally only).
            self.session.add(row)
            self.session.flush()
        else:
            try:
                with self.session.begin_nested():
                    self.session.add(row)
            except IntegrityError:  # the same key published concurrently: that event is the one
                existing = self._by_key(account_id, idempotency_key or event_id)
                if existing is None:
                    raise
                return self._resend_unsent(existing, commit=commit)
        if commit:
            self.session.commit()
            self._enqueue(row)
        else:
            self._enqueue_after_commit(row)
        return row

    def _by_key(self, account_id: str, key: str) -> WebhookDelivery | None:
        return self.session.scalars(
            select(WebhookDelivery).where(
                WebhookDelivery.account_id == account_id, WebhookDelivery.idempotency_key == key
            )
        ).one_or_none()

    def _resend_unsent(self, row: WebhookDelivery, *, commit: bool) -> WebhookDelivery:
        """A publisher's retry: enqueue again only an event no attempt was made at (its first send may have failed)."""
        if row.status == "pending" and row.attempts == 0:
            if commit:
                self._enqueue(row)
            else:
                self._enqueue_after_commit(row)
        return row

    def _enqueue(self, row: WebhookDelivery) -> None:
        if self.queue is not None:
            self.queue.send(DeliveryMessage(delivery_id=row.id, attempt=row.attempts + 1))

    def _enqueue_after_commit(self, row: WebhookDelivery) -> None:
        queue = self.queue
        if queue is None:
            return
        message = DeliveryMessage(delivery_id=row.id, attempt=row.attempts + 1)

        def send(_session: Session) -> None:
            try:
                queue.send(message)
            except Exception:  # the owner's transaction has committed: its caller must not see this failure
                log.exception("webhook event stored but not enqueued", extra={"event_id": message.delivery_id})

        # After a rollback the listener may still fire at a later commit: the worker drops an unknown event.
        event.listen(self.session, "after_commit", send, once=True)

    def send_test(self, account_id: str, agent_id: str | None) -> WebhookDelivery:
        if agent_id is not None:
            self._check_agent(account_id, agent_id)
        endpoint = self.endpoint_for(account_id, agent_id)
        if endpoint is None:
            raise NotFoundError("webhook endpoint", agent_id)
        self._require_enabled(endpoint)
        data = {"message": "a test event from Airies", "endpoint_id": endpoint.id}
        row = self.publish(account_id, agent_id, TEST_EVENT, data)
        assert row is not None  # an enabled endpoint takes test events whatever it subscribes to
        return row

    @staticmethod
    def _require_enabled(endpoint: WebhookEndpoint) -> None:
        if not endpoint.enabled:
            raise ConflictError(
                f"the webhook endpoint is disabled ({endpoint.disabled_reason}); PUT it with enabled=true first",
                details={"endpoint_id": endpoint.id},
            )

    # -- the delivery log -----------------------------------------------------------------------------------------
    def list_deliveries(
        self,
        account_id: str,
        *,
        limit: int = 20,
        cursor: str | None = None,
        status: str | None = None,
        event_type: str | None = None,
        agent_id: str | None = None,
    ) -> tuple[list[WebhookDelivery], str | None]:
        query = select(WebhookDelivery).where(WebhookDelivery.account_id == account_id)
        if cursor:
            query = query.where(WebhookDelivery.id < cursor)
        if status:
            query = query.where(WebhookDelivery.status == status)
        if event_type:
            query = query.where(WebhookDelivery.event_type == event_type)
        if agent_id:
            query = query.where(WebhookDelivery.agent_id == agent_id)
        rows = list(self.session.scalars(query.order_by(WebhookDelivery.id.desc()).limit(limit + 1)))
        next_cursor = rows[limit - 1].id if len(rows) > limit else None
        return rows[:limit], next_cursor

    def get_delivery(self, account_id: str, delivery_id: str) -> WebhookDelivery:
        row = self.session.get(WebhookDelivery, delivery_id)
        if row is None or row.account_id != account_id:
            raise NotFoundError("webhook delivery", delivery_id)
        return row

    def redeliver(self, account_id: str, delivery_id: str) -> WebhookDelivery:
        """Deliver a finished event again (same id and payload) to its agent's endpoint as it is now."""
        row = self.get_delivery(account_id, delivery_id)
        if row.status == "pending":
            raise ConflictError("the event is still being delivered", details={"status": row.status})
        endpoint = self.endpoint_for(account_id, row.agent_id)
        if endpoint is None:
            raise ConflictError("no webhook endpoint to deliver to", details={"agent_id": row.agent_id})
        self._require_enabled(endpoint)
        now = utcnow()
        row.endpoint_id = endpoint.id
        row.status = "pending"
        row.last_error = None
        row.window_started_at = now
        row.next_attempt_at = now
        row.delivered_at = None
        row.updated_at = now
        self.session.commit()
        self._enqueue(row)
        return row


class WebhookPublisher:
    def __init__(self, database: Database, settings: Settings, queue: DeliveryQueue | None) -> None:
        self.database = database
        self.settings = settings
        self.queue = queue

    def publish(
        self,
        account_id: str,
        agent_id: str | None,
        event_type: str,
        data: dict[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> str | None:
        """The event id, or None when no endpoint wants the event or publishing failed (logged, never raised)."""
        try:
            with self.database.session() as session:
                row = WebhookService(session, self.settings, queue=self.queue).publish(
                    account_id, agent_id, event_type, data, idempotency_key=idempotency_key
                )
                return row.id if row is not None else None
        except Exception:  # a server message must never fail the call that caused it
            log.exception("webhook event not published", extra={"event_type": event_type, "account_id": account_id})
            return None


def build_webhook_publisher(settings: Settings, database: Database) -> WebhookPublisher:
    return WebhookPublisher(database, settings, build_delivery_queue(settings))
