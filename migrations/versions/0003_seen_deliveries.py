"""seen deliveries: a platform event answered once, across restarts and replicas

``seen_deliveries`` keeps each platform event delivery the bot claimed
(platform, delivery id, when it was first seen), keyed by (platform,
delivery_id): of two replicas that receive the same event, or a bot restarted
before a retry, only the insert that stores the key answers it. Rows older than
a day are deleted by the bot.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "seen_deliveries",
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("delivery_id", sa.String(length=128), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("platform", "delivery_id", name=op.f("pk_seen_deliveries")),
    )
    # Pruning deletes by age.
    op.create_index("ix_seen_deliveries_first_seen_at", "seen_deliveries", ["first_seen_at"])


def downgrade() -> None:
    op.drop_index("ix_seen_deliveries_first_seen_at", table_name="seen_deliveries")
    op.drop_table("seen_deliveries")
