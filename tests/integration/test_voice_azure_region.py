"""An account's own Azure Speech key is stored with its region (encrypted, never returned) and used there."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from airies.accounts.models import Account
from airies.accounts.provider_keys import get_account_provider_credentials
from airies.core.config import Settings
from airies.llm.models import ProviderKey
from airies.voice.factory import build_voice_service
from airies.voice.service import clear_voice_cache
from tests.conftest import signup
from tests.doubles.azure_tts_server import AzureTTSServer

ACCOUNT_KEY = "account-azure-key-7777"


@pytest.fixture(scope="module")
def azure():  # type: ignore[no-untyped-def]
    with AzureTTSServer(latency=0, api_key=ACCOUNT_KEY) as server:
        yield server


@pytest.fixture
def settings(tmp_path, azure) -> Settings:  # type: ignore[no-untyped-def]
    clear_voice_cache()
    return Settings(stage="local", data_dir=tmp_path, allow_public_signup=True, azure_speech_base_url=azure.url)


def account_ids(database) -> list[str]:  # type: ignore[no-untyped-def]
    with database.session() as session:
        return list(session.scalars(select(Account.id).order_by(Account.created_at, Account.id)))


def test_azure_key_is_stored_with_its_region_and_used_in_it(client, auth, database, settings, azure):
    put = client.put("/api/v1/provider-keys/azure", json={"api_key": ACCOUNT_KEY, "region": "westeurope"}, headers=auth)
    assert put.status_code == 200, put.text
    assert azure.requests[-1].path == "/cognitiveservices/voices/list"  # validated with the key
    listed = client.get("/api/v1/provider-keys", headers=auth)
    for response in (put, listed):
        assert "westeurope" not in response.text and ACCOUNT_KEY not in response.text
    other = signup(client)
    owner_id, other_id = account_ids(database)
    with database.session() as session:
        row = session.scalars(select(ProviderKey)).one()
        assert "westeurope" not in json.dumps([row.ciphertext, row.encrypted_data_key, row.key_ref, row.hint])
        assert get_account_provider_credentials(session, owner_id, "azure", settings) == (
            ACCOUNT_KEY,
            {"region": "westeurope"},
        )

    # Without a base-URL override (as on AWS) the account's key goes to its own region; the platform key to the
    # platform's region.
    regional = settings.model_copy(
        update={
            "azure_speech_base_url": None,
            "azure_speech_key": "platform-azure-key",
            "azure_speech_region": "eastus",
        }
    )
    with database.session() as session:
        own = build_voice_service(regional, account_id=owner_id, session=session).tts_providers["azure"]
        platform = build_voice_service(regional, account_id=other_id, session=session).tts_providers["azure"]
    assert own.api_key == ACCOUNT_KEY and own.base_url == "https://westeurope.tts.speech.microsoft.com"
    assert platform.api_key == "platform-azure-key" and platform.base_url == "https://eastus.tts.speech.microsoft.com"

    # Replacing the key without a region falls back to the platform's region.
    again = client.put("/api/v1/provider-keys/azure", json={"api_key": ACCOUNT_KEY}, headers=auth)
    assert again.status_code == 200, again.text
    with database.session() as session:
        own = build_voice_service(regional, account_id=owner_id, session=session).tts_providers["azure"]
    assert own.base_url == "https://eastus.tts.speech.microsoft.com"
    assert other  # the second account exists only to be the platform-key user above


@pytest.mark.parametrize(
    ("provider", "body"),
    [
        ("elevenlabs", {"api_key": "some-eleven-key-1", "region": "westeurope"}),  # only Azure keys have a region
        ("azure", {"api_key": ACCOUNT_KEY, "region": "West Europe"}),
        ("azure", {"api_key": ACCOUNT_KEY, "region": "x"}),
    ],
)
def test_region_is_checked_before_any_call(client, auth, azure, provider, body):
    before = len(azure.requests)
    response = client.put(f"/api/v1/provider-keys/{provider}", json=body, headers=auth)
    assert response.status_code == 422, response.text
    assert len(azure.requests) == before
    assert client.get("/api/v1/provider-keys", headers=auth).json()["data"] == []
