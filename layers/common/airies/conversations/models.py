"""ORM models of the conversations capability: one row per conversation, one per turn.

Live session state (connections, the turn being spoken, cancellation flags, buffered audio) sits in DynamoDB;
these tables keep what outlives the call: transcript, latency waterfall, usage and cost per turn.
"""

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, Numeric, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from airies.core.models import Base, TimestampMixin, id_column, utcnow

# Costs are exact decimals to the nano-dollar: one token of a cheap model costs fractions of a micro-dollar.
MONEY = Numeric(18, 9)


class Conversation(TimestampMixin, Base):
    __tablename__ = "conversations"
    __table_args__ = (
        Index("ix_conversations_account_id_id", "account_id", "id"),
        Index("ix_conversations_account_id_agent_id", "account_id", "agent_id"),
        Index("ix_conversations_status_started_at", "status", "started_at"),
    )

    id: Mapped[str] = id_column()
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    # SET NULL: deleting an agent keeps its call history (and the bill it produced).
    agent_id: Mapped[str | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    agent_version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="created")  # created | active | ended
    channel: Mapped[str] = mapped_column(String(20), default="websocket")  # websocket | http
    caller: Mapped[dict[str, Any]]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    end_reason: Mapped[str | None] = mapped_column(String(40))
    duration_seconds: Mapped[float] = mapped_column(default=0.0)
    turn_count: Mapped[int] = mapped_column(Integer, default=0)
    interruption_count: Mapped[int] = mapped_column(Integer, default=0)
    usage: Mapped[dict[str, Any]]
    cost_usd: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0))
    recording_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # post-call analysis: None until it runs; status pending | completed | failed | skipped
    analysis: Mapped[dict[str, Any] | None]
    analysis_status: Mapped[str | None] = mapped_column(String(20))


class ConversationTurn(Base):
    """One exchange: what the caller said and what the agent said that the caller actually received."""

    __tablename__ = "conversation_turns"
    __table_args__ = (
        UniqueConstraint("conversation_id", "seq", name="uq_conversation_turns_conversation_seq"),
        Index("ix_conversation_turns_account_id_started_at", "account_id", "started_at"),
    )

    id: Mapped[str] = id_column()  # minted when the turn starts, so a retried write is idempotent
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    input_mode: Mapped[str] = mapped_column(String(20))  # audio | text | none (agent speaks first, reminders)
    user_text: Mapped[str | None] = mapped_column(Text)
    agent_text: Mapped[str] = mapped_column(Text, default="")  # only what was delivered to the caller
    agent_text_generated: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(20))  # completed | interrupted | failed
    interrupted: Mapped[bool] = mapped_column(Boolean, default=False)
    latency: Mapped[dict[str, Any]]
    usage: Mapped[dict[str, Any]]
    cost: Mapped[dict[str, Any]]
    cost_usd: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0))
    recording: Mapped[dict[str, Any]]
    tool_calls: Mapped[list[Any] | None]  # each call: name, arguments, result (capped), status, duration
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime] = mapped_column(default=utcnow)
