"""Provider-key vendors composed at the edge: accounts keeps the table of key validators and provider status rows
but imports no capability, so the API adds the vendors whose capability has no service on the API path (Pinecone,
Stripe) from their vendor modules. LLM and voice vendors come with their capabilities' services."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from airies.accounts import provider_keys
from airies.accounts.provider_keys import ProviderKeyValidator
from airies.billing.vendors import stripe
from airies.core.config import Settings
from airies.knowledge.vector_stores import pinecone

# provider, kind, key validator, status rows for GET /providers
EDGE_KEY_VENDORS: tuple[tuple[str, str, ProviderKeyValidator, Callable[[Settings], list[dict[str, Any]]]], ...] = (
    ("pinecone", "vectors", pinecone.validate_key, pinecone.provider_status),
    ("stripe", "payments", stripe.validate_key, stripe.provider_status),
)


def install_provider_key_vendors() -> None:
    """Add the edge's vendors to accounts' tables (idempotent: every app build may call it)."""
    for provider, kind, validate, status in EDGE_KEY_VENDORS:
        provider_keys.register_key_validator(provider, validate, kind=kind)
        provider_keys.register_provider_status(kind, status)
