"""ORM models of the llm capability: accounts' own OpenAI-compatible endpoints (key encrypted) and shared provider
health. Account-owned provider keys are an accounts model (re-exported here for existing importers)."""

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from airies.accounts.models import ProviderKey
from airies.core.models import Base, TimestampMixin, id_column, utcnow

__all__ = ["LLMCustomEndpoint", "ProviderHealth", "ProviderKey"]


class LLMCustomEndpoint(TimestampMixin, Base):
    """An account's own OpenAI-compatible LLM endpoint: base URL, encrypted key, and the models it listed."""

    __tablename__ = "llm_custom_endpoints"
    __table_args__ = (UniqueConstraint("account_id", "name", name="uq_llm_custom_endpoints_account_name"),)

    id: Mapped[str] = id_column()
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(32))  # agents name it as provider "custom:<name>"
    base_url: Mapped[str] = mapped_column(String(2048))
    ciphertext: Mapped[str | None] = mapped_column(Text)  # None: the endpoint takes no key
    encrypted_data_key: Mapped[str | None] = mapped_column(Text)
    key_ref: Mapped[str | None] = mapped_column(String(300))
    hint: Mapped[str] = mapped_column(String(8), default="")  # last 4 characters of a long key, for a masked display
    models: Mapped[list[Any]]  # model ids from GET {base_url}/models when last validated
    model_class: Mapped[str] = mapped_column(String(20))  # routing class of its models (fast | smart)
    stream_usage: Mapped[bool] = mapped_column(Boolean, default=True)  # False: usage is estimated
    last_validated_at: Mapped[datetime | None]


class ProviderHealth(Base):
    """Latency and error statistics of one provider, merged from every container (periodic upsert)."""

    __tablename__ = "provider_health"

    provider: Mapped[str] = mapped_column(String(80), primary_key=True)
    ttft_ms: Mapped[float | None] = mapped_column(Float)  # moving average of time to first token
    error_rate: Mapped[float] = mapped_column(Float, default=0.0)  # moving average of failures (0..1)
    samples: Mapped[int] = mapped_column(Integer, default=0)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    breaker_open_until: Mapped[datetime | None]
    retry_after_until: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
