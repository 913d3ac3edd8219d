"""Accounts and API keys: signup, key lifecycle, authentication."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from airies.accounts.models import Account, ApiKey
from airies.core.errors import ConflictError, ForbiddenError, NotFoundError, UnauthorizedError
from airies.core.ids import new_id
from airies.core.models import utcnow

KEY_PREFIX = "ak_live_"


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class IssuedKey:
    record: ApiKey
    raw_key: str  # shown once, never stored


class AccountService:
    def __init__(self, session: Session, *, allow_public_signup: bool = True) -> None:
        self.session = session
        self.allow_public_signup = allow_public_signup

    def signup(
        self, *, name: str, email: str, plan: str = "free", raw_key: str | None = None
    ) -> tuple[Account, IssuedKey]:
        if not self.allow_public_signup:
            raise ForbiddenError("public signup is disabled on this deployment", code="signup_disabled")
        email = email.strip().lower()
        if self.session.scalar(select(Account.id).where(Account.email == email)):
            raise ConflictError("an account with this email already exists", code="email_taken")
        account = Account(id=new_id("acc"), name=name, email=email, plan=plan, status="active")
        self.session.add(account)
        try:
            self.session.flush()
        except IntegrityError as exc:  # a concurrent signup with the same email
            raise ConflictError("an account with this email already exists", code="email_taken") from exc
        issued = self.create_key(account.id, name="default", raw_key=raw_key)
        return account, issued

    def get_account(self, account_id: str) -> Account:
        account = self.session.get(Account, account_id)
        if account is None:
            raise NotFoundError("account", account_id)
        return account

    def create_key(self, account_id: str, *, name: str, raw_key: str | None = None) -> IssuedKey:
        raw_key = raw_key or generate_key()
        record = ApiKey(
            id=new_id("key"),
            account_id=account_id,
            name=name,
            key_hash=hash_key(raw_key),
            prefix=raw_key[:12],
            last4=raw_key[-4:],
            created_at=utcnow(),
        )
        self.session.add(record)
        self.session.flush()
        return IssuedKey(record=record, raw_key=raw_key)

    def list_keys(self, account_id: str) -> list[ApiKey]:
        return list(self.session.scalars(select(ApiKey).where(ApiKey.account_id == account_id).order_by(ApiKey.id)))

    def revoke_key(self, account_id: str, key_id: str) -> ApiKey:
        record = self.session.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.account_id == account_id))
        if record is None:
            raise NotFoundError("api_key", key_id)
        if record.revoked_at is None:
            record.revoked_at = utcnow()
        return record

    def authenticate(self, raw_key: str | None) -> Account:
        """Resolve a bearer key to its active account, or raise 401."""
        if not raw_key:
            raise UnauthorizedError("missing API key: send 'Authorization: Bearer <key>'")
        row = self.session.execute(
            select(ApiKey, Account)
            .join(Account, Account.id == ApiKey.account_id)
            .where(ApiKey.key_hash == hash_key(raw_key))
        ).first()
        if row is None or row.ApiKey.revoked_at is not None:
            raise UnauthorizedError("invalid or revoked API key")
        if row.Account.status != "active":
            raise UnauthorizedError("account is not active")
        return row.Account

    def ensure_dev_account(self, raw_key: str, *, email: str = "dev@airies.local") -> Account:
        """Local stack: an account reachable with a known key (idempotent)."""
        existing = self.session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(raw_key)))
        if existing is not None:
            return self.get_account(existing.account_id)
        account = self.session.scalar(select(Account).where(Account.email == email))
        if account is None:
            account = Account(id=new_id("acc"), name="Local developer", email=email, plan="free", status="active")
            self.session.add(account)
            self.session.flush()
        self.create_key(account.id, name="dev", raw_key=raw_key)
        return account
