"""Moderation events as rows of ``moderation_events``: one shape, written once whoever writes them.

The moderation plugin makes each event with ``moderation_event`` and queues it
in its own writer; the same event also travels with the exchange it concerns
(``Reply.moderation_events``), and the memory plugin stores it in the
exchange's transaction. Each event carries a key made when the decision was
taken, unique in the table, so the second write of it stores nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from botkit.storage.database import dialect_insert, insert_new, user_id_for
from botkit.storage.models import ModerationEventRecord, new_key, utcnow


def moderation_event(
    *,
    platform: str,
    user: str,
    name: str,
    direction: str,
    category: str,
    action: str,
    rule: str,
    detail: dict[str, Any],
) -> dict[str, Any]:
    """One moderation decision as a record (plain JSON: it may wait in a spool file)."""
    return {
        "key": new_key(),
        "platform": platform,
        "user": user,
        "name": name,
        "direction": direction,
        "category": category,
        "action": action,
        "rule": rule[:255],
        "detail": detail,
        "at": utcnow().isoformat(),
    }


async def write_moderation_events(
    session: AsyncSession,
    events: Iterable[dict[str, Any]],
    users: dict[tuple[str, str], int] | None = None,
    message_ids: dict[str, int] | None = None,
) -> None:
    """Insert ``events``, skipping any stored already (under its key).

    ``users`` maps ``(platform, platform user id)`` to ``users`` ids the caller
    knows (others are looked up, and added to it); ``message_ids`` maps a
    direction (``in``, ``out``) to the ``messages`` row the event concerns: an
    event stored already (by the other writer) is then pointed at that row.
    """
    users = {} if users is None else users
    rows = []
    for event in events:
        key = (event["platform"], event["user"])
        if key not in users:
            users[key] = await user_id_for(session, *key, event["name"])
        rows.append(
            {
                "event_key": event["key"],
                "message_id": (message_ids or {}).get(event["direction"]),
                "user_id": users[key],
                "direction": event["direction"],
                "category": event["category"],
                "action": event["action"],
                "rule": event["rule"],
                "detail": event["detail"],
                "created_at": _time(event["at"]),
            }
        )
    if not rows:
        return
    if message_ids is None:
        await session.execute(insert_new(session, ModerationEventRecord.__table__, "event_key"), rows)
        return
    # Stored with its exchange: whichever write came first, the event points at the exchange's row.
    statement = dialect_insert(session, ModerationEventRecord.__table__)
    statement = statement.on_conflict_do_update(
        index_elements=["event_key"], set_={"message_id": statement.excluded.message_id}
    )
    await session.execute(statement, rows)


def _time(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


__all__ = ["moderation_event", "write_moderation_events"]
