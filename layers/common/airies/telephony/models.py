"""Phone numbers an account imported from its carrier, and the calls that ran through them.

A number's carrier credentials are the business's own (auth token sealed like provider keys) or, when it was
imported without any, the platform's account (operator settings). A call links a carrier call id to the
conversation it carries, so signed status callbacks find both.
"""

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from airies.core.models import Base, TimestampMixin, id_column


class PhoneNumber(TimestampMixin, Base):
    __tablename__ = "phone_numbers"

    id: Mapped[str] = id_column()
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    # E.164; a carrier number rings one place, so one account at most holds it.
    number: Mapped[str] = mapped_column(String(20), unique=True)
    carrier: Mapped[str] = mapped_column(String(20))  # twilio
    carrier_account_sid: Mapped[str] = mapped_column(String(64))
    carrier_number_sid: Mapped[str] = mapped_column(String(64))
    credentials: Mapped[str] = mapped_column(String(20))  # own | platform
    # The business's auth token, envelope-encrypted (empty for the platform's account).
    token_ciphertext: Mapped[str | None] = mapped_column(Text)
    token_data_key: Mapped[str | None] = mapped_column(Text)
    token_key_ref: Mapped[str | None] = mapped_column(String(300))
    # SET NULL: deleting an agent leaves the number imported, answering politely until reassigned.
    agent_id: Mapped[str | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    friendly_name: Mapped[str | None] = mapped_column(String(100))
    voice_url: Mapped[str] = mapped_column(String(500))
    status_callback_url: Mapped[str] = mapped_column(String(500))
    # relay (Twilio ConversationRelay) | media_stream (Twilio Media Streams through the media bridge)
    telephony_mode: Mapped[str] = mapped_column(String(20), default="relay", server_default="relay")


class PhoneCall(TimestampMixin, Base):
    __tablename__ = "phone_calls"
    __table_args__ = (Index("ix_phone_calls_account_id_id", "account_id", "id"),)

    id: Mapped[str] = id_column()
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    phone_number_id: Mapped[str | None] = mapped_column(ForeignKey("phone_numbers.id", ondelete="SET NULL"))
    conversation_id: Mapped[str] = mapped_column(String(40), index=True)
    call_sid: Mapped[str | None] = mapped_column(String(64), unique=True)
    direction: Mapped[str] = mapped_column(String(20))  # inbound | outbound
    from_number: Mapped[str] = mapped_column(String(300))  # E.164, a SIP URI or client:<name>
    to_number: Mapped[str] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(20))  # queued | ringing | in-progress | completed | busy | ...
    duration_seconds: Mapped[int | None] = mapped_column(Integer)
    answered_by: Mapped[str | None] = mapped_column(String(40))  # answering-machine detection's verdict
    ended_at: Mapped[datetime | None]
