"""Local stack (``make run``): S3 objects that survive a restart, kept under ``<data dir>/s3``.

moto keeps S3 in memory, while the local database (SQLite under ``.data`` or PostgreSQL) survives a restart: the rows
of uploaded documents and conversation recordings then pointed at objects that were gone. Every client still talks
S3 to the moto server (presigned POSTs from a browser, bucket notifications to the ingestion queue, the recorder's
boto3 client, ``StorageService``), exactly as on AWS; this module only keeps a copy of what moto holds:

- :class:`LocalMotoServer` serves moto like ``ThreadedMotoServer`` and, once a mirror is attached, hands every S3
  request that may have written an object (``PUT``, ``POST``, ``DELETE``) to it before the response leaves, so an
  upload the client saw succeed is on disk.
- :class:`S3Mirror` reconciles the written bucket (or just the written key's prefix) with its copy through the S3 API
  itself: new and changed objects (by ETag) are written, deleted ones removed. At start, before any bucket
  notification is configured, :meth:`S3Mirror.restore` puts the kept objects back (no ingestion event fires).

Layout: ``<root>/<bucket>/<sha256 of key>.bin`` (the bytes) and ``.json`` (key, ETag, content type, user metadata),
both written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from airies.local.moto_lock import MOTO_LOCK

WRITE_METHODS = ("PUT", "POST", "DELETE")


def _service_of_request(environ: dict[str, Any]) -> str:
    """The SigV4 service a request is signed for ("s3" for unsigned and presigned-POST ones: moto's default too)."""
    credential = ""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if "Credential=" in auth:
        credential = auth.split("Credential=", 1)[1].split(",", 1)[0]
    else:
        credential = (parse_qs(environ.get("QUERY_STRING", "")).get("X-Amz-Credential") or [""])[0]
    parts = credential.split("/")
    return parts[3].lower() if len(parts) >= 5 else "s3"


def written_target(environ: dict[str, Any]) -> tuple[str, str] | None:
    """(bucket, key prefix) an S3 request may have written, or None. Path-style addressing (what every local client
    uses): ``/<bucket>/<key>``. A PUT or DELETE of one key narrows the check to that key; anything else (a
    presigned POST form, a batch delete, completing a multipart upload) checks the whole bucket."""
    if environ.get("REQUEST_METHOD") not in WRITE_METHODS or _service_of_request(environ) != "s3":
        return None
    path = environ.get("PATH_INFO", "")
    if path.startswith("/moto-api"):
        return None
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket:
        return None
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    if environ["REQUEST_METHOD"] == "PUT" and "partNumber" in query:
        return None  # a part of a multipart upload: no object until it is completed
    if environ["REQUEST_METHOD"] in ("PUT", "DELETE") and key:
        try:  # WSGI hands the decoded path over as latin-1 text of its bytes
            return bucket, key.encode("latin-1").decode("utf-8")
        except UnicodeError:
            return bucket, ""
    return bucket, ""


class S3Mirror:
    """A disk copy of a moto server's S3 objects (see the module docstring)."""

    def __init__(self, root: Path, endpoint_url: str, region: str = "us-east-1") -> None:
        import boto3
        from botocore.config import Config

        self.root = Path(root)
        self.client = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=region
        ).client("s3", endpoint_url=endpoint_url, config=Config(s3={"addressing_style": "path"}))
        self._lock = threading.Lock()
        self._etags: dict[str, dict[str, str]] = {}  # bucket -> key -> ETag of the kept copy

    # -- files ------------------------------------------------------------------------------------------------
    def _paths(self, bucket: str, key: str) -> tuple[Path, Path]:
        name = hashlib.sha256(key.encode()).hexdigest()
        folder = self.root / bucket
        return folder / f"{name}.bin", folder / f"{name}.json"

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _kept(self, bucket: str) -> dict[str, str]:
        if bucket not in self._etags:
            kept: dict[str, str] = {}
            for sidecar in sorted((self.root / bucket).glob("*.json")):
                entry = json.loads(sidecar.read_text(encoding="utf-8"))
                kept[entry["key"]] = entry["etag"]
            self._etags[bucket] = kept
        return self._etags[bucket]

    # -- restore ----------------------------------------------------------------------------------------------
    def restore(self) -> int:
        """Put every kept object back into moto (creating its bucket if need be); returns how many."""
        if not self.root.is_dir():
            return 0
        existing = {bucket["Name"] for bucket in self.client.list_buckets().get("Buckets", [])}
        restored = 0
        for folder in sorted(path for path in self.root.iterdir() if path.is_dir()):
            bucket = folder.name
            for sidecar in sorted(folder.glob("*.json")):
                entry = json.loads(sidecar.read_text(encoding="utf-8"))
                body = sidecar.with_suffix(".bin")
                if not body.exists():
                    continue
                if bucket not in existing:
                    self.client.create_bucket(Bucket=bucket)
                    existing.add(bucket)
                extra: dict[str, Any] = {"Metadata": entry.get("metadata") or {}}
                if entry.get("content_type"):
                    extra["ContentType"] = entry["content_type"]
                self.client.put_object(Bucket=bucket, Key=entry["key"], Body=body.read_bytes(), **extra)
                restored += 1
        self._etags.clear()  # re-read: the restored objects' ETags are compared again at the next write
        return restored

    # -- reconcile --------------------------------------------------------------------------------------------
    def sync(self, bucket: str, prefix: str = "") -> None:
        """Make the kept copy of ``bucket`` (its keys under ``prefix``) what moto holds."""
        with self._lock:
            current = self._list(bucket, prefix)
            kept = self._kept(bucket)
            for key, etag in current.items():
                if kept.get(key) != etag:
                    self._keep(bucket, key)
            for key in [key for key in kept if key.startswith(prefix) and key not in current]:
                for path in self._paths(bucket, key):
                    path.unlink(missing_ok=True)
                del kept[key]

    def _list(self, bucket: str, prefix: str) -> dict[str, str]:
        current: dict[str, str] = {}
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    current[item["Key"]] = item["ETag"]
        except self.client.exceptions.NoSuchBucket:
            return {}
        return current

    def _keep(self, bucket: str, key: str) -> None:
        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
        except self.client.exceptions.NoSuchKey:  # deleted since the listing: the next write reconciles it
            return
        body, sidecar = self._paths(bucket, key)
        self._write(body, response["Body"].read())
        entry = {
            "key": key,
            "etag": response["ETag"],
            "content_type": response.get("ContentType"),
            "metadata": response.get("Metadata") or {},
        }
        self._write(sidecar, json.dumps(entry).encode())
        self._kept(bucket)[key] = response["ETag"]


