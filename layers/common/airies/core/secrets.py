"""Platform secrets and envelope encryption of account secrets.

``get_platform_secret(name)``: the platform's own vendor keys (``openai_api_key``, ``deepgram_api_key``, ...).
  * locally: the environment variable ``AIRIES_<NAME>`` (e.g. ``AIRIES_OPENAI_API_KEY``);
  * on AWS (``stage != "local"``) with ``AIRIES_PROVIDER_KEYS_SECRET_NAME`` set (one source or several,
    comma-separated, first hit wins): a source starting with ``/`` is an SSM path and the value is the SecureString
    parameter ``<path>/<name>``; otherwise it is a Secrets Manager secret holding a JSON object ``{name: value}``. Both go through Powertools Parameters (cached 5 min),
    so a warm container makes no AWS call. The environment variable still wins when set (break-glass).

``EnvelopeCipher``: encrypts account-owned secrets (their own provider keys). Every value gets a fresh 256-bit
data key (AES-GCM); on AWS (``stage != "local"``) the data key is wrapped by KMS (``GenerateDataKey``/``Decrypt``
with an encryption context; ``AIRIES_PROVIDER_KEYS_KMS_KEY_ID`` is required there), locally by a master key file
``<data_dir>/provider_keys.key`` (created on first use, mode 0600). The associated data binds a ciphertext to its row, so swapping ciphertexts
between accounts fails to decrypt.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airies.core import aws
from airies.core.config import Settings, get_settings

SECRET_CACHE_SECONDS = 300
log = logging.getLogger(__name__)


def platform_key(settings: Settings, name: str, *fallbacks: str) -> str | None:
    """The platform's own key for a vendor: the Settings field ``name`` (e.g. ``openai_api_key``), then each of
    ``fallbacks`` (fields named the same way), then the platform secret of each name in that order.

    An unreachable secret store means "not configured" (the caller falls back or answers that the vendor has no
    key), never a failed request; it is logged.
    """
    names = (name, *fallbacks)
    for field in names:
        value = getattr(settings, field, None)
        if value:
            return str(value)
    for secret_name in names:
        try:
            secret = get_platform_secret(secret_name, settings)
        except Exception:
            log.warning("platform secret %s could not be read", secret_name, exc_info=True)
            secret = None
        if secret:
            return secret
    return None


def get_platform_secret(name: str, settings: Settings | None = None) -> str | None:
    settings = settings or get_settings()
    env_value = os.environ.get(f"AIRIES_{name.upper()}")
    if env_value:
        return env_value
    if not settings.on_aws or not settings.provider_keys_secret_name:
        return None
    from aws_lambda_powertools.utilities.parameters import GetParameterError  # boto3: only on AWS

    # Several sources may be listed, comma-separated (e.g. "airies/provider-keys,airies/billing"): first hit wins.
    for source in (part.strip() for part in settings.provider_keys_secret_name.split(",")):
        if not source:
            continue
        value: object = None
        try:
            if source.startswith("/"):
                path = f"{source.rstrip('/')}/{name}"
                value = aws.ssm_provider().get(path, decrypt=True, max_age=SECRET_CACHE_SECONDS)
            else:
                secret = aws.secrets_provider().get(source, transform="json", max_age=SECRET_CACHE_SECONDS)
                value = secret.get(name) if isinstance(secret, dict) else None
        except GetParameterError:
            continue
        if value:
            return str(value)
    return None


class DecryptionError(Exception):
    """A sealed value could not be opened: wrong context (row), wrong key file or KMS key, or tampered data."""


@dataclass(frozen=True)
class Sealed:
    ciphertext: str  # base64(nonce || AES-GCM ciphertext+tag)
    encrypted_data_key: str  # base64 of the wrapped data key
    key_ref: str  # "kms:<key id>" or "local"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


class EnvelopeCipher:
    def __init__(self, settings: Settings, *, kms_client: Any = None) -> None:
        self.settings = settings
        # KMS on AWS only: locally the template still resolves the key's name, but no such key exists (moto or not).
        self.kms_key_id = settings.provider_keys_kms_key_id if settings.on_aws else None
        self._kms = kms_client
        self._master: bytes | None = None
        self._lock = threading.Lock()
        # Unwrapped data keys, so a warm container decrypts an account's key without a KMS call.
        self._data_keys: dict[str, bytes] = {}

    # -- key wrapping ---------------------------------------------------------------------------
    def _kms_client(self) -> Any:
        if self._kms is None:
            import boto3

            self._kms = boto3.client(
                "kms", region_name=self.settings.aws_region, endpoint_url=self.settings.aws_endpoint_url
            )
        return self._kms

    def _master_key(self) -> bytes:
        if self._master is None:
            with self._lock:
                path = Path(self.settings.data_dir) / "provider_keys.key"
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "w") as handle:
                        handle.write(_b64(os.urandom(32)))
                self._master = _unb64(path.read_text().strip())
        return self._master

    def _new_data_key(self, context: dict[str, str]) -> tuple[bytes, bytes, str]:
        if self.kms_key_id:
            out = self._kms_client().generate_data_key(
                KeyId=self.kms_key_id, KeySpec="AES_256", EncryptionContext=context
            )
            return out["Plaintext"], out["CiphertextBlob"], f"kms:{self.kms_key_id}"
        if self.settings.on_aws:
            raise RuntimeError("AIRIES_PROVIDER_KEYS_KMS_KEY_ID is required on AWS")
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        data_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(12)
        wrapped = nonce + AESGCM(self._master_key()).encrypt(nonce, data_key, _aad(context))
        return data_key, wrapped, "local"

    def _unwrap(self, wrapped: bytes, key_ref: str, context: dict[str, str]) -> bytes:
        cache_key = _b64(wrapped)
        cached = self._data_keys.get(cache_key)
        if cached is not None:
            return cached
        if key_ref.startswith("kms:"):
            data_key = self._kms_client().decrypt(CiphertextBlob=wrapped, EncryptionContext=context)["Plaintext"]
        else:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            data_key = AESGCM(self._master_key()).decrypt(wrapped[:12], wrapped[12:], _aad(context))
        self._data_keys[cache_key] = data_key
        return data_key

    # -- public ---------------------------------------------------------------------------------
    def seal(self, plaintext: str, context: dict[str, str]) -> Sealed:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        data_key, wrapped, key_ref = self._new_data_key(context)
        nonce = os.urandom(12)
        ciphertext = AESGCM(data_key).encrypt(nonce, plaintext.encode("utf-8"), _aad(context))
        return Sealed(ciphertext=_b64(nonce + ciphertext), encrypted_data_key=_b64(wrapped), key_ref=key_ref)

    def open(self, sealed: Sealed, context: dict[str, str]) -> str:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            data_key = self._unwrap(_unb64(sealed.encrypted_data_key), sealed.key_ref, context)
            raw = _unb64(sealed.ciphertext)
            return AESGCM(data_key).decrypt(raw[:12], raw[12:], _aad(context)).decode("utf-8")
        except Exception as exc:  # InvalidTag, KMS InvalidCiphertextException, bad base64
            raise DecryptionError(f"cannot decrypt ({type(exc).__name__})") from exc


def _aad(context: dict[str, str]) -> bytes:
    return "|".join(f"{key}={context[key]}" for key in sorted(context)).encode("utf-8")


_ciphers: dict[tuple[str, str | None], EnvelopeCipher] = {}


def get_cipher(settings: Settings) -> EnvelopeCipher:
    """One cipher per (data dir, KMS key) per container, so unwrapped data keys stay cached."""
    key = (str(settings.data_dir), settings.provider_keys_kms_key_id)
    if key not in _ciphers:
        _ciphers[key] = EnvelopeCipher(settings)
    return _ciphers[key]
