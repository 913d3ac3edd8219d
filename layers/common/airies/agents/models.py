from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from airies.core.models import Base, TimestampMixin, id_column, utcnow


class Agent(TimestampMixin, Base):
    __tablename__ = "agents"
    __table_args__ = (Index("ix_agents_account_id_id", "account_id", "id"),)

    id: Mapped[str] = id_column()
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    agent_type: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), default="draft")  # draft | deployed
    draft_config: Mapped[dict[str, Any]]
    current_version: Mapped[int | None] = mapped_column(Integer)
    has_undeployed_changes: Mapped[bool] = mapped_column(default=True)


class AgentVersion(Base):
    """An immutable published config; conversations always run one of these."""

    __tablename__ = "agent_versions"
    __table_args__ = (UniqueConstraint("agent_id", "version", name="uq_agent_versions_agent_version"),)

    id: Mapped[str] = id_column()
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
