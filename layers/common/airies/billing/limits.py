"""Limits: what an account may start (a conversation, a turn) and how much knowledge-base content its tier holds."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from airies.accounts.models import Account
from airies.billing.ledger import Ledger, micro_to_quantity
from airies.billing.metering import minutes_in_period
from airies.billing.schemas import MICROS_PER_CREDIT, LimitCheck, micros_to_credits
from airies.core.errors import PaymentRequiredError


def check_usage_limits(
    ledger: Ledger,
    account_id: str,
    *,
    starting_conversation: bool,
    active_conversations: int | None = None,
    session: Session | None = None,
) -> LimitCheck:
    """Call before a conversation starts (``starting_conversation=True``) and before each turn.

    ``active_conversations``: the caller's count of live conversations of this account (excluding the
    one being started); when omitted the injected counter is used; with neither it is not checked
    (``concurrent_conversations`` is None in the answer).
    """
    with ledger.unit_of_work(session) as s:
        row = ledger.ensure_account(account_id, session=s)
        tier = ledger.pricing.tier(row.tier)
        now = ledger.clock()
        account_status = s.scalar(select(Account.status).where(Account.id == account_id))
        if active_conversations is None and ledger.active_conversations is not None and starting_conversation:
            active_conversations = ledger.active_conversations(s, account_id)
        used_micro = minutes_in_period(row.minutes_period, row.minutes_used_micro, now)  # the row just read
        # Credits owed for refunded/disputed payments reduce what may be started (they are settled by a top-up).
        available = row.balance_micros + tier.overdraft_micros - row.owed_micros
        base = {
            "tier": tier.name,
            "balance": micros_to_credits(row.balance_micros),
            "available": micros_to_credits(available),
            "minutes_used": micro_to_quantity(used_micro),
            "minutes_limit": tier.limits.minutes_per_month,
            "concurrent_conversations": active_conversations,
            "concurrent_limit": tier.limits.concurrent_conversations,
        }

        def deny(reason: str, message: str) -> LimitCheck:
            return LimitCheck(allowed=False, reason=reason, message=message, **base)

        if account_status != "active":
            return deny("account_inactive", "the account is not active")
        needed = tier.min_to_start_micros if starting_conversation else 0
        if available <= needed:
            return deny(
                "insufficient_credits",
                f"insufficient credits: available {micros_to_credits(available)}, "
                f"{'starting a conversation needs more than ' + micros_to_credits(needed) if starting_conversation else 'a turn needs a positive balance'}; top up or change plan",
            )
        limit_minutes = tier.limits.minutes_per_month
        if limit_minutes is not None and used_micro >= limit_minutes * MICROS_PER_CREDIT:
            return deny(
                "monthly_minutes_limit",
                f"the {tier.display_name} tier allows {limit_minutes} conversation minutes per month; "
                f"{micro_to_quantity(used_micro)} used",
            )
        limit_conc = tier.limits.concurrent_conversations
        if (
            starting_conversation
            and limit_conc is not None
            and active_conversations is not None
            and active_conversations >= limit_conc
        ):
            return deny(
                "concurrent_conversation_limit",
                f"the {tier.display_name} tier allows {limit_conc} concurrent conversation(s)",
            )
        return LimitCheck(allowed=True, **base)


def check_kb_size(ledger: Ledger, account_id: str, *, total_bytes: int, session: Session | None = None) -> None:
    """Raise 402 when a knowledge base of ``total_bytes`` (after the upload) exceeds the tier's size."""
    with ledger.unit_of_work(session) as s:
        tier = ledger.pricing.tier(ledger.ensure_account(account_id, session=s).tier)
    limit = tier.limits.kb_size_mb
    if limit is not None and total_bytes > limit * 1024 * 1024:
        raise PaymentRequiredError(
            f"the {tier.display_name} tier allows {limit} MB of knowledge base content",
            code="kb_size_limit",
            details={"limit_mb": limit, "total_bytes": total_bytes},
        )
