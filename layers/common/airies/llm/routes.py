"""Routes of the llm capability: provider status, LLM models, an account's own provider keys and its own
OpenAI-compatible endpoints."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import Field

from airies.accounts.auth import Caller, current_caller
from airies.accounts.provider_keys import PROVIDER_KINDS, STATUS_REPORTERS, ProviderKeyService
from airies.core.aio import run_sync
from airies.core.schemas import StrictModel
from airies.llm.custom_endpoints import CustomEndpointService, endpoint_out
from airies.llm.service import build_llm_service

router = APIRouter(tags=["llm"])


class ProviderKeyIn(StrictModel):
    api_key: str = Field(min_length=1, max_length=4096)
    # Azure Speech only: the region the key belongs to (stored encrypted with the key, never returned).
    region: str | None = Field(None, min_length=2, max_length=40, pattern=r"^[a-z][a-z0-9]+$")
    # Pinecone only: the account's own index (its key belongs to its own Pinecone project).
    index_host: str | None = Field(None, min_length=4, max_length=255, pattern=r"^(https?://)?[A-Za-z0-9.\-]+(:\d+)?$")


ENDPOINT_NAME = r"^[a-z0-9][a-z0-9-]{0,31}$"
API_KEY = r"^\S+$"


class CustomEndpointIn(StrictModel):
    # Agents select the endpoint as provider "custom:<name>", so the name never changes.
    name: str = Field(min_length=1, max_length=32, pattern=ENDPOINT_NAME)
    base_url: str = Field(min_length=8, max_length=2048)
    api_key: str | None = Field(None, min_length=1, max_length=4096, pattern=API_KEY)  # None: it takes no key
    model_class: Literal["fast", "smart"] = "fast"  # the routing class of its models
    stream_usage: bool = True  # false for servers that reject stream_options (usage is then estimated)


class CustomEndpointUpdate(StrictModel):
    base_url: str | None = Field(None, min_length=8, max_length=2048)
    api_key: str | None = Field(None, min_length=1, max_length=4096, pattern=API_KEY)  # null removes the key
    model_class: Literal["fast", "smart"] | None = None
    stream_usage: bool | None = None


@router.get("/providers")
def list_providers(request: Request, caller: Caller = Depends(current_caller)) -> dict[str, Any]:
    """Every vendor the platform can use, by kind, and whether the platform or the account has a key."""
    settings, database = request.app.state.settings, request.app.state.database
    account_keys = {row["provider"] for row in ProviderKeyService(caller.session, settings).list(caller.account_id)}
    rows: list[dict[str, Any]] = []
    llm = build_llm_service(settings, database, caller.account_id)
    if llm.router.tracker.due():  # a fresh container: show the shared figures, not an empty local view
        llm.router.tracker.sync()
    rows.extend(llm.get_provider_status())
    reported = {row["provider"] for row in rows}
    for vendor in ("openai", "groq", "deepinfra"):
        if vendor not in reported:
            rows.append({"provider": vendor, "kind": "llm", "configured": False, "status": "not_configured"})
    for kind, reporter in STATUS_REPORTERS.items():
        if kind == "llm":
            continue
        rows.extend(reporter(settings))
    reported = {row["provider"] for row in rows}
    for provider, kind in sorted(PROVIDER_KINDS.items()):
        if provider not in reported:
            # The capability owning this vendor has not registered a status reporter: say so, invent nothing.
            rows.append({"provider": provider, "kind": kind, "configured": None, "status": "unknown"})
    for row in rows:
        row["account_key"] = row["provider"] in account_keys
    return {"data": rows}


@router.get("/llm/models")
def list_models(
    request: Request,
    caller: Caller = Depends(current_caller),
    provider: str | None = Query(None, max_length=40),
    model_class: str | None = Query(None, max_length=40),
) -> dict[str, Any]:
    """The LLM models an agent may use, with prices."""
    llm = build_llm_service(request.app.state.settings, request.app.state.database, caller.account_id)
    models = llm.get_available_models()
    if provider:
        models = [m for m in models if m["provider"] == provider]
    if model_class:
        models = [m for m in models if m["model_class"] == model_class]
    by_provider: dict[str, list[str]] = {}
    for model in models:
        by_provider.setdefault(model["provider"], []).append(model["model"])
    return {"data": models, "providers": by_provider, "offline": llm.offline}


@router.get("/provider-keys")
def list_provider_keys(request: Request, caller: Caller = Depends(current_caller)) -> dict[str, Any]:
    """The account's own vendor keys (masked)."""
    return {"data": ProviderKeyService(caller.session, request.app.state.settings).list(caller.account_id)}


