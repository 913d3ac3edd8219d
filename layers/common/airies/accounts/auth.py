"""FastAPI dependencies: the per-request unit of work and the authenticated account."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from airies.accounts.models import Account
from airies.accounts.service import AccountService
from airies.core.config import Settings
from airies.core.database import Database


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Database:
    return request.app.state.database


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.database.session() as session:
        yield session


# scope="function": the unit of work commits when the endpoint returns, before the response is sent, so a client
# that acts on a response (a new key, a new agent) always finds its write committed.
SessionDep = Depends(get_session, scope="function")


@dataclass(frozen=True)
class Caller:
    account: Account
    session: Session
    settings: Settings

    @property
    def account_id(self) -> str:
        return self.account.id


def authenticate(request: Request, session: Session) -> Caller:
    """The caller behind ``Authorization: Bearer <key>``; 401 without a valid key."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    account = AccountService(session).authenticate(token.strip() if scheme.lower() == "bearer" else None)
    request.state.account_id = account.id
    logger = getattr(request.app.state, "logger", None)
    if logger is not None:
        logger.append_keys(account_id=account.id)
    return Caller(account=account, session=session, settings=request.app.state.settings)


def current_caller(request: Request, session: Session = SessionDep) -> Caller:
    return authenticate(request, session)
