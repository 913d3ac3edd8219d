"""ORM models of the voice capability: voices an account owns (cloned voices)."""

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from airies.core.models import Base, TimestampMixin, id_column


class Voice(TimestampMixin, Base):
    """A provider voice that belongs to one account (the agent validator looks up account_id/provider/voice_id)."""

    __tablename__ = "voices"
    __table_args__ = (
        UniqueConstraint("account_id", "provider", "voice_id", name="uq_voices_account_provider_voice"),
        Index("ix_voices_account_id_provider", "account_id", "provider"),
    )

    id: Mapped[str] = id_column()
    account_id: Mapped[str] = mapped_column(String(40), ForeignKey("accounts.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(40))
    voice_id: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text, nullable=True, default=None)
    language: Mapped[str | None] = mapped_column(String(16), nullable=True, default=None)
    kind: Mapped[str] = mapped_column(String(20), default="cloned")
    sample_count: Mapped[int] = mapped_column(default=0)
    sample_bytes: Mapped[int] = mapped_column(default=0)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    deleted_at: Mapped[datetime | None] = mapped_column(nullable=True, default=None)