@router.put("/provider-keys/{provider}")
def put_provider_key(
    provider: str, body: ProviderKeyIn, request: Request, caller: Caller = Depends(current_caller)
) -> dict[str, Any]:
    """Save the account's own key for a vendor after the vendor accepted it."""
    service = ProviderKeyService(caller.session, request.app.state.settings)
    service.kind_of(provider)  # 404 before any outbound call
    options = service.check_options(provider, body.model_dump(include={"region", "index_host"}, exclude_none=True))
    run_sync(service.validate, provider, body.api_key, options)
    return service.store(caller.account_id, provider, body.api_key, options)


@router.delete("/provider-keys/{provider}", status_code=204)
def delete_provider_key(provider: str, request: Request, caller: Caller = Depends(current_caller)) -> Response:
    """Delete the account's key for a vendor."""
    ProviderKeyService(caller.session, request.app.state.settings).delete(caller.account_id, provider)
    return Response(status_code=204)


def custom_endpoints(request: Request, caller: Caller) -> CustomEndpointService:
    return CustomEndpointService(caller.session, request.app.state.settings)


@router.post("/llm/custom-endpoints", status_code=201)
def create_custom_endpoint(
    body: CustomEndpointIn, request: Request, caller: Caller = Depends(current_caller)
) -> dict[str, Any]:
    """Add an OpenAI-compatible endpoint of the account's own (its models are listed from it)."""
    row = custom_endpoints(request, caller).create(caller.account_id, **body.model_dump())
    return endpoint_out(row)


@router.get("/llm/custom-endpoints")
def list_custom_endpoints(request: Request, caller: Caller = Depends(current_caller)) -> dict[str, Any]:
    """The account's own LLM endpoints."""
    return {"data": [endpoint_out(row) for row in custom_endpoints(request, caller).list(caller.account_id)]}


@router.get("/llm/custom-endpoints/{endpoint_id}")
def get_custom_endpoint(endpoint_id: str, request: Request, caller: Caller = Depends(current_caller)) -> dict[str, Any]:
    """One custom LLM endpoint."""
    return endpoint_out(custom_endpoints(request, caller).get(caller.account_id, endpoint_id))


@router.patch("/llm/custom-endpoints/{endpoint_id}")
def update_custom_endpoint(
    endpoint_id: str, body: CustomEndpointUpdate, request: Request, caller: Caller = Depends(current_caller)
) -> dict[str, Any]:
    """Change a custom LLM endpoint (its models are listed again)."""
    changes = body.model_dump(exclude_unset=True)
    if changes.get("base_url") is None:
        changes.pop("base_url", None)
    return endpoint_out(custom_endpoints(request, caller).update(caller.account_id, endpoint_id, changes))


@router.delete("/llm/custom-endpoints/{endpoint_id}", status_code=204)
def delete_custom_endpoint(endpoint_id: str, request: Request, caller: Caller = Depends(current_caller)) -> Response:
    """Delete a custom LLM endpoint."""
    users_of = request.app.state.endpoint_users  # the agents capability's answer, wired by the API edge
    custom_endpoints(request, caller).delete(caller.account_id, endpoint_id, users_of=users_of)
    return Response(status_code=204)
