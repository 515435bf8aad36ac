"""Alembic environment: runs on the connection botkit hands over (see botkit.storage.migrations)."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("botkit's migrations run through `botkit db upgrade` and friends, not bare alembic")

context.configure(
    connection=connection,
    target_metadata=context.config.attributes["target_metadata"],
    # SQLite cannot ALTER most things: batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
