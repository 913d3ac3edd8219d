"""Publishable keys (the embeddable widget's credential) and the conversations visitors started with them."""

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from airies.core.models import Base, id_column


class PublishableKey(Base):
    """A key meant to sit in a web page: it may only start conversations with the named agents from the named
    origins. It is public by design, so it is stored as it is (and shown again in the dashboard's snippet)."""

    __tablename__ = "publishable_keys"

    id: Mapped[str] = id_column()
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(80), unique=True)
    agent_ids: Mapped[list[Any]]
    allowed_origins: Mapped[list[Any]]
    visitor_conversations_per_hour: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class WidgetConversation(Base):
    """One conversation a visitor started through a publishable key: the per-visitor rate limit counts these."""

    __tablename__ = "widget_conversations"
    __table_args__ = (
        Index("ix_widget_conversations_key_visitor_created", "publishable_key_id", "visitor", "created_at"),
    )

    id: Mapped[str] = id_column()
    publishable_key_id: Mapped[str] = mapped_column(ForeignKey("publishable_keys.id", ondelete="CASCADE"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    conversation_id: Mapped[str] = mapped_column(String(40))
    visitor: Mapped[str] = mapped_column(String(64))  # sha256 of key id + source address: no address is stored
    origin: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime]
