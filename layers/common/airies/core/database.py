"""Engine and sessions, tuned for Lambda: one small pool per container, pre-ping, short recycle.

A container serves one request at a time, so a pool of one connection (plus a little overflow
for the local multi-threaded server) is right; ``pool_pre_ping`` survives RDS Proxy and idle
disconnects after a container thaws.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from airies.core.config import Settings, get_settings


def create_db_engine(url: str, *, pool_size: int = 1, max_overflow: int = 2, echo: bool = False) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_pre_ping=False,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            if ":memory:" not in url:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        pool_recycle=300,
    )


@contextmanager
def unit_of_work(session_factory: Callable[[], Session]) -> Iterator[Session]:
    """A unit of work: a new session that commits on success, rolls back on any error, and is closed after."""
    session = session_factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


class Database:
    """The engine plus a session factory; one per container."""

    def __init__(self, url: str, *, pool_size: int = 1, max_overflow: int = 2, engine: Engine | None = None) -> None:
        self.url = url
        self.engine = (
            engine if engine is not None else create_db_engine(url, pool_size=pool_size, max_overflow=max_overflow)
        )
        self.session_factory = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_engine(cls, engine: Engine) -> Database:
        """A Database over an engine that already exists (e.g. the one behind a caller's session)."""
        return cls(engine.url.render_as_string(hide_password=False), engine=engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def session(self) -> AbstractContextManager[Session]:
        """A unit of work (:func:`unit_of_work`): commits on success, rolls back on any error."""
        return unit_of_work(self.session_factory)

    def dispose(self) -> None:
        """Drop pooled connections (SnapStart restore hook, tests)."""
        self.engine.dispose()


_databases: dict[str, Database] = {}


def get_database(settings: Settings | None = None) -> Database:
    """The container-wide Database for the configured URL (created once, then reused)."""
    settings = settings or get_settings()
    url = settings.resolved_database_url()
    if url not in _databases:
        _databases[url] = Database(url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow)
    return _databases[url]
