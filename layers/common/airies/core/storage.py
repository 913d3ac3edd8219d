"""StorageService: S3 objects scoped per account (``accounts/<account_id>/<key>``).

Every method takes the account id and a relative key; callers can never address another account's objects,
and keys that try to climb out of the prefix are rejected. Locally the same code talks to moto (server mode
through AWS_ENDPOINT_URL, or ``mock_aws`` in tests).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from airies.core.errors import BadRequestError, NotFoundError

ACCOUNT_PREFIX = "accounts"
_SAFE_KEY = re.compile(r"^[A-Za-z0-9!_.*'()\-/ =+,@]+$")


@dataclass(frozen=True)
class StoredObject:
    key: str  # relative to the account's prefix
    size: int
    last_modified: datetime
    etag: str
    content_type: str | None = None


@dataclass(frozen=True)
class PresignedPost:
    url: str
    fields: dict[str, str]
    key: str  # relative key the upload will land at
    expires_in: int


def _s3_client(region: str | None = None, endpoint_url: str | None = None) -> Any:
    # Lazy: boto3 costs ~100 ms to import; functions that never store anything must not pay it.
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path" if endpoint_url else "virtual"},
        retries={"max_attempts": 3, "mode": "standard"},
    )
    return boto3.client("s3", region_name=region, endpoint_url=endpoint_url, config=config)


class StorageService:
    def __init__(self, bucket: str, client: Any = None, *, region: str | None = None, endpoint_url: str | None = None):
        if not bucket:
            raise ValueError("StorageService needs a bucket name")
        self.bucket = bucket
        self._client = client
        self._region = region
        self._endpoint_url = endpoint_url

    @classmethod
    def from_settings(cls, settings: Any, client: Any = None) -> StorageService:
        return cls(settings.storage_bucket, client, region=settings.aws_region, endpoint_url=settings.aws_endpoint_url)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _s3_client(self._region, self._endpoint_url)
        return self._client

    # Keys ------------------------------------------------------------------------------------------------------

    @staticmethod
    def account_prefix(account_id: str) -> str:
        if not account_id or "/" in account_id or account_id in (".", ".."):
            raise BadRequestError("invalid account id for storage", code="invalid_storage_key")
        return f"{ACCOUNT_PREFIX}/{account_id}/"

    def full_key(self, account_id: str, key: str) -> str:
        """``accounts/<account_id>/<key>``; rejects empty, absolute, ``..`` and control-character keys."""
        if not key or len(key) > 900 or key.startswith("/") or not _SAFE_KEY.match(key):
            raise BadRequestError(f"invalid storage key {key!r}", code="invalid_storage_key")
        if any(part in ("", ".", "..") for part in key.split("/")):
            raise BadRequestError(f"invalid storage key {key!r}", code="invalid_storage_key")
        return self.account_prefix(account_id) + key

    def relative_key(self, account_id: str, full_key: str) -> str:
        prefix = self.account_prefix(account_id)
        if not full_key.startswith(prefix):
            raise NotFoundError("object", full_key)
        return full_key[len(prefix) :]

    # Objects ---------------------------------------------------------------------------------------------------

    def upload_bytes(
        self,
        account_id: str,
        key: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> str:
        full_key = self.full_key(account_id, key)
        self.client.put_object(
            Bucket=self.bucket, Key=full_key, Body=data, ContentType=content_type, Metadata=metadata or {}
        )
        return key

    def upload_file(
        self,
        account_id: str,
        key: str,
        path: Path | str | BinaryIO,
        *,
        content_type: str = "application/octet-stream",
    ) -> str:
        full_key = self.full_key(account_id, key)
        extra = {"ContentType": content_type}
        if isinstance(path, str | Path):
            self.client.upload_file(str(path), self.bucket, full_key, ExtraArgs=extra)
        else:
            self.client.upload_fileobj(path, self.bucket, full_key, ExtraArgs=extra)
        return key

    def download(self, account_id: str, key: str) -> bytes:
        full_key = self.full_key(account_id, key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=full_key)
        except self.client.exceptions.NoSuchKey as exc:
            raise NotFoundError("object", key) from exc
        return response["Body"].read()

    def download_file(self, account_id: str, key: str, path: Path | str) -> Path:
        full_key = self.full_key(account_id, key)
        if not self.exists(account_id, key):
            raise NotFoundError("object", key)
        self.client.download_file(self.bucket, full_key, str(path))
        return Path(path)

    def head(self, account_id: str, key: str) -> StoredObject:
        full_key = self.full_key(account_id, key)
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=full_key)
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise NotFoundError("object", key) from exc
            raise
        return StoredObject(
            key=key,
            size=int(response["ContentLength"]),
            last_modified=response["LastModified"],
            etag=response["ETag"].strip('"'),
            content_type=response.get("ContentType"),
        )

    def exists(self, account_id: str, key: str) -> bool:
        try:
            self.head(account_id, key)
        except NotFoundError:
            return False
        return True

    def delete(self, account_id: str, key: str) -> None:
        """Idempotent: deleting a missing object is not an error (S3 semantics)."""
        self.client.delete_object(Bucket=self.bucket, Key=self.full_key(account_id, key))

    def delete_prefix(self, account_id: str, prefix: str) -> int:
        """Delete every object under ``prefix`` (e.g. a knowledge base's documents); returns the count."""
        keys = [obj.key for obj in self.iter_objects(account_id, prefix)]
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": self.full_key(account_id, key)} for key in batch], "Quiet": True},
            )
        return len(keys)

    def iter_objects(self, account_id: str, prefix: str = "") -> Iterator[StoredObject]:
        base = self.account_prefix(account_id)
        if prefix:
            base = self.full_key(account_id, prefix.rstrip("/")) + ("/" if prefix.endswith("/") else "")
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
            for item in page.get("Contents", []):
                yield StoredObject(
                    key=self.relative_key(account_id, item["Key"]),
                    size=int(item["Size"]),
                    last_modified=item["LastModified"],
                    etag=item["ETag"].strip('"'),
                )

    def list(self, account_id: str, prefix: str = "", *, limit: int | None = None) -> list[StoredObject]:
        objects = []
        for obj in self.iter_objects(account_id, prefix):
            objects.append(obj)
            if limit is not None and len(objects) >= limit:
                break
        return objects

    # Presigned URLs --------------------------------------------------------------------------------------------

    def presigned_get_url(
        self, account_id: str, key: str, *, expires_in: int = 3600, download_name: str | None = None
    ) -> str:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.full_key(account_id, key)}
        if download_name:
            safe = download_name.replace('"', "")
            params["ResponseContentDisposition"] = f'attachment; filename="{safe}"'
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=_expiry(expires_in))

    def presigned_post(
        self, account_id: str, key: str, *, max_bytes: int, content_type: str | None = None, expires_in: int = 900
    ) -> PresignedPost:
        """A browser upload straight to S3, capped at ``max_bytes`` and pinned to the key (and content type)."""
        if max_bytes <= 0:
            raise BadRequestError("max_bytes must be positive")
        full_key = self.full_key(account_id, key)
        fields: dict[str, str] = {}
        conditions: list[Any] = [["content-length-range", 1, max_bytes]]
        if content_type:
            fields["Content-Type"] = content_type
            conditions.append({"Content-Type": content_type})
        response = self.client.generate_presigned_post(
            Bucket=self.bucket,
            Key=full_key,
            Fields=fields or None,
            Conditions=conditions,
            ExpiresIn=_expiry(expires_in),
        )
        return PresignedPost(url=response["url"], fields=dict(response["fields"]), key=key, expires_in=expires_in)


def _expiry(seconds: int) -> int:
    # SigV4 presigned URLs are valid for at most 7 days.
    if not 1 <= seconds <= 604_800:
        raise BadRequestError("expires_in must be between 1 second and 7 days")
    return seconds
