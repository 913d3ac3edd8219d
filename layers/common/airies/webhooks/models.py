from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint, column, table
from sqlalchemy.orm import Mapped, mapped_column

from airies.core.models import Base, TimestampMixin, id_column, utcnow

# An endpoint's scope: the account default, or one agent's own endpoint (its id).
ACCOUNT_SCOPE = "account"

# The agents table, read for ownership only: webhooks sits below agents in the layers, so it names the two columns
# it reads instead of importing the agents capability.
agents_table = table("agents", column("id", String), column("account_id", String))


class WebhookEndpoint(TimestampMixin, Base):
    """Where an account's (or one agent's) events go, which events, and the sealed signing secret."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (UniqueConstraint("account_id", "scope", name="uq_webhook_endpoints_account_scope"),)

    id: Mapped[str] = id_column()
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(String(40))  # ACCOUNT_SCOPE or the agent id
    agent_id: Mapped[str | None] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[Any]]
    enabled: Mapped[bool] = mapped_column(default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(300))
    secret_ciphertext: Mapped[str] = mapped_column(Text)
    secret_encrypted_data_key: Mapped[str] = mapped_column(Text)
    secret_key_ref: Mapped[str] = mapped_column(String(200))
    secret_hint: Mapped[str] = mapped_column(String(8))


class WebhookDelivery(Base):
    """One event and its delivery: the stable event id (``evt_...``), the payload as sent, attempts and outcome."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("account_id", "idempotency_key", name="uq_webhook_deliveries_account_key"),
        Index("ix_webhook_deliveries_account_id_id", "account_id", "id"),
    )

    id: Mapped[str] = id_column()
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    agent_id: Mapped[str | None] = mapped_column(String(40))
    endpoint_id: Mapped[str | None] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="SET NULL"))
    event_type: Mapped[str] = mapped_column(String(40))
    idempotency_key: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_latency_ms: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(300))
    window_started_at: Mapped[datetime] = mapped_column(default=utcnow)  # retries stop max-age after this
    next_attempt_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


def secret_context(endpoint: WebhookEndpoint) -> dict[str, str]:
    """The encryption context an endpoint's signing secret is sealed under."""
    return {"account_id": endpoint.account_id, "endpoint_id": endpoint.id, "purpose": "airies-webhook-secret"}
