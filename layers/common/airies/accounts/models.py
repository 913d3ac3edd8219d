from datetime import datetime

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from airies.core.models import Base, TimestampMixin, id_column


class Account(TimestampMixin, Base):
    __tablename__ = "accounts"

    id: Mapped[str] = id_column()
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320), unique=True)
    plan: Mapped[str] = mapped_column(String(40), default="free")
    status: Mapped[str] = mapped_column(String(20), default="active")


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = id_column()
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    # sha256 of the full key: keys are 256-bit random, so a fast hash is safe and lookups are O(1).
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(20))
    last4: Mapped[str] = mapped_column(String(4))
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


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
