"""Moderation of what users write and what the model answers: blocklist, profanity, PII, secrets, injection.

Each category has an action per direction: ``block`` (the message is refused,
or the reply stopped, with a notice), ``redact`` (the span is replaced by a
placeholder such as ``[email removed]``), ``flag`` (only recorded) or ``off``.
Input is checked by a gate (after access control and rate limits); output by
a reply filter, before every streamed update reaches the platform, and a
block stops the generation. Every decision is stored as a moderation event,
masked. See docs/moderation.md.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace

from botkit import BotAPI, Message, Refuse, Reply, StateKey, hookimpl

from .classifier import ProfanityModel, load_model
from .events import EventLog
from .moderator import Decision, Moderator, Verdict
from .settings import Actions, ModerationSettings, OutputActions

__all__ = [
    "Actions",
    "EventLog",
    "Moderator",
    "ModerationSettings",
    "OutputActions",
    "ProfanityModel",
    "Verdict",
    "event_log",
]

log = logging.getLogger("botkit.plugins.moderation")

NAME = "moderation"
OFF_LOOP_CHARS = 16_000  # longer messages are checked on a worker thread, not on the event loop
FLUSH_TIMEOUT = 10.0


@dataclass(slots=True)
class Running:
    moderator: Moderator
    events: EventLog


RUNNING: StateKey[Running] = StateKey("moderation.running")


def event_log(bot: BotAPI) -> EventLog:
    """The running bot's moderation event writer; ``await event_log(bot).flush(5)`` waits for writes."""
    return bot.state.require(RUNNING).events


def settings_of(bot: BotAPI) -> ModerationSettings:
    settings = bot.plugin_settings(NAME)
    assert isinstance(settings, ModerationSettings)
    return settings


def reason(decisions: list[Decision]) -> str:
    blocks = sorted({f"{d.finding.category} ({d.finding.rule})" for d in decisions if d.action == "block"})
    return "moderation: " + ", ".join(blocks)


@hookimpl
def botkit_register_settings(register):
    register(NAME, ModerationSettings)


@hookimpl
async def botkit_startup(bot):
    settings = settings_of(bot)
    classifier: ProfanityModel | None = None
    if any("profanity" in actions.enabled() for actions in (settings.input_actions, settings.output_actions)):
        try:
            classifier = await asyncio.to_thread(load_model)
        except Exception as error:  # noqa: BLE001 - the rest of moderation still works
            log.error(
                "moderation: the profanity classifier cannot be loaded (%s); profanity is not checked", error
            )
    events = EventLog(bot.db)
    events.start()
    bot.state.set(RUNNING, Running(Moderator(settings, classifier), events))


@hookimpl
async def botkit_shutdown(bot):
    running = bot.state.pop(RUNNING)
    if running is not None:
        await running.events.close(FLUSH_TIMEOUT)


@hookimpl
async def botkit_gate(message: Message, bot) -> Message | Refuse | None:
    running = bot.state.get(RUNNING)
    if running is None:
        return None
    if len(message.text) > OFF_LOOP_CHARS:
        verdict = await asyncio.to_thread(running.moderator.check, message.text, "in")
    else:
        verdict = running.moderator.check(message.text, "in")
    running.events.record(message, "in", verdict.decisions)
    if verdict.blocked:
        return Refuse(running.moderator.settings.input_notice or None, reason=reason(verdict.decisions))
    if verdict.text != message.text:
        return replace(message, text=verdict.text)
    return None


@hookimpl
def botkit_filter_reply(message: Message, text: str, final: bool, bot) -> str | Refuse | None:
    running = bot.state.get(RUNNING)
    if running is None:
        return None
    verdict = running.moderator.check(text, "out", final, stream=message.message_id)
    if verdict.blocked or final:
        running.moderator.forget_stream(message.message_id)
        running.events.record(message, "out", verdict.decisions)
    if verdict.blocked:
        return Refuse(running.moderator.settings.output_notice or None, reason=reason(verdict.decisions))
    return verdict.text if verdict.text != text else None


@hookimpl
def botkit_reply_ready(message: Message, reply: Reply, bot) -> None:
    # The exchange carries its events: stored in its transaction, spooled with it in an outage.
    running = bot.state.get(RUNNING)
    if running is not None:
        reply.moderation_events.extend(running.events.take(message))


@hookimpl
async def botkit_forget_user(platform: str, user_id: str, bot) -> bool:
    # Queued events go to the database first, where the deletion then finds them.
    running = bot.state.get(RUNNING)
    return running is None or await running.events.flush(FLUSH_TIMEOUT)
