"""The store's schema, owned by Alembic: create or upgrade at start, refuse unknown revisions.

Migrations live in ``reflex_serve/storage/migrations/versions`` and form one linear
history. No ``alembic.ini`` is needed: :func:`alembic_config` builds the configuration in
code, so migrations run from an installed package. For development::

    python -m reflex_serve.storage.schema revision "add distill runs"   # autogenerate
    python -m reflex_serve.storage.schema upgrade --store URL
"""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

from reflex_serve.storage.engine import StoreError, display_url, make_engine, resolve_url

MIGRATIONS = Path(__file__).parent / "migrations"
#: Arbitrary constant key of the PostgreSQL advisory lock taken while migrating, so that
#: replicas starting together do not migrate the same database twice.
_PG_LOCK_KEY = 0x7265666C6578


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic :class:`Config` for the package's migrations (no ini file)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("version_path_separator", "os")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision this build knows."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"migration history must be linear, found heads {heads}")
    return heads[0]


def known_revisions() -> set[str]:
    """Every revision of this build's history."""
    script = ScriptDirectory.from_config(alembic_config())
    return {rev.revision for rev in script.walk_revisions()}


def current_revision(connection: Connection) -> str | None:
    """The store's revision (``None`` for an empty database)."""
    return MigrationContext.configure(connection).get_current_revision()


def check_revision(connection: Connection, url: str) -> str | None:
    """Refuse a store this build cannot use; return its current revision.

    Raises:
        StoreError: the store is at a revision this build does not know (written by a
            newer reflex-serve), or holds reflex tables without Alembic's version table.
    """
    revision = current_revision(connection)
    if revision is None:
        tables = set(inspect(connection).get_table_names())
        if {"requests", "episodes"} & tables:
            raise StoreError(
                f"store {display_url(url)} has reflex tables but no alembic_version table; "
                "it was not created by reflex-serve migrations, refusing to touch it"
            )
        return None
    if revision not in known_revisions():
        raise StoreError(
            f"store {display_url(url)} is at schema revision {revision!r}, which this "
            f"reflex-serve does not know (its newest is {head_revision()!r}): the store was "
            "written by a newer reflex-serve. Upgrade reflex-serve, or point --store at "
            "another database."
        )
    return revision


def upgrade(engine: Engine) -> str:
    """Create or upgrade the schema to the head revision; return it.

    On PostgreSQL the migration runs under an advisory lock (replicas may start at once).

    Raises:
        StoreError: see :func:`check_revision`.
    """
    url = engine.url.render_as_string(hide_password=False)
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
        try:
            revision = check_revision(conn, url)
            head = head_revision()
            if revision != head:
                command.upgrade(alembic_config(conn), "head")
                conn.commit()
        finally:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                conn.commit()
    return head


def _main(argv: list[str]) -> None:
    if argv[:1] == ["revision"] and len(argv) == 2:
        engine = make_engine("sqlite://")
        with engine.connect() as conn:
            cfg = alembic_config(conn)
            command.upgrade(cfg, "head")
            command.revision(cfg, message=argv[1], autogenerate=True)
    elif argv[:1] == ["upgrade"]:
        store = argv[argv.index("--store") + 1] if "--store" in argv else None
        engine = make_engine(resolve_url(store))
        print(f"{display_url(str(engine.url))}: at {upgrade(engine)}")
    else:
        sys.exit(
            "usage: python -m reflex_serve.storage.schema revision MESSAGE | upgrade [--store URL]"
        )


if __name__ == "__main__":
    _main(sys.argv[1:])
