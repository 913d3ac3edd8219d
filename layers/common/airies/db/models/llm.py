"""ORM models of the llm capability: account-owned provider keys (encrypted) and shared provider health."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from airies.db.models.base import Base, TimestampMixin, id_column, utcnow


class ProviderKey(TimestampMixin, Base):
    """An account's own key for a vendor; only ciphertext is stored (envelope encryption)."""

    __tablename__ = "provider_keys"
    __table_args__ = (UniqueConstraint("account_id", "provider", name="uq_provider_keys_account_provider"),)

    id: Mapped[str] = id_column()
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(20))  # llm | stt | tts | vectors | payments
    ciphertext: Mapped[str] = mapped_column(Text)
    encrypted_data_key: Mapped[str] = mapped_column(Text)
    key_ref: Mapped[str] = mapped_column(String(300))  # "kms:<key id>" or "local"
    hint: Mapped[str] = mapped_column(String(8))  # last 4 characters, for a masked display
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
