"""Shared fixtures: real export directories, and stores on both backends.

A test that uses ``store`` or ``store_url`` runs twice, ``[sqlite]`` (a new SQLite file)
and ``[postgresql]``: ``$REFLEX_TEST_PG`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``) names a server; one database
``reflex_test_<random>`` is created per test session and dropped after it, and every
test starts from an empty ``public`` schema. The PostgreSQL cases are skipped, with the
reason, only when that server cannot be reached.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from reflex_serve.export.tiny import make_tiny_export
from reflex_serve.storage.store import Store


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """An untrained but real export (ONNX graphs, weights, stats, manifest), 39-d state."""
    return make_tiny_export(tmp_path_factory.mktemp("exports") / "tiny")

PG_ENV = "REFLEX_TEST_PG"
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def pg_database() -> str:
    """URL of a fresh PostgreSQL database for this test session (dropped afterwards)."""
    admin_url = make_url(os.environ.get(PG_ENV, DEFAULT_PG))
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"reflex_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL at {admin_url.render_as_string()} is unreachable: {exc.orig}")
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _reset_pg(url: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """An empty store's URL: a new SQLite file, or the session's PostgreSQL database
    with an empty schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite'}"
    url = request.getfixturevalue("pg_database")
    _reset_pg(url)
    return url


@pytest.fixture
def store(store_url) -> Store:
    """An open, migrated, empty :class:`Store` on each backend."""
    st = Store.open(store_url)
    yield st
    st.close()
