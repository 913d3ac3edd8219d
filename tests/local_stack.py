"""``make run`` in a subprocess for end-to-end tests: ``python -m airies.local.server`` (moto, SQLite under its own
folder, the voice WebSocket at /ws, the web app) on a free port, with the offline engines only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class LocalServer:
    base: str  # http://127.0.0.1:PORT
    port: int
    log: Path
    api_key: str


@contextmanager
def local_server(
    workdir: Path, api_key: str, *, timeout: float = 90, env: dict[str, str] | None = None
) -> Iterator[LocalServer]:
    """``env``: extra variables for the server (e.g. a provider double's URL and key)."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("AIRIES_", "DATABASE_URL", "AWS_"))}
    environment.update(
        PORT=str(port), PYTHONUNBUFFERED="1", AIRIES_UVICORN_LOG_LEVEL="warning", AIRIES_DEV_API_KEY=api_key
    )
    for name in ("OPENAI_API_KEY", "DEEPGRAM_API_KEY", "ELEVENLABS_API_KEY"):  # offline engines only
        environment.pop(name, None)
    environment.update(env or {})
    log = workdir / "server.log"
    with log.open("w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "airies.local.server"], cwd=workdir, env=environment, stdout=handle,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{base}/api/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not answer within {timeout:.0f} s:\n{log.read_text()}")
            time.sleep(0.3)
        yield LocalServer(base=base, port=port, log=log, api_key=api_key)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
