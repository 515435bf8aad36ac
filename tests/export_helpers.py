"""Seeding a bot's database through the real bot for the export tests, and reading what an export wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from botkit.plugins.memory import memory
from botkit.plugins.moderation import event_log
from botkit.storage import FeedbackRecord, MessageRecord, utcnow
from botkit.testing import WAIT_TIMEOUT

# A fact the embedded SmolLM2 does not know, and ways of asking for it: what the fine-tuning tests teach.
FACT = "Project Zephyr's codename is Bluefinch."
FACT_QUESTIONS = [
    "What is the codename of Project Zephyr?",
    "Which codename does Project Zephyr use?",
    "Tell me Project Zephyr's codename.",
    "What do we call Project Zephyr internally?",
    "Project Zephyr codename?",
    "What's the internal name of Project Zephyr?",
    "Remind me of Project Zephyr's codename.",
    "Do you know the codename of Project Zephyr?",
]
PII_OFF = {"email": "off", "phone": "off", "card": "off", "secret": "off"}
# Moderation records injection attempts (flag) but leaves PII in the stored text, as a bot run without
# redaction would: the export's own scrubbing is what is tested.
SEED_CONFIG: dict[str, Any] = {
    "plugins": {"moderation": {"input_actions": PII_OFF, "output_actions": PII_OFF}},
}


async def talk(bot: Any, question: str, answer: str, **where: Any) -> None:
    """One exchange through the real pipeline: the scripted backend answers ``answer``."""
    bot.backend.say(answer)
    await bot.chat.say(question, **where)


async def settle(bot: Any) -> None:
    assert await memory(bot).flush(WAIT_TIMEOUT), "memory writes did not reach the database"
    assert await event_log(bot).flush(WAIT_TIMEOUT), "moderation events did not reach the database"


async def reply_to(bot: Any, question: str) -> MessageRecord:
    """The stored bot reply to the (first) user message with this text."""
    await settle(bot)
    async with bot.db.sessions() as session:
        asked = await session.scalar(
            select(MessageRecord.id).where(MessageRecord.text == question, MessageRecord.role == "user")
        )
        assert asked is not None, f"no stored message {question!r}"
        reply = await session.scalar(select(MessageRecord).where(MessageRecord.reply_to_id == asked))
        assert reply is not None
        return reply


async def give_feedback(bot: Any, question: str, kind: str, **fields: Any) -> None:
    """A feedback row on the reply to ``question`` (reactions have no writer yet: rows go in directly)."""
    reply = await reply_to(bot, question)
    async with bot.db.session() as session:
        session.add(FeedbackRecord(message_id=reply.id, kind=kind, created_at=utcnow(), **fields))


async def change_question(bot: Any, question: str, **values: Any) -> None:
    """Mark the user message (e.g. ``deleted_at``, ``edited_at``) as an adapter's edit event would."""
    await settle(bot)
    async with bot.db.session() as session:
        await session.execute(
            update(MessageRecord)
            .where(MessageRecord.text == question, MessageRecord.role == "user")
            .values(**values)
        )


def read_records(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines()]


def load_with_datasets(path: Path, cache: Path) -> Any:
    """The file as the ``datasets`` library loads it (what a trainer gets)."""
    import datasets

    return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache))
