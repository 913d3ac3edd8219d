"""Provider-key vendors composed at the edge: accounts keeps the table of key validators and provider status rows
but imports no capability, so the API adds every vendor from its capability's table: Pinecone and Stripe from their
vendor modules, the LLM and voice vendors from their capabilities' key-probe tables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from airies.accounts import provider_keys
from airies.accounts.provider_keys import ProviderKeyValidator
from airies.billing.vendors import stripe
from airies.core.config import Settings
from airies.knowledge.vector_stores import pinecone
from airies.llm.service import KEY_VALIDATORS as LLM_KEY_VALIDATORS
from airies.llm.service import llm_provider_status
from airies.voice.factory import KEY_VALIDATORS as VOICE_KEY_VALIDATORS
from airies.voice.factory import voice_provider_status

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
    for name, llm_validator in LLM_KEY_VALIDATORS.items():
        provider_keys.register_key_validator(name, llm_validator, kind="llm")
    provider_keys.register_provider_status("llm", llm_provider_status)
    for name, (voice_validator, kind) in VOICE_KEY_VALIDATORS.items():
        provider_keys.register_key_validator(name, voice_validator, kind=kind)
    provider_keys.register_provider_status("voice", voice_provider_status)