class _MirroringApp:
    """WSGI wrapper: after a successful S3 write, the mirror keeps it before the response is returned."""

    def __init__(self, app: Any, server: LocalMotoServer) -> None:
        self.app = app
        self.server = server

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        mirror = self.server.mirror
        target = written_target(environ) if mirror is not None else None
        status: list[int] = []

        def recording_start_response(code: str, headers: Any, exc_info: Any = None) -> Any:
            status.append(int(code.split(" ", 1)[0]))
            return start_response(code, headers, exc_info)

        # moto's backends are not safe under concurrent requests (airies.local.moto_lock); the body is produced under
        # the lock, the mirror (which reads back through this server) syncs after it
        with MOTO_LOCK:
            result = self.app(environ, recording_start_response)
            body = b"".join(result)  # moto answers in full: the write has happened once its body exists
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if mirror is not None and target is not None and status and status[0] < 300:
            mirror.sync(*target)
        return [body]


class LocalMotoServer:
    """moto in server mode on a daemon thread (as ``moto.server.ThreadedMotoServer``), with an optional
    :class:`S3Mirror` (``server.mirror = ...``) that keeps every S3 write on disk."""

    def __init__(self, ip_address: str = "127.0.0.1", port: int = 5000) -> None:
        self.ip_address = ip_address
        self.port = port
        self.mirror: S3Mirror | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        app = _MirroringApp(DomainDispatcherApplication(create_backend_app), self)
        self._server = make_server(self.ip_address, self.port, app, threaded=True, request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-moto-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()
