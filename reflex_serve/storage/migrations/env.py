"""Alembic environment: always run online, on the connection handed in by ``schema.py``.

There is no ``alembic.ini``: :func:`reflex_serve.storage.schema.alembic_config` builds
the configuration in code and puts the connection in ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from reflex_serve.storage.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "reflex_serve migrations run through reflex_serve.storage.schema.upgrade(engine)"
    )
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
