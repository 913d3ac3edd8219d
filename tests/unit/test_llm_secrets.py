"""Platform secrets (env locally, Secrets Manager / SSM on AWS) and envelope encryption (local key file, KMS)."""

from __future__ import annotations

import json
import os
import stat

import boto3
import pytest
from moto import mock_aws

from airies.core import aws
from airies.core.config import Settings
from airies.core.secrets import DecryptionError, EnvelopeCipher, Sealed, get_platform_secret

CONTEXT = {"account_id": "acc_1", "provider": "groq"}


@pytest.fixture(autouse=True)
def clear_parameter_cache():
    aws.forget_providers()  # each case's secrets, not the previous case's cached values
    yield
    aws.forget_providers()


def test_local_key_file_envelope(tmp_path):
    cipher = EnvelopeCipher(Settings(data_dir=tmp_path))
    sealed = cipher.seal("sk-very-secret", CONTEXT)
    key_file = tmp_path / "provider_keys.key"
    assert key_file.exists() and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "sk-very-secret" not in json.dumps(sealed.__dict__) and sealed.key_ref == "local"
    # a new cipher (a new container) reads the same key file
    assert EnvelopeCipher(Settings(data_dir=tmp_path)).open(sealed, CONTEXT) == "sk-very-secret"
    with pytest.raises(DecryptionError):
        cipher.open(sealed, {**CONTEXT, "account_id": "acc_2"})
    with pytest.raises(DecryptionError):  # another key file cannot open it
        EnvelopeCipher(Settings(data_dir=tmp_path / "other")).open(sealed, CONTEXT)
    assert cipher.seal("sk-very-secret", CONTEXT).ciphertext != sealed.ciphertext  # fresh data key and nonce


@mock_aws
def test_kms_envelope():
    kms = boto3.client("kms", region_name="us-east-1")
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    settings = Settings(stage="prod", provider_keys_kms_key_id=key_id, aws_region="us-east-1")
    cipher = EnvelopeCipher(settings)
    sealed = cipher.seal("sk-kms-secret", CONTEXT)
    assert sealed.key_ref == f"kms:{key_id}"
    fresh = EnvelopeCipher(settings)  # no cached data key: goes to KMS Decrypt with the encryption context
    assert fresh.open(Sealed(**sealed.__dict__), CONTEXT) == "sk-kms-secret"
    with pytest.raises(DecryptionError):
        EnvelopeCipher(settings).open(sealed, {**CONTEXT, "provider": "openai"})


def test_aws_without_kms_key_refuses(tmp_path, monkeypatch):
    monkeypatch.delenv("AIRIES_PROVIDER_KEYS_KMS_KEY_ID", raising=False)
    with pytest.raises(RuntimeError):
        EnvelopeCipher(Settings(stage="prod", data_dir=tmp_path)).seal("x", CONTEXT)


def test_platform_secret_from_env(monkeypatch):
    monkeypatch.setenv("AIRIES_DEEPGRAM_API_KEY", "dg-env")
    assert get_platform_secret("deepgram_api_key", Settings()) == "dg-env"
    assert get_platform_secret("nothing_here", Settings()) is None


@mock_aws
def test_platform_secret_from_secrets_manager(monkeypatch):
    monkeypatch.delenv("AIRIES_OPENAI_API_KEY", raising=False)
    boto3.client("secretsmanager", region_name="us-east-1").create_secret(
        Name="airies/provider-keys", SecretString=json.dumps({"openai_api_key": "sk-from-sm"})
    )
    settings = Settings(stage="prod", provider_keys_secret_name="airies/provider-keys")
    assert get_platform_secret("openai_api_key", settings) == "sk-from-sm"
    assert get_platform_secret("groq_api_key", settings) is None
    assert (
        get_platform_secret("openai_api_key", Settings(stage="local", provider_keys_secret_name="airies/provider-keys"))
        is None
    )


@mock_aws
def test_platform_secret_from_ssm(monkeypatch):
    monkeypatch.delenv("AIRIES_GROQ_API_KEY", raising=False)
    boto3.client("ssm", region_name="us-east-1").put_parameter(
        Name="/airies/prod/groq_api_key", Value="gsk-ssm", Type="SecureString"
    )
    settings = Settings(stage="prod", provider_keys_secret_name="/airies/prod")
    assert get_platform_secret("groq_api_key", settings) == "gsk-ssm"
    assert get_platform_secret("missing_key", settings) is None
    assert os.environ.get("AIRIES_GROQ_API_KEY") is None


@mock_aws
def test_platform_secret_from_several_sources(monkeypatch):
    monkeypatch.delenv("AIRIES_STRIPE_SECRET_KEY", raising=False)
    client = boto3.client("secretsmanager", region_name="us-east-1")
    client.create_secret(Name="airies/provider-keys", SecretString=json.dumps({"openai_api_key": "sk-1"}))
    client.create_secret(Name="airies/billing", SecretString=json.dumps({"stripe_secret_key": "sk_test_2"}))
    settings = Settings(stage="prod", provider_keys_secret_name="airies/missing, airies/provider-keys,airies/billing")
    assert get_platform_secret("openai_api_key", settings) == "sk-1"
    assert get_platform_secret("stripe_secret_key", settings) == "sk_test_2"
    assert get_platform_secret("nothing", settings) is None
