"""Publishable keys: create, list, revoke; and what a key allows: starting a conversation with one of its agents,
from one of its origins, within its per-visitor rate limit."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from airies.accounts.models import Account
from airies.agents.models import Agent
from airies.core.errors import ForbiddenError, NotFoundError, RateLimitedError, UnauthorizedError
from airies.core.ids import new_id
from airies.core.models import utcnow
from airies.widget.models import PublishableKey, WidgetConversation
from airies.widget.schemas import PublishableKeyCreate, PublishableKeyOut, normalise_origin

PUBLISHABLE_PREFIX = "pk_live_"
RATE_WINDOW = timedelta(hours=1)


def generate_publishable_key() -> str:
    return PUBLISHABLE_PREFIX + secrets.token_urlsafe(24)


def is_publishable_key(raw: str | None) -> bool:
    return bool(raw) and raw.startswith(PUBLISHABLE_PREFIX)  # type: ignore[union-attr]


def visitor_id(key_id: str, source: str) -> str:
    """A visitor, as the rate limit sees it: the source address, hashed with the key (no address is stored)."""
    return hashlib.sha256(f"{key_id}:{source}".encode()).hexdigest()


def key_out(key: PublishableKey) -> PublishableKeyOut:
    return PublishableKeyOut(
        id=key.id,
        name=key.name,
        key=key.key,
        agent_ids=list(key.agent_ids),
        allowed_origins=list(key.allowed_origins),
        visitor_conversations_per_hour=key.visitor_conversations_per_hour,
        active=key.revoked_at is None,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
    )


class PublishableKeyService:
    def __init__(self, session: Session) -> None:
        self.session = session

    # -- the account's own management (secret key) ---------------------------------------------------------------
    def create(self, account_id: str, body: PublishableKeyCreate) -> PublishableKey:
        owned = set(
            self.session.scalars(select(Agent.id).where(Agent.account_id == account_id, Agent.id.in_(body.agent_ids)))
        )
        for agent_id in body.agent_ids:
            if agent_id not in owned:  # another account's agent is exactly as unknown as a missing one
                raise NotFoundError("agent", agent_id)
        key = PublishableKey(
            id=new_id("pkey"),
            account_id=account_id,
            name=body.name,
            key=generate_publishable_key(),
            agent_ids=body.agent_ids,
            allowed_origins=body.allowed_origins,
            visitor_conversations_per_hour=body.visitor_conversations_per_hour,
            created_at=utcnow(),
        )
        self.session.add(key)
        self.session.flush()
        return key

    def list(self, account_id: str) -> list[PublishableKey]:
        return list(
            self.session.scalars(
                select(PublishableKey).where(PublishableKey.account_id == account_id).order_by(PublishableKey.id)
            )
        )

    def revoke(self, account_id: str, key_id: str) -> PublishableKey:
        key = self.session.scalar(
            select(PublishableKey).where(PublishableKey.id == key_id, PublishableKey.account_id == account_id)
        )
        if key is None:
            raise NotFoundError("publishable_key", key_id)
        if key.revoked_at is None:
            key.revoked_at = utcnow()
        return key

    # -- what a key allows (the widget) --------------------------------------------------------------------------
    def for_origin(self, raw_key: str, origin: str | None, *, lock: bool = False) -> PublishableKey:
        """The active key, when ``origin`` is one it names; else 401 (unknown or revoked key) or 403 (origin)."""
        query = select(PublishableKey).where(PublishableKey.key == raw_key)
        if lock:  # serialises the rate-limit check of one key's starts (PostgreSQL; SQLite writes one at a time)
            query = query.with_for_update()
        key = self.session.scalar(query) if is_publishable_key(raw_key) else None
        if key is None or key.revoked_at is not None:
            raise UnauthorizedError("invalid or revoked publishable key", code="invalid_publishable_key")
        try:
            normalised = normalise_origin(origin or "")
        except ValueError:
            normalised = None
        if normalised is None or normalised not in key.allowed_origins:
            raise ForbiddenError("this publishable key is not allowed on this web origin", code="origin_not_allowed")
        return key

    def check_start(self, key: PublishableKey, agent_id: str, visitor: str) -> Account:
        """Before a visitor's conversation starts: the agent is one of the key's, the account is active and the
        visitor is within the key's hourly limit (429 with Retry-After)."""
        if agent_id not in key.agent_ids:
            raise ForbiddenError("this publishable key cannot call that agent", code="agent_not_allowed")
        account = self.session.get(Account, key.account_id)
        if account is None or account.status != "active":
            raise UnauthorizedError("account is not active")
        since = utcnow() - RATE_WINDOW
        count, oldest = self.session.execute(
            select(func.count(), func.min(WidgetConversation.created_at)).where(
                WidgetConversation.publishable_key_id == key.id,
                WidgetConversation.visitor == visitor,
                WidgetConversation.created_at > since,
            )
        ).one()
        if count >= key.visitor_conversations_per_hour:
            retry_after = max(1.0, ((oldest + RATE_WINDOW) - utcnow()).total_seconds()) if oldest else 60.0
            raise RateLimitedError(
                f"at most {key.visitor_conversations_per_hour} calls per visitor per hour",
                retry_after=retry_after,
                details={
                    "limit": key.visitor_conversations_per_hour,
                    "window_seconds": int(RATE_WINDOW.total_seconds()),
                },
            )
        return account

    def record_start(self, key: PublishableKey, conversation_id: str, visitor: str, origin: str) -> None:
        self.session.add(
            WidgetConversation(
                id=new_id("wcv"),
                publishable_key_id=key.id,
                account_id=key.account_id,
                conversation_id=conversation_id,
                visitor=visitor,
                origin=normalise_origin(origin),
                created_at=utcnow(),
            )
        )
        self.session.flush()
