"""Engine and sessions, tuned for Lambda: one small pool per container, pre-ping, short recycle.

A container serves one request at a time, so a pool of one connection (plus a little overflow
for the local multi-threaded server) is right; ``pool_pre_ping`` survives RDS Proxy and idle
disconnects after a container thaws.

On AWS (``stage != "local"``):

* PostgreSQL is reached over TLS (pg8000 ``ssl_context``): ``AIRIES_DATABASE_SSL`` is ``verify`` (the default there:
  certificate and host name, against the system's CAs or ``AIRIES_DATABASE_SSL_CA_FILE``), ``require`` (encrypted,
  not verified) or ``disable``. Locally the default is ``disable``.
* with ``AIRIES_DATABASE_SECRET_ARN`` (and no ``DATABASE_URL``) the engine holds no credentials: each new connection
  takes host, user and password from the secret (Powertools Parameters, cached 5 minutes). Nothing is read at
  import, so a SnapStart snapshot holds no password; when the database refuses the credentials (a rotated secret,
  SQLSTATE class 28) the secret is read again, bypassing the cache, and the connection retried once.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from airies.core.config import SecretCredentials, Settings, get_settings

SSL_MODES = ("verify", "require", "disable")
SECRET_URL = "postgresql+pg8000://"  # the engine of a secret-backed database: every parameter comes from the secret


def database_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of connections to PostgreSQL (``None``: plain TCP)."""
    mode = settings.database_ssl or ("verify" if settings.on_aws else "disable")
    if mode not in SSL_MODES:
        raise ValueError(f"AIRIES_DATABASE_SSL must be one of {', '.join(SSL_MODES)}; got {mode!r}")
    if mode == "disable":
        return None
    ca_file = str(settings.database_ssl_ca_file) if settings.database_ssl_ca_file else None
    context = ssl.create_default_context(cafile=ca_file)
    if mode == "require":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def is_authentication_failure(exc: BaseException) -> bool:
    """PostgreSQL refused the credentials: SQLSTATE class 28 (invalid password, unknown role)."""
    details = exc.args[0] if exc.args else None
    return isinstance(details, dict) and str(details.get("C", "")).startswith("28")


def _connect_with_secret(engine: Engine, credentials: SecretCredentials) -> None:
    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        cparams.update(credentials.connect_params())
        try:
            return dialect.connect(*cargs, **cparams)
        except dialect.loaded_dbapi.Error as exc:
            if not is_authentication_failure(exc):
                raise
        cparams.update(credentials.connect_params(refresh=True))  # rotated: read the secret again, once
        return dialect.connect(*cargs, **cparams)


def create_db_engine(
    url: str,
    *,
    pool_size: int = 1,
    max_overflow: int = 2,
    echo: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    credentials: SecretCredentials | None = None,
) -> Engine:
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
    engine = create_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        pool_recycle=300,
        connect_args={"ssl_context": ssl_context} if ssl_context is not None else {},
    )
    if credentials is not None:
        _connect_with_secret(engine, credentials)
    return engine


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

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 1,
        max_overflow: int = 2,
        engine: Engine | None = None,
        ssl_context: ssl.SSLContext | None = None,
        credentials: SecretCredentials | None = None,
    ) -> None:
        self.url = url
        self.engine = (
            engine
            if engine is not None
            else create_db_engine(
                url,
                pool_size=pool_size,
                max_overflow=max_overflow,
                ssl_context=ssl_context,
                credentials=credentials,
            )
        )
        self.session_factory = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_engine(cls, engine: Engine) -> Database:
        """A Database over an engine that already exists (e.g. the one behind a caller's session)."""
        return cls(engine.url.render_as_string(hide_password=False), engine=engine)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """The platform database of ``settings``: ``DATABASE_URL``, else the secret (read per connection), else
        SQLite under the data directory."""
        pool_size, max_overflow = settings.db_pool_size, settings.db_max_overflow
        if settings.database_url:
            return cls(
                settings.database_url,
                pool_size=pool_size,
                max_overflow=max_overflow,
                ssl_context=database_ssl_context(settings),
            )
        if settings.database_secret_arn:
            return cls(
                SECRET_URL,
                pool_size=pool_size,
                max_overflow=max_overflow,
                ssl_context=database_ssl_context(settings),
                credentials=SecretCredentials(settings.database_secret_arn),
            )
        return cls(settings.resolved_database_url(), pool_size=pool_size, max_overflow=max_overflow)

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


def database_key(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    if settings.database_secret_arn:
        return f"secret:{settings.database_secret_arn}"
    return settings.resolved_database_url()


def get_database(settings: Settings | None = None) -> Database:
    """The container-wide Database of the settings (created once, then reused)."""
    settings = settings or get_settings()
    key = database_key(settings)
    if key not in _databases:
        _databases[key] = Database.from_settings(settings)
    return _databases[key]
