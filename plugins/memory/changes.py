"""Edits and deletions of a user's stored message: the change record and how it applies before it is written.

(Also the delivery record: the platform ids a reply got once delivered, written to its row.)

A change travels through the store's ordered write queue like every other
record (so it lands after the message's own row, survives outages in the spool
and is written once the database is back). Until then it is applied to what the
store still holds: the message's pending exchange record, the rows history reads
back from the database, and an exchange that is added only later (the author
edited the message while the bot was still answering it).
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Update, bindparam, update

from botkit.storage import MessageRecord

# Changes kept for exchanges that have not been added yet: a message is edited
# while its reply is generated, minutes at most; the bound only caps memory.
REMEMBERED_CHANGES = 10_000

MessageKey = tuple[str, str, str]  # (platform, channel id, platform message id)


def change_record(
    platform: str, channel_id: str, message_id: str, text: str | None, tokens: int, at: str
) -> dict[str, Any]:
    """A queue record: ``text`` is the new text, ``None`` for a deletion."""
    return {
        "id": uuid.uuid4().hex,
        "kind": "change",
        "platform": platform,
        "channel_id": channel_id,
        "message_id": message_id,
        "text": text,
        "tokens": tokens,
        "at": at,
    }


def delivery_record(exchange: str, message_ids: list[str]) -> dict[str, Any]:
    """A queue record: the reply of exchange ``exchange`` was delivered as the platform's ``message_ids``."""
    return {"id": uuid.uuid4().hex, "kind": "delivered", "exchange": exchange, "message_ids": message_ids}


def delivered_columns(delivery: dict[str, Any]) -> dict[str, Any]:
    """The reply row's columns a delivery sets: a reply split over several platform messages
    has the first as its id and every one in ``flags``."""
    ids = delivery["message_ids"]
    return {"platform_message_id": ids[0], "flags": {"platform_message_ids": ids} if len(ids) > 1 else {}}


# One statement for every delivery of a batch whose reply row was written before it.
DELIVERY_UPDATE = (
    update(MessageRecord.__table__)
    .where(MessageRecord.exchange_key == bindparam("exchange"), MessageRecord.role == "assistant")
    .values(platform_message_id=bindparam("first_id"), flags=bindparam("delivered_flags"))
)


def delivery_parameters(delivery: dict[str, Any]) -> dict[str, Any]:
    columns = delivered_columns(delivery)
    return {
        "exchange": delivery["exchange"],
        "first_id": columns["platform_message_id"],
        "delivered_flags": columns["flags"],
    }


def change_key(change: dict[str, Any]) -> MessageKey:
    return (change["platform"], change["channel_id"], change["message_id"])


def exchange_key(record: dict[str, Any]) -> MessageKey:
    """The key of the user's message in an exchange record."""
    return (record["platform"], record["channel_id"], record["user"]["message_id"])


def patch_exchange(record: dict[str, Any], change: dict[str, Any]) -> None:
    """Apply ``change`` to the user's part of a pending exchange ``record``, in place."""
    user = record["user"]
    if user.get("deleted_at"):
        return  # a deleted message stays deleted
    if change["text"] is None:
        user.update(text="", tokens=0, deleted_at=change["at"])
    else:
        user.update(text=change["text"], tokens=change["tokens"], edited_at=change["at"])


def patch_pending(pending: Iterable[dict[str, Any]], change: dict[str, Any]) -> list[dict[str, Any]]:
    """Apply ``change`` to its message's exchange among ``pending`` records; the records patched."""
    key = change_key(change)
    patched = [r for r in pending if r["kind"] == "exchange" and exchange_key(r) == key]
    for record in patched:
        patch_exchange(record, change)
    return patched


def latest_changes(records: list[dict[str, Any]]) -> dict[MessageKey, dict[str, Any]]:
    """The change that decides each message's text among ``records`` (in order); a deletion sticks."""
    changes: dict[MessageKey, dict[str, Any]] = {}
    for record in records:
        if record["kind"] != "change":
            continue
        key = change_key(record)
        earlier = changes.get(key)
        if earlier is None or earlier["text"] is not None:
            changes[key] = record
    return changes


def change_statement(change: dict[str, Any]) -> Update:
    """The UPDATE an edit or deletion makes to the user's message row (none if it is not stored)."""
    statement = update(MessageRecord).where(
        MessageRecord.platform == change["platform"],
        MessageRecord.platform_message_id == change["message_id"],
        MessageRecord.channel_id == change["channel_id"],
        MessageRecord.role == "user",
        MessageRecord.deleted_at.is_(None),  # a deleted message stays deleted
    )
    at = datetime.fromisoformat(change["at"])
    if change["text"] is None:
        # The author deleted it: no copy of the text is kept.
        return statement.values(text="", token_count=0, deleted_at=at)
    return statement.values(text=change["text"], token_count=change["tokens"], edited_at=at)


class RememberedChanges:
    """The newest changes, by message, for an exchange that reaches the store after its change."""

    def __init__(self, limit: int = REMEMBERED_CHANGES) -> None:
        self.limit = limit
        self._changes: OrderedDict[MessageKey, dict[str, Any]] = OrderedDict()

    def remember(self, change: dict[str, Any]) -> None:
        key = change_key(change)
        earlier = self._changes.get(key)
        if earlier is not None and earlier["text"] is None:
            return
        self._changes[key] = change
        self._changes.move_to_end(key)
        while len(self._changes) > self.limit:
            self._changes.popitem(last=False)

    def take(self, key: MessageKey) -> dict[str, Any] | None:
        return self._changes.pop(key, None)

    def clear(self) -> None:
        self._changes.clear()
