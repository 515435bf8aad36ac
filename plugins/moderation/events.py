"""Moderation events: every decision stored in ``moderation_events``, by a writer and with its exchange.

The pipeline only appends to a queue; a ``WriteBehind`` writer writes what is
queued in batches, one transaction each. While the database is unreachable
events wait in memory (at most ``MAX_PENDING``, the oldest dropped first) and
the writer retries; a database error is logged and never reaches a reply.
The events of a message that is answered also travel with its exchange
(``Reply.moderation_events``, handed over in ``botkit_reply_ready``): whoever
stores the exchange (memory) stores them in the same transaction, and spools
them with it during an outage, so a stored exchange never lacks its flags. Each
event has a key, so the two writes store it once.
What is stored is masked: the category, action and rule, and a masked
excerpt, never the e-mail address, number or secret itself.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from typing import Any

from botkit import Message, Metrics
from botkit.detectors import Finding, only_digits
from botkit.storage import (
    Database,
    WriteBehind,
    is_rejection,
    moderation_event,
    rejection_reason,
    write_dead_letter,
    write_moderation_events,
)

from .moderator import Decision

log = logging.getLogger("botkit.plugins.moderation")

MAX_PENDING = 10_000
EXAMPLES = 3  # masked excerpts kept per event
RETRY_INTERVAL = 5.0  # the longest pause between attempts while the database is down


# The public start of a token format (which kind it is, never part of the secret itself),
# kept in a stored excerpt so that a reviewer can tell which kind of key leaked.
_SECRET_PREFIX = re.compile(
    r"(?:AKIA|ASIA|gh[pousr]_|github_pat_|xox[a-z]-|xapp-|sk-|[srp]k_|eyJ|AIza|hf_|api_org_"
    r"|glpat-|npm_|pypi-|SG\.|-----BEGIN)?"
)


def masked(finding: Finding) -> str:
    """A form of the finding that can be stored: enough to review, never the value itself."""
    raw = finding.excerpt
    if finding.category == "card":
        return "**** " + only_digits(raw)[-4:]
    if finding.category == "phone":
        digits = only_digits(raw)
        return "*" * max(len(digits) - 2, 0) + digits[-2:]
    if finding.category == "email":
        local, _, domain = raw.partition("@")
        return f"{local[:1]}***@***.{domain.rsplit('.', 1)[-1]}"
    if finding.category == "secret":
        prefix = _SECRET_PREFIX.match(raw)
        return f"{prefix.group(0) if prefix else ''}*** ({len(raw)} characters)"
    clipped = raw[:40]
    if len(clipped) <= 2:
        return "*" * len(clipped)
    return clipped[0] + "*" * (len(clipped) - 2) + clipped[-1] + ("..." if len(raw) > 40 else "")


def events_of(message: Message, direction: str, decisions: list[Decision]) -> list[dict[str, Any]]:
    """One event per (category, action, rule) of a message: how many times, a few masked excerpts."""
    grouped: dict[tuple[str, str, str], list[Decision]] = {}
    for decision in decisions:
        finding = decision.finding
        grouped.setdefault((finding.category, decision.action, finding.rule), []).append(decision)
    events = []
    for (category, action, rule), group in grouped.items():
        detail: dict[str, Any] = {
            "count": len(group),
            "examples": [masked(d.finding) for d in group[:EXAMPLES]],
            "message_id": message.message_id,
            "channel_id": message.channel_id,
        }
        scores = [d.finding.score for d in group if d.finding.score is not None]
        if scores:
            detail["score"] = round(max(scores), 4)
        events.append(
            moderation_event(
                platform=message.platform,
                user=message.author.id,
                name=message.author.display_name,
                direction=direction,
                category=category,
                action=action,
                rule=rule,
                detail=detail,
            )
        )
    return events


class EventLog:
    """Moderation events queued in a ``WriteBehind`` writer: a check returns at once."""

    def __init__(
        self,
        db: Database,
        retry_interval: float = RETRY_INTERVAL,
        max_pending: int = MAX_PENDING,
        metrics: Metrics | None = None,
    ) -> None:
        self.db = db
        self._decisions = (metrics or Metrics()).counter(
            "botkit_moderation_decisions_total",
            "Moderation decisions, by direction (in: messages, out: replies), category and action.",
            ("direction", "category", "action"),
        )
        self.max_pending = max_pending
        # Events of messages whose exchange has not taken them yet (commands, refusals: never).
        self._unclaimed: OrderedDict[tuple[str, str, str], list[dict[str, Any]]] = OrderedDict()
        self.writer: WriteBehind[dict[str, Any]] = WriteBehind(
            self._write,
            name="moderation",
            what="moderation events",
            # Whatever the database does, replies go on and the events wait.
            down=(Exception,),
            retry_interval=retry_interval,
            log=log,
            max_pending=max_pending,
            # ...but an event the database refuses is kept aside, and the others are written.
            rejected=is_rejection,
            reason=rejection_reason,
            dead_letter=self._dead_letter,
            metrics=metrics,
        )

    def start(self) -> None:
        self.writer.start()

    def record(self, message: Message, direction: str, decisions: list[Decision]) -> None:
        """Queue the events of one check, and keep them for the message's exchange; returns at once."""
        for decision in decisions:
            self._decisions.labels(direction, decision.finding.category, decision.action).inc()
        events = events_of(message, direction, decisions)
        for event in events:
            self.writer.add(event)
        if events:
            key = message_key(message)
            self._unclaimed.setdefault(key, []).extend(events)
            self._unclaimed.move_to_end(key)
            while len(self._unclaimed) > self.max_pending:
                self._unclaimed.popitem(last=False)  # written by the writer all the same

    def take(self, message: Message) -> list[dict[str, Any]]:
        """The events recorded for ``message`` so far, for its exchange; each is handed over once."""
        return self._unclaimed.pop(message_key(message), [])

    async def flush(self, timeout: float) -> bool:
        """Wait until every queued event is written; ``False`` when that took longer than ``timeout``."""
        return await self.writer.flush(timeout)

    async def close(self, timeout: float) -> None:
        await self.writer.close(timeout)

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        async with self.db.session() as session:
            await write_moderation_events(session, batch)

    async def _dead_letter(self, event: dict[str, Any], reason: str) -> None:
        await write_dead_letter(self.db, "moderation", event.get("key"), event, reason)


def message_key(message: Message) -> tuple[str, str, str]:
    return (message.platform, message.channel_id, message.message_id)
