"""Alembic migrations of botkit's core schema (installed as ``botkit.migrations``)."""
