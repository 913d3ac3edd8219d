"""A PostgreSQL 16 with pgvector for tests and benchmarks, from the PyPI package ``pgserver`` (it bundles both).

The machine's PostgreSQL 15 has no pgvector. ``pgserver`` lives in its own virtual environment under /tmp
(``make kb-pgvector`` creates it) because, run as root, it adds a system user and opens read/execute on every
parent folder of its data directory and interpreter: both stay under /tmp so the work tree is never touched.

``pgvector_url()`` starts the server once (it keeps running between processes) and returns a SQLAlchemy URL
over its Unix socket, or ``None`` when the venv is absent. ``AIRIES_TEST_PGVECTOR_URL`` overrides all of it
(e.g. an RDS/Aurora or other PostgreSQL with the extension).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

VENV = Path(os.environ.get("AIRIES_PGSERVER_VENV", "/tmp/airies-pgvenv"))
DATA_DIR = Path(os.environ.get("AIRIES_PGSERVER_DATA", "/tmp/airies-pgvector-data"))

_started = False

_START = """
import os, pgserver
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp/airies-pgserver-xdg")
os.makedirs(os.environ["XDG_RUNTIME_DIR"], exist_ok=True)
server = pgserver.get_server({data!r}, cleanup_mode=None)
server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
print("ok")
"""


def pgvector_url(database: str = "postgres") -> str | None:
    override = os.environ.get("AIRIES_TEST_PGVECTOR_URL")
    if override:
        return override
    python = VENV / "bin" / "python"
    if not python.exists():
        return None
    socket = DATA_DIR / ".s.PGSQL.5432"
    global _started
    if not _started:  # once per process: get_server reuses a running server and restarts a dead one
        completed = subprocess.run(
            [str(python), "-c", _START.format(data=str(DATA_DIR))],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            cwd="/tmp",
        )
        if completed.returncode != 0 or not socket.exists():
            raise RuntimeError(f"pgserver did not start: {completed.stderr[-2000:]}")
        _started = True
    return f"postgresql+pg8000://postgres@/{database}?unix_sock={socket}"


def create_database(name: str) -> str | None:
    """A fresh database on the pgvector server (dropped by the caller with ``drop_database``)."""
    from sqlalchemy import create_engine, text

    admin_url = pgvector_url()
    if admin_url is None:
        return None
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return admin_url.replace("/postgres?", f"/{name}?", 1)


def drop_database(name: str) -> None:
    from sqlalchemy import create_engine, text

    admin_url = pgvector_url()
    if admin_url is None:
        return
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()
