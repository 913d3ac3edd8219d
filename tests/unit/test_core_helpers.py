"""The small shared helpers of ``airies.core``: run_sync, unit_of_work, platform_key, DATA_DIR."""

from __future__ import annotations

import asyncio
import threading

import anyio
import anyio.to_thread
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import sessionmaker

from airies.core import aio
from airies.core.config import DATA_DIR, Settings
from airies.core.database import Database, unit_of_work
from airies.core.secrets import platform_key


async def _current_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


async def _add(a: int, b: int = 0) -> int:
    await asyncio.sleep(0)
    return a + b


def test_run_sync_keeps_one_loop_per_thread_until_reset() -> None:
    assert aio.run_sync(_add, 2, b=3) == 5
    first = aio.run_sync(_current_loop)
    assert aio.run_sync(_current_loop) is first
    aio.reset_event_loops()
    assert aio.run_sync(_current_loop) is not first
    other: list[asyncio.AbstractEventLoop] = []
    thread = threading.Thread(target=lambda: other.append(aio.run_sync(_current_loop)))
    thread.start()
    thread.join()
    assert other[0] is not aio.run_sync(_current_loop)


def test_run_sync_cancels_what_a_call_left_running() -> None:
    started: list[asyncio.Task[None]] = []

    async def leaves_a_task() -> None:
        started.append(asyncio.ensure_future(asyncio.sleep(60)))

    aio.run_sync(leaves_a_task)
    assert started[0].cancelled()


def test_run_sync_in_an_anyio_worker_uses_the_callers_loop() -> None:
    async def main() -> bool:
        outer = asyncio.get_running_loop()
        inner = await anyio.to_thread.run_sync(lambda: aio.run_sync(_current_loop))
        return inner is outer

    assert anyio.run(main)


def test_unit_of_work_commits_or_rolls_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = create_engine(f"sqlite:///{tmp_path / 'uow.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (n INTEGER)"))
    factory = sessionmaker(engine)
    with unit_of_work(factory) as session:
        session.execute(text("INSERT INTO t VALUES (1)"))
    with pytest.raises(RuntimeError), unit_of_work(factory) as session:
        session.execute(text("INSERT INTO t VALUES (2)"))
        raise RuntimeError("boom")
    database = Database.from_engine(engine)
    assert database.engine is engine and database.dialect == "sqlite"
    with database.session() as session:
        assert session.execute(text("SELECT n FROM t")).scalars().all() == [1]
    engine.dispose()


def test_platform_key_prefers_settings_then_fallbacks_then_secrets(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("AIRIES_WHISPER_API_KEY", raising=False)
    monkeypatch.delenv("AIRIES_OPENAI_API_KEY", raising=False)
    settings = Settings(data_dir=tmp_path, whisper_api_key=None, openai_api_key="sk-openai")
    assert platform_key(settings, "whisper_api_key", "openai_api_key") == "sk-openai"
    assert platform_key(settings, "whisper_api_key") is None
    monkeypatch.setenv("AIRIES_WHISPER_API_KEY", "from-secret")  # the local form of a platform secret
    assert platform_key(Settings(data_dir=tmp_path), "whisper_api_key") == "from-secret"


def test_data_dir_holds_the_shipped_catalogs() -> None:
    assert {"llm_models.json", "pricing.json", "voice_catalog.json"} <= {p.name for p in DATA_DIR.iterdir()}
