"""Provider keys of the non-LLM vendors (Pinecone, Stripe) and the concurrent first PUT, on both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from airies.accounts.models import Account
from airies.accounts.provider_keys import ProviderKeyService
from airies.core.config import Settings
from airies.llm.models import ProviderKey
from tests.doubles.pinecone_control_server import PineconeControlDouble
from tests.doubles.stripe_server import StripeInvoiceDouble

PINECONE_KEY = "pc-account-key-0001"
STRIPE_KEY = "sk_test_account_key_0002"


class StripeBalanceDouble(StripeInvoiceDouble):
    """The Stripe double plus ``GET /v1/balance`` (what the key check asks)."""

    def _route(self, method: str, path: str, p: dict) -> tuple[int, dict]:
        if method == "GET" and path == "/v1/balance":
            available = [{"amount": 0, "currency": "usd", "source_types": {"card": 0}}]
            return 200, {"object": "balance", "available": available, "pending": [], "livemode": False}
        return super()._route(method, path, p)


@pytest.fixture
def pinecone_control(monkeypatch):
    with PineconeControlDouble(api_key=PINECONE_KEY) as double:
        monkeypatch.setenv("PINECONE_CONTROLLER_HOST", double.url)  # the SDK's own setting for its control plane
        yield double


@pytest.fixture
def stripe_double():
    double = StripeBalanceDouble(api_key=STRIPE_KEY).start()
    yield double
    double.stop()


@pytest.fixture
def settings(tmp_path, stripe_double) -> Settings:
    return Settings(stage="local", data_dir=tmp_path, allow_public_signup=True, stripe_api_base=stripe_double.url)


def put(client, auth, provider: str, key: str):
    return client.put(f"/api/v1/provider-keys/{provider}", json={"api_key": key}, headers=auth)


def test_pinecone_key_is_validated_by_listing_indexes(client, auth, pinecone_control):
    rejected = put(client, auth, "pinecone", "pc-someone-elses-key")
    assert rejected.status_code == 422, rejected.text
    assert rejected.json()["error"]["details"][0]["code"] == "rejected_by_provider"
    pinecone_control.status = 500
    assert put(client, auth, "pinecone", PINECONE_KEY).status_code == 502  # Pinecone could not be asked
    assert client.get("/api/v1/provider-keys", headers=auth).json()["data"] == []
    pinecone_control.status = None
    ok = put(client, auth, "pinecone", PINECONE_KEY)
    assert ok.status_code == 200, ok.text
    assert ok.json()["kind"] == "vectors" and PINECONE_KEY not in ok.text
    method, path, headers = pinecone_control.requests[-1]
    assert (method, path, headers["api-key"]) == ("GET", "/indexes", PINECONE_KEY)


def test_pinecone_key_limited_to_the_data_plane_is_accepted(client, auth, pinecone_control):
    pinecone_control.status = 403  # a genuine key whose role may not list indexes
    assert put(client, auth, "pinecone", PINECONE_KEY).status_code == 200


def test_stripe_key_is_validated_by_retrieving_the_balance(client, auth, stripe_double):
    rejected = put(client, auth, "stripe", "sk_test_wrong_key_0003")
    assert rejected.status_code == 422, rejected.text
    stripe_double.fail_next("/v1/balance", 503)
    assert put(client, auth, "stripe", STRIPE_KEY).status_code == 502
    assert client.get("/api/v1/provider-keys", headers=auth).json()["data"] == []
    ok = put(client, auth, "stripe", STRIPE_KEY)
    assert ok.status_code == 200, ok.text
    assert ok.json()["kind"] == "payments" and ok.json()["masked_key"] == "****0002"
    assert stripe_double.count("GET", "/v1/balance") == 3


def test_providers_report_pinecone_and_stripe(client, auth, settings):
    rows = {row["provider"]: row for row in client.get("/api/v1/providers", headers=auth).json()["data"]}
    assert rows["pinecone"]["status"] == "not_configured" and rows["pinecone"]["configured"] is False
    assert rows["stripe"]["status"] == "not_configured" and rows["stripe"]["configured"] is False
    settings.stripe_secret_key = "sk_test_platform"
    settings.pinecone_api_key, settings.pinecone_index_host = "pc-platform", "https://idx.example.pinecone.io"
    settings.kb_vector_store = "pinecone"
    response = client.get("/api/v1/providers", headers=auth)
    rows = {row["provider"]: row for row in response.json()["data"]}
    assert rows["stripe"]["configured"] is True and rows["stripe"]["kind"] == "payments"
    assert rows["pinecone"]["configured"] is True and rows["pinecone"]["in_use"] is True
    assert "sk_test_platform" not in response.text and "pc-platform" not in response.text


class LateLookup(ProviderKeyService):
    """A PUT whose lookup ran just before a concurrent first PUT for the same provider committed its row."""

    def __init__(self, *args, competitor, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.competitor = competitor

    def _row(self, account_id: str, provider: str):
        if self.competitor is not None:
            competitor, self.competitor = self.competitor, None
            competitor()
            return None
        return super()._row(account_id, provider)


def test_concurrent_first_put_becomes_an_update(client, auth, database, settings):
    with database.session() as session:
        account_id = session.scalars(select(Account.id)).one()

    def competitor() -> None:
        with database.session() as other:  # commits on exit
            ProviderKeyService(other, settings).store(account_id, "groq", "gsk-the-other-request-1111")

    with database.session() as session:
        service = LateLookup(session, settings, competitor=competitor)
        stored = service.store(account_id, "groq", "gsk-this-request-key-2222")
        assert stored["masked_key"] == "****2222"
        # the unit of work survived the failed INSERT (a savepoint), PostgreSQL included: it goes on and commits
        ProviderKeyService(session, settings).store(account_id, "openai", "sk-another-provider-3333")
    with database.session() as session:
        assert session.scalars(select(ProviderKey.provider).order_by(ProviderKey.provider)).all() == ["groq", "openai"]
        assert ProviderKeyService(session, settings).get(account_id, "groq") == "gsk-this-request-key-2222"


def test_pinecone_key_carries_the_accounts_own_index_host(client, auth, database, settings, pinecone_control):
    from airies.accounts.provider_keys import ProviderKeyService

    host = "https://own-index-abc.svc.example.pinecone.io"
    settings.url_guard_allowed_hosts = "own-index-abc.svc.example.pinecone.io"  # no DNS here to resolve it
    body = {"api_key": PINECONE_KEY, "index_host": host}
    ok = client.put("/api/v1/provider-keys/pinecone", json=body, headers=auth)
    assert ok.status_code == 200, ok.text
    assert host not in ok.text  # options are sealed with the key, never returned
    account_id = client.get("/api/v1/accounts/me", headers=auth).json()["id"]
    with database.session() as session:
        key, options = ProviderKeyService(session, settings).get_with_options(account_id, "pinecone")
    assert (key, options) == (PINECONE_KEY, {"index_host": host})
    wrong = client.put("/api/v1/provider-keys/groq", json={"api_key": "gsk_x", "index_host": host}, headers=auth)
    assert wrong.status_code == 422 and wrong.json()["error"]["details"][0]["field"] == "index_host"
