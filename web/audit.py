"""The web console's audit log: every action taken in it (who, what, on what, when), and the newest entries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from botkit.storage import AuditRecord, Database, utcnow

TARGET_CHARS = 255


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    target: str


async def record(db: Database, actor: str, action: str, target: str = "") -> None:
    """Write one action: ``actor`` (an account name) did ``action`` (``review.approve``) to ``target`` (``#42``).

    ``target`` names what was acted on (an id, a plugin, an account), never a user's message text.
    """
    async with db.session() as session:
        session.add(AuditRecord(at=utcnow(), actor=actor, action=action, target=target[:TARGET_CHARS]))


async def recent(db: Database, limit: int = 200) -> list[AuditEntry]:
    """The newest ``limit`` entries, newest first."""
    async with db.sessions() as session:
        rows = await session.execute(
            select(AuditRecord.at, AuditRecord.actor, AuditRecord.action, AuditRecord.target)
            .order_by(AuditRecord.id.desc())
            .limit(limit)
        )
        return [AuditEntry(*row) for row in rows.all()]
