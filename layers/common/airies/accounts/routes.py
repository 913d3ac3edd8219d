from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from airies.accounts.auth import Caller, SessionDep, current_caller
from airies.accounts.models import Account, ApiKey
from airies.accounts.service import AccountService
from airies.core.schemas import StrictModel

router = APIRouter(tags=["accounts"])


class SignupRequest(StrictModel):
    name: str = Field(min_length=1, max_length=200)
    email: str = Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class AccountOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    email: str
    plan: str
    status: str
    created_at: datetime


class ApiKeyOut(BaseModel):
    id: str
    name: str
    masked_key: str
    created_at: datetime
    revoked_at: datetime | None
    active: bool


class ApiKeyCreate(StrictModel):
    name: str = Field("api key", min_length=1, max_length=100)


def account_out(account: Account) -> AccountOut:
    return AccountOut.model_validate(account)


def key_out(key: ApiKey) -> ApiKeyOut:
    return ApiKeyOut(
        id=key.id,
        name=key.name,
        masked_key=f"{key.prefix}…{key.last4}",
        created_at=key.created_at,
        revoked_at=key.revoked_at,
        active=key.revoked_at is None,
    )


@router.post("/accounts", status_code=201)
def signup(body: SignupRequest, request: Request, session: Session = SessionDep) -> dict[str, object]:
    """Create an account and its first API key (shown once). Open to anyone while public sign-up is on."""
    service = AccountService(session, allow_public_signup=request.app.state.settings.allow_public_signup)
    account, issued = service.signup(name=body.name, email=str(body.email))
    return {
        "account": account_out(account).model_dump(mode="json"),
        "api_key": issued.raw_key,
        "api_key_id": issued.record.id,
    }


@router.get("/accounts/me")
def me(caller: Caller = Depends(current_caller)) -> AccountOut:
    """The caller's account."""
    return account_out(caller.account)


@router.get("/api-keys")
def list_keys(caller: Caller = Depends(current_caller)) -> dict[str, list[ApiKeyOut]]:
    """The account's API keys (masked: prefix and last four characters)."""
    keys = AccountService(caller.session).list_keys(caller.account_id)
    return {"data": [key_out(key) for key in keys]}


@router.post("/api-keys", status_code=201)
def create_key(body: ApiKeyCreate, caller: Caller = Depends(current_caller)) -> dict[str, object]:
    """Create an API key; the full key is in this response only."""
    issued = AccountService(caller.session).create_key(caller.account_id, name=body.name)
    return {**key_out(issued.record).model_dump(mode="json"), "api_key": issued.raw_key}


@router.delete("/api-keys/{key_id}", status_code=204)
def revoke_key(key_id: str, caller: Caller = Depends(current_caller)) -> Response:
    """Revoke an API key: it stops authenticating at once."""
    AccountService(caller.session).revoke_key(caller.account_id, key_id)
    return Response(status_code=204)
