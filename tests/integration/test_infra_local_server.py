"""`make run`'s server in a subprocess on a free port: dev key, moto bucket, signup + agents over real HTTP.

Runs once per database backend (the ``database`` fixture's URL goes in DATABASE_URL), and once on the embedded
default (SQLite under ./.data of a temporary working directory) to check the dev-key file.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningServer:
    def __init__(self, process: subprocess.Popen[str], port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log
        self.base = f"http://127.0.0.1:{port}/api/v1"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _start(workdir: Path, env_overrides: dict[str, str]) -> RunningServer:
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRIES_", "DATABASE_URL", "AWS_"))}
    env.update(PORT=str(port), PYTHONUNBUFFERED="1", AIRIES_UVICORN_LOG_LEVEL="warning", **env_overrides)
    log = workdir / "server.log"
    handle = log.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "airies.local.server"], cwd=workdir, env=env, stdout=handle, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    server = RunningServer(process, port, log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.base}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    pytest.fail(f"server did not answer within 90 s:\n{server.output()}")


def _stop(server: RunningServer) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGINT)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()


@pytest.fixture
def server_on(database, tmp_path: Path) -> Iterator[RunningServer]:  # type: ignore[no-untyped-def]
    database.dispose()  # the server migrates and writes through its own connections
    server = _start(tmp_path, {"DATABASE_URL": database.url, "AIRIES_DEV_API_KEY": "ak_live_devkey_for_tests_0001"})
    try:
        yield server
    finally:
        _stop(server)


def test_signup_and_agents_over_real_http(server_on: RunningServer) -> None:
    base = server_on.base
    assert "ak_live_devkey_for_tests_0001" in server_on.output()  # printed for the developer
    dev = {"Authorization": "Bearer ak_live_devkey_for_tests_0001"}
    assert httpx.get(f"{base}/agents", headers=dev).status_code == 200

    signup = httpx.post(f"{base}/accounts", json={"name": "Acme", "email": "owner@acme.example"})
    assert signup.status_code == 201, signup.text
    headers = {"Authorization": f"Bearer {signup.json()['api_key']}"}
    body = {"name": "Front desk", "system_prompt": "You answer the phone.", "first_message": "Hello!"}
    created = httpx.post(f"{base}/agents", json=body, headers=headers)
    assert created.status_code == 201, created.text
    agent_id = created.json()["id"]
    listed = httpx.get(f"{base}/agents", headers=headers).json()
    assert [a["id"] for a in listed["data"]] == [agent_id]
    assert httpx.get(f"{base}/agents/{agent_id}", headers=dev).status_code == 404  # tenancy across accounts
    assert httpx.get(f"{base}/agents", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_embedded_defaults_persist_the_dev_key_and_create_the_bucket(tmp_path: Path) -> None:
    server = _start(tmp_path, {})
    try:
        key_file = tmp_path / ".data" / "dev_api_key"
        key = key_file.read_text().strip()
        assert key.startswith("ak_live_") and key in server.output()
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
        assert (tmp_path / ".data" / "airies.db").exists()
        response = httpx.get(f"{server.base}/agents", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200
        endpoint = re.search(r"AWS \(moto\)\s+(http://127\.0\.0\.1:\d+)", server.output()).group(1)  # type: ignore[union-attr]
        s3 = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )  # fmt: skip
        assert "airies-local-storage" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    finally:
        _stop(server)
    # A second start reuses the persisted key.
    again = _start(tmp_path, {})
    try:
        assert key in again.output()
    finally:
        _stop(again)


def test_a_restarted_stack_still_serves_what_it_stored(tmp_path: Path) -> None:
    """Documents live in moto's S3 and their rows in SQLite under .data: after a restart both are there (the
    objects used to be lost with the moto process while the rows remained)."""
    headers = {"Authorization": "Bearer ak_live_devkey_for_tests_0002"}
    env = {"AIRIES_DEV_API_KEY": "ak_live_devkey_for_tests_0002"}
    bucket = "airies-local-documents-bucket"  # DocumentsBucket's local name
    server = _start(tmp_path, env)
    try:
        kb = httpx.post(f"{server.base}/knowledge-bases", json={"name": "Kept"}, headers=headers).json()
        created = httpx.post(
            f"{server.base}/knowledge-bases/{kb['id']}/documents",
            json={"filename": "faq.md", "text": "Refunds take 14 days."},
            headers=headers,
        )
        doc = created.json()["document"]
        # Inline content is ingested in the request, unless the stack's S3 notification worker claimed it first
        # (then the answer says processing): either way it becomes ready.
        url = f"{server.base}/knowledge-bases/{kb['id']}/documents/{doc['id']}"
        deadline = time.monotonic() + 60
        while doc["status"] == "processing" and time.monotonic() < deadline:
            time.sleep(0.2)
            doc = httpx.get(url, headers=headers).json()
        assert doc["status"] == "ready", doc
        stored = _s3(server).list_objects_v2(Bucket=bucket)["Contents"]
        assert [o["Key"].rsplit("/", 1)[-1] for o in stored] == ["faq.md"]
    finally:
        _stop(server)
    again = _start(tmp_path, env)
    try:
        kept = _s3(again).get_object(Bucket=bucket, Key=stored[0]["Key"])
        assert (kept["Body"].read(), kept["ContentType"]) == (b"Refunds take 14 days.", "text/markdown")
        assert "(1 restored)" in again.output()
        listed = httpx.get(f"{again.base}/knowledge-bases/{kb['id']}/documents", headers=headers).json()["data"]
        assert [(d["id"], d["status"]) for d in listed] == [(doc["id"], "ready")]
        replaced = httpx.put(
            f"{again.base}/knowledge-bases/{kb['id']}/documents/{doc['id']}",
            json={"text": "Refunds take 7 days."},
            headers=headers,
        )
        assert replaced.status_code == 200 and replaced.json()["status"] == "ready", replaced.text
    finally:
        _stop(again)


def _s3(server: RunningServer):  # type: ignore[no-untyped-def]
    endpoint = re.search(r"AWS \(moto\)\s+(http://127\.0\.0\.1:\d+)", server.output()).group(1)  # type: ignore[union-attr]
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )  # fmt: skip
