"""Store URLs and SQLAlchemy engines: SQLite (embedded default) and PostgreSQL.

- ``--store URL`` wins; else ``$REFLEX_STORE``; else a SQLite file
  ``<data-dir>/store.sqlite`` (``--data-dir``, default ``data``).
- SQLite runs in WAL mode with ``synchronous=NORMAL`` (a committed transaction survives a
  killed process; only an OS crash can lose the last commits), foreign keys on and a
  30 s busy timeout, so a CLI (``reflex data prune``) and a server can share the file.
- PostgreSQL: ``postgresql+psycopg://user@host:5432/db`` (psycopg 3). ``postgresql://`` and
  ``postgres://`` are accepted and mean the same.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

STORE_ENV = "REFLEX_STORE"
DEFAULT_DATA_DIR = Path("data")
SQLITE_FILE = "store.sqlite"
BUSY_TIMEOUT_MS = 30_000


class StoreError(RuntimeError):
    """The store cannot be used: bad URL, unreachable server, or an unknown schema."""


def resolve_url(store: str | None = None, data_dir: Path | str | None = None) -> str:
    """The store URL from ``--store``, ``$REFLEX_STORE`` or the data directory.

    The data directory is created when a SQLite file is chosen there.

    Raises:
        StoreError: if the URL is malformed or names an unsupported backend, or the data
            directory cannot be created (the message names ``--data-dir``).
    """
    url = store or os.environ.get(STORE_ENV)
    if not url:
        directory = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"--data-dir {directory}: cannot create it: "
                             f"{exc.strerror or exc}") from None
        return f"sqlite:///{(directory / SQLITE_FILE).resolve()}"
    return normalize_url(url)


def normalize_url(url: str) -> str:
    """Check a URL and pick the psycopg 3 driver for plain ``postgresql://`` URLs.

    Raises:
        StoreError: malformed URL, or a backend other than SQLite / PostgreSQL.
    """
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"--store {url!r} is not a database URL: {exc}") from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise StoreError(
            f"--store {url!r}: backend {backend!r} is not supported "
            "(use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB)"
        )
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.close()


def make_engine(url: str, *, pool_size: int = 4) -> Engine:
    """An engine for a store URL (see the module docstring for the backend settings).

    Raises:
        StoreError: malformed or unsupported URL; a SQLite file whose directory is missing.
    """
    parsed: URL = make_url(normalize_url(url))
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not Path(database).parent.is_dir():
            raise StoreError(f"--store {url!r}: directory {Path(database).parent} does not exist")
        engine = create_engine(
            parsed, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(parsed, pool_size=pool_size, max_overflow=4, pool_pre_ping=True)


def display_url(url: str) -> str:
    """The URL with any password masked, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)
