"""The local stack's S3 survives a restart: every write through the moto server (StorageService, a browser's
presigned POST, a multipart upload, deletes) is kept under the data dir and put back into a fresh moto."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import httpx
import pytest

from airies.core.storage import StorageService
from airies.local.s3_store import LocalMotoServer, S3Mirror, written_target

BUCKET = "airies-local-kept"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_moto(kept: Path) -> Iterator[str]:
    """A local moto server whose S3 writes are kept in ``kept``; stopping it forgets every object (as a restart of
    ``make run`` does: moto state lives in the process)."""
    server = LocalMotoServer(port=_free_port())
    server.start()
    endpoint = f"http://127.0.0.1:{server.port}"
    try:
        mirror = S3Mirror(kept, endpoint)
        mirror.restore()
        server.mirror = mirror
        yield endpoint
    finally:
        httpx.post(f"{endpoint}/moto-api/reset")
        server.stop()


def _s3(endpoint: str):  # type: ignore[no-untyped-def]
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )  # fmt: skip


def test_objects_written_every_way_survive_a_restart(tmp_path: Path) -> None:
    kept = tmp_path / "s3"
    with running_moto(kept) as endpoint:
        s3 = _s3(endpoint)
        s3.create_bucket(Bucket=BUCKET)
        storage = StorageService(BUCKET, region="us-east-1", endpoint_url=endpoint)
        storage.upload_bytes("acc_1", "knowledge/kb/doc/faq.md", b"# FAQ", content_type="text/markdown")
        s3.put_object(Bucket=BUCKET, Key="recordings/acc_1/conv/0001-caller.wav", Body=b"RIFF....WAVE",
                      ContentType="audio/wav", Metadata={"turn_id": "turn_1"})  # fmt: skip
        post = storage.presigned_post(
            "acc_1", "knowledge/kb/big/manual.pdf", max_bytes=10_000, content_type="application/pdf"
        )
        uploaded = httpx.post(
            post.url, data=post.fields, files={"file": ("manual.pdf", b"%PDF-1.4 body", "application/pdf")}
        )
        assert uploaded.status_code in (200, 201, 204), uploaded.text
        upload = s3.create_multipart_upload(Bucket=BUCKET, Key="exports/été.csv", ContentType="text/csv")
        part = s3.upload_part(
            Bucket=BUCKET, Key="exports/été.csv", UploadId=upload["UploadId"], PartNumber=1, Body=b"a,b\n1,2\n"
        )
        s3.complete_multipart_upload(
            Bucket=BUCKET, Key="exports/été.csv", UploadId=upload["UploadId"],
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
        )  # fmt: skip
        for key in ("tmp/a", "tmp/b", "tmp/c"):
            s3.put_object(Bucket=BUCKET, Key=key, Body=key.encode())
        s3.delete_object(Bucket=BUCKET, Key="tmp/a")
        s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "tmp/b"}]})
        storage.upload_bytes("acc_1", "knowledge/kb/doc/faq.md", b"# FAQ v2", content_type="text/markdown")
        before = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"])

    with running_moto(kept) as endpoint:  # a new process's moto: empty until the kept objects are put back
        s3 = _s3(endpoint)
        assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]) == before
        assert before == [
            "accounts/acc_1/knowledge/kb/big/manual.pdf",
            "accounts/acc_1/knowledge/kb/doc/faq.md",
            "exports/été.csv",
            "recordings/acc_1/conv/0001-caller.wav",
            "tmp/c",
        ]
        storage = StorageService(BUCKET, region="us-east-1", endpoint_url=endpoint)
        assert storage.download("acc_1", "knowledge/kb/doc/faq.md") == b"# FAQ v2"
        assert storage.download("acc_1", "knowledge/kb/big/manual.pdf") == b"%PDF-1.4 body"
        wav = s3.get_object(Bucket=BUCKET, Key="recordings/acc_1/conv/0001-caller.wav")
        assert (wav["Body"].read(), wav["ContentType"], wav["Metadata"]) == (
            b"RIFF....WAVE",
            "audio/wav",
            {"turn_id": "turn_1"},
        )
        assert s3.get_object(Bucket=BUCKET, Key="exports/été.csv")["Body"].read() == b"a,b\n1,2\n"
        assert httpx.get(storage.presigned_get_url("acc_1", "knowledge/kb/doc/faq.md")).content == b"# FAQ v2"
        storage.delete_prefix("acc_1", "knowledge/")
    with running_moto(kept) as endpoint:
        keys = sorted(o["Key"] for o in _s3(endpoint).list_objects_v2(Bucket=BUCKET)["Contents"])
        assert keys == ["exports/été.csv", "recordings/acc_1/conv/0001-caller.wav", "tmp/c"]


@pytest.mark.parametrize(
    ("method", "path", "query", "auth", "target"),
    [
        (
            "PUT",
            "/b/k/x.txt",
            "",
            "AWS4-HMAC-SHA256 Credential=testing/20261206/us-east-1/s3/aws4_request, x",
            ("b", "k/x.txt"),
        ),
        ("DELETE", "/b/k", "", "", ("b", "k")),
        ("POST", "/b", "", "", ("b", "")),  # a presigned POST form: the key is in the body
        ("POST", "/b", "delete", "AWS4-HMAC-SHA256 Credential=testing/20261206/us-east-1/s3/aws4_request", ("b", "")),
        ("PUT", "/b/k", "partNumber=1&uploadId=u", "", None),  # a part is no object yet
        ("GET", "/b/k", "", "", None),
        ("POST", "/", "", "AWS4-HMAC-SHA256 Credential=testing/20261206/us-east-1/sqs/aws4_request", None),
        ("POST", "/moto-api/reset", "", "", None),
    ],
)
def test_which_requests_are_s3_writes(method, path, query, auth, target) -> None:  # type: ignore[no-untyped-def]
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "HTTP_AUTHORIZATION": auth}
    assert written_target(environ) == target
