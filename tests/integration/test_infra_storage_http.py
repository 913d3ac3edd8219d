"""StorageService against moto's server over real HTTP: presigned GET and presigned POST (browser upload)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from airies.core.storage import StorageService

BUCKET = "airies-http-storage"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def storage(endpoint: str) -> StorageService:
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=endpoint)
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    return StorageService(BUCKET, region="us-east-1", endpoint_url=endpoint)


def test_presigned_get_downloads_over_http(storage: StorageService) -> None:
    storage.upload_bytes("acc_1", "recordings/r.wav", b"RIFFdata", content_type="audio/wav")
    url = storage.presigned_get_url("acc_1", "recordings/r.wav", expires_in=120)
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == b"RIFFdata"
    tampered = url.replace("acc_1", "acc_2")
    assert httpx.get(tampered).status_code in (403, 404)


def test_presigned_post_uploads_to_the_scoped_key(storage: StorageService) -> None:
    post = storage.presigned_post("acc_1", "uploads/notes.txt", max_bytes=1024, content_type="text/plain")
    response = httpx.post(post.url, data=post.fields, files={"file": ("notes.txt", b"hello", "text/plain")})
    assert response.status_code in (200, 201, 204), response.text
    assert storage.download("acc_1", "uploads/notes.txt") == b"hello"
    assert [o.key for o in storage.list("acc_1", "uploads/")] == ["uploads/notes.txt"]
