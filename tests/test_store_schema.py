"""The schema is Alembic's: created or upgraded at open, unknown revisions refused."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from reflex_serve.storage import schema
from reflex_serve.storage.engine import StoreError, make_engine, normalize_url, resolve_url
from reflex_serve.storage.models import Base
from reflex_serve.storage.store import Store

# Fixtures that run each test on SQLite and on PostgreSQL.

TABLES = {
    "alembic_version",
    "episodes",
    "requests",
    "images",
    "request_images",
    "model_versions",
    "version_transitions",
    "gate_runs",
    "gate_results",
    "gate_overrides",
    "router_slots",
    "swaps",
    "shadow_comparisons",
    "schedule_state",
    "distill_runs",
    "run_stages",
    "run_candidates",
}


def test_open_creates_every_table_at_the_head_revision(store_url):
    st = Store.open(store_url)
    with st.engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) == TABLES
        assert schema.current_revision(conn) == schema.head_revision() == "0004"
    st.close()


def test_migrations_match_the_models_exactly(store):
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_the_migration_history_is_linear_and_runs_from_an_installed_package():
    script = ScriptDirectory.from_config(schema.alembic_config())
    revisions = list(script.walk_revisions())
    assert len(script.get_heads()) == 1
    assert [r.revision for r in revisions] == ["0004", "0003", "0002", "0001"]
    assert all(len(r._all_down_revisions) <= 1 for r in revisions)
    assert schema.MIGRATIONS.is_dir() and not (schema.MIGRATIONS.parent / "alembic.ini").exists()


def test_a_store_at_an_older_revision_is_upgraded_on_open(store_url):
    st = Store.open(store_url)
    with st.engine.connect() as conn:
        command.downgrade(schema.alembic_config(conn), "base")
        conn.commit()
        assert set(inspect(conn).get_table_names()) == {"alembic_version"}
        assert schema.current_revision(conn) is None
    st.close()
    st = Store.open(store_url)
    with st.engine.connect() as conn:
        assert schema.current_revision(conn) == "0004"
        assert set(inspect(conn).get_table_names()) == TABLES
    st.close()


def test_reflex_tables_without_alembic_bookkeeping_are_refused(store_url):
    Store.open(store_url).close()
    engine = make_engine(store_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    engine.dispose()
    with pytest.raises(StoreError, match="no alembic_version table"):
        Store.open(store_url)


def test_a_store_from_a_newer_release_is_refused_with_a_clear_message(store_url):
    Store.open(store_url).close()
    engine = make_engine(store_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0042'"))
    engine.dispose()
    with pytest.raises(StoreError) as info:
        Store.open(store_url)
    message = str(info.value)
    assert "schema revision '0042'" in message
    assert "newer reflex-serve" in message and "'0004'" in message
    with pytest.raises(StoreError, match="0042"):
        Store.open(store_url, migrate=False)


def test_open_twice_is_a_no_op_upgrade(store_url):
    Store.open(store_url).close()
    st = Store.open(store_url)
    with st.engine.connect() as conn:
        assert schema.current_revision(conn) == "0004"
    st.close()


def test_urls_are_resolved_and_checked(tmp_path, monkeypatch):
    monkeypatch.delenv("REFLEX_STORE", raising=False)
    url = resolve_url(None, tmp_path / "d")
    assert url == f"sqlite:///{(tmp_path / 'd' / 'store.sqlite').resolve()}"
    assert (tmp_path / "d").is_dir()
    monkeypatch.setenv("REFLEX_STORE", "postgres://u:pw@h/db")
    assert resolve_url(None, tmp_path) == "postgresql+psycopg://u:pw@h/db"
    assert resolve_url("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(StoreError, match="not supported"):
        normalize_url("mysql://u@h/db")
    with pytest.raises(StoreError, match="not a database URL"):
        normalize_url("not a url")
    with pytest.raises(StoreError, match="does not exist"):
        make_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")


def test_an_unreachable_postgresql_server_is_a_store_error():
    with pytest.raises(StoreError, match="cannot open store postgresql"):
        Store.open("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2")


def test_sqlite_runs_in_wal_mode_with_normal_sync_and_foreign_keys(tmp_path):
    st = Store.open(f"sqlite:///{tmp_path / 's.sqlite'}")
    with st.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    st.close()
