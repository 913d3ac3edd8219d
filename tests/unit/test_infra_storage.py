"""StorageService on moto (mock_aws): account scoping, object lifecycle, listing, presigning, bad keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import boto3
import pytest
from moto import mock_aws

from airies.core.config import Settings
from airies.core.errors import BadRequestError, NotFoundError
from airies.core.storage import StorageService

BUCKET = "airies-test-storage"


@pytest.fixture
def storage(monkeypatch: pytest.MonkeyPatch) -> Iterator[StorageService]:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield StorageService(BUCKET, region="us-east-1")


def test_upload_download_delete_under_the_account_prefix(storage: StorageService) -> None:
    storage.upload_bytes("acc_1", "recordings/call 1.wav", b"RIFF....", content_type="audio/wav")
    raw = boto3.client("s3", region_name="us-east-1").get_object(
        Bucket=BUCKET, Key="accounts/acc_1/recordings/call 1.wav"
    )
    assert raw["Body"].read() == b"RIFF...."
    assert raw["ContentType"] == "audio/wav"
    assert storage.download("acc_1", "recordings/call 1.wav") == b"RIFF...."
    head = storage.head("acc_1", "recordings/call 1.wav")
    assert head.size == 8 and head.content_type == "audio/wav"
    storage.delete("acc_1", "recordings/call 1.wav")
    storage.delete("acc_1", "recordings/call 1.wav")  # idempotent
    assert not storage.exists("acc_1", "recordings/call 1.wav")
    with pytest.raises(NotFoundError):
        storage.download("acc_1", "recordings/call 1.wav")


def test_accounts_never_see_each_other(storage: StorageService) -> None:
    storage.upload_bytes("acc_a", "docs/a.txt", b"a")
    storage.upload_bytes("acc_b", "docs/b.txt", b"b")
    storage.upload_bytes("acc_ab", "docs/c.txt", b"c")  # prefix of acc_a? no: the prefix ends with a slash
    assert [o.key for o in storage.list("acc_a")] == ["docs/a.txt"]
    assert [o.key for o in storage.list("acc_b", "docs/")] == ["docs/b.txt"]
    with pytest.raises(NotFoundError):
        storage.download("acc_a", "docs/b.txt")


def test_list_pages_prefixes_and_limits(storage: StorageService) -> None:
    for index in range(1005):  # more than one list_objects_v2 page
        storage.upload_bytes("acc_1", f"kb/doc-{index:04d}.txt", b"x")
    storage.upload_bytes("acc_1", "other/z.txt", b"z")
    assert len(storage.list("acc_1", "kb/")) == 1005
    assert [o.key for o in storage.list("acc_1", "other")] == ["other/z.txt"]
    assert len(storage.list("acc_1", limit=3)) == 3
    assert storage.delete_prefix("acc_1", "kb/") == 1005
    assert [o.key for o in storage.list("acc_1")] == ["other/z.txt"]


def test_upload_and_download_files(storage: StorageService, tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(b"\x00\x01" * 1000)
    storage.upload_file("acc_1", "files/in.bin", source)
    with source.open("rb") as handle:
        storage.upload_file("acc_1", "files/copy.bin", handle)
    target = storage.download_file("acc_1", "files/copy.bin", tmp_path / "out.bin")
    assert target.read_bytes() == source.read_bytes()
    with pytest.raises(NotFoundError):
        storage.download_file("acc_1", "files/missing.bin", tmp_path / "missing.bin")


@pytest.mark.parametrize("key", ["", "/abs", "../escape", "a/../../b", "a//b", "./a", "bad\nkey", "x" * 901])
def test_bad_keys_are_rejected(storage: StorageService, key: str) -> None:
    with pytest.raises(BadRequestError):
        storage.upload_bytes("acc_1", key, b"x")


@pytest.mark.parametrize("account_id", ["", "a/b", ".."])
def test_bad_account_ids_are_rejected(storage: StorageService, account_id: str) -> None:
    with pytest.raises(BadRequestError):
        storage.list(account_id)


def test_presigned_urls_are_scoped_and_bounded(storage: StorageService) -> None:
    url = storage.presigned_get_url("acc_1", "r/a.wav", expires_in=60, download_name="a.wav")
    parsed = urlparse(url)
    assert parsed.path.endswith("/accounts/acc_1/r/a.wav")
    query = parse_qs(parsed.query)
    assert query["X-Amz-Expires"] == ["60"]
    assert "attachment" in query["response-content-disposition"][0]
    post = storage.presigned_post("acc_1", "uploads/doc.pdf", max_bytes=1000, content_type="application/pdf")
    assert post.fields["key"] == "accounts/acc_1/uploads/doc.pdf"
    assert post.fields["Content-Type"] == "application/pdf"
    assert "policy" in post.fields
    with pytest.raises(BadRequestError):
        storage.presigned_get_url("acc_1", "a", expires_in=8 * 24 * 3600)
    with pytest.raises(BadRequestError):
        storage.presigned_post("acc_1", "a", max_bytes=0)


def test_from_settings_uses_the_configured_bucket(storage: StorageService) -> None:
    service = StorageService.from_settings(Settings(storage_bucket=BUCKET))
    service.upload_bytes("acc_1", "k", b"v")
    assert storage.download("acc_1", "k") == b"v"
    with pytest.raises(ValueError):
        StorageService("")
