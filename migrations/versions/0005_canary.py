"""canary rollout: the canaries table and each reply's arm

``canaries`` holds one row per canary rollout of a LoRA adapter (its backend, the
adapter of each arm, the canary arm's share, when it began and how it ended);
``messages.canary_id`` and ``messages.arm`` record, for a reply generated while a
canary ran on its backend, that canary and its arm ("control" or "canary").

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "canaries",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("backend", sa.String(length=64), nullable=False),
        sa.Column("control_lora", sa.String(length=255), nullable=True),
        sa.Column("canary_lora", sa.String(length=255), nullable=False),
        sa.Column("share", sa.Float(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_canaries")),
    )
    # The running canary of a backend is its row without ended_at.
    op.create_index("ix_canaries_backend_ended_at", "canaries", ["backend", "ended_at"])
    # No batch mode (as in 0002): on SQLite it copies the table and drops the old one, and with
    # foreign keys on, that drop would cascade to feedback and null every reply_to_id.
    op.add_column("messages", sa.Column("canary_id", Id, nullable=True))
    op.add_column("messages", sa.Column("arm", sa.String(length=16), nullable=True))
    # A canary's results are read every check_interval: by its replies, not by the whole history.
    op.create_index("ix_messages_canary_id", "messages", ["canary_id"])


def downgrade() -> None:
    op.drop_index("ix_messages_canary_id", table_name="messages")
    op.drop_column("messages", "arm")
    op.drop_column("messages", "canary_id")
    op.drop_index("ix_canaries_backend_ended_at", table_name="canaries")
    op.drop_table("canaries")
