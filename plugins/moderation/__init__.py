"""Moderation of what users write and what the model answers: blocklist, profanity, PII, secrets, injection.

Each category has an action per direction: ``block`` (the message is refused,
or the reply stopped, with a notice), ``redact`` (the span is replaced by a
placeholder such as ``[email removed]``), ``flag`` (only recorded) or ``off``.
Input is checked by a gate (after access control and rate limits); output by
a reply filter, before every streamed update reaches the platform, and a
block stops the generation. Every decision is stored as a moderation event,
masked. The classifier runs on worker threads, within ``timeout``; a category
whose check fails or times out is skipped for that message (``on_error =
"open"``) or the message refused (``"closed"``), and counted in
``running_moderator(bot).failures``. See docs/moderation.md.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from botkit import BotAPI, Message, Refuse, Reply, StateKey, hookimpl

from .classifier import ProfanityModel, load_model
from .events import EventLog
from .moderator import Classified, Decision, Direction, Moderator, Verdict, failure
from .probes import PROBES, toxicity
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
    "running_moderator",
]

log = logging.getLogger("botkit.plugins.moderation")

NAME = "moderation"
OFF_LOOP_CHARS = 16_000  # longer messages are checked on a worker thread, not on the event loop
FLUSH_TIMEOUT = 10.0
CLASSIFIER_THREADS = 4


@dataclass(slots=True)
class Running:
    moderator: Moderator
    events: EventLog
    threads: ThreadPoolExecutor
    stuck: set[Future] = field(default_factory=set)  # classifier calls past their timeout, still running


RUNNING: StateKey[Running] = StateKey("moderation.running")


def event_log(bot: BotAPI) -> EventLog:
    """The running bot's moderation event writer; ``await event_log(bot).flush(5)`` waits for writes."""
    return bot.state.require(RUNNING).events


def running_moderator(bot: BotAPI) -> Moderator:
    """The running bot's ``Moderator``; ``.failures`` counts the checks that could not be made."""
    return bot.state.require(RUNNING).moderator


def settings_of(bot: BotAPI) -> ModerationSettings:
    settings = bot.plugin_settings(NAME)
    assert isinstance(settings, ModerationSettings)
    return settings


def reason(decisions: list[Decision]) -> str:
    blocks = sorted({f"{d.finding.category} ({d.finding.rule})" for d in decisions if d.action == "block"})
    return "moderation: " + ", ".join(blocks)


def unchecked_reason(unchecked: dict[str, str]) -> str:
    return "moderation could not check " + ", ".join(f"{c} ({why})" for c, why in sorted(unchecked.items()))


async def classified(
    running: Running, text: str, direction: Direction, final: bool, stream: str | None
) -> Classified:
    """The classifier's part of a check: botkit's own scorer inline (it cannot block for
    long), any other classifier on a worker thread and within ``timeout``.

    A call that times out goes on in its thread (a thread cannot be stopped);
    while every thread holds one, the classifier is not waited for at all.
    A stream (a reply) whose check timed out is not classified again.
    """
    moderator = running.moderator
    if not moderator.classifier_due(text, direction, final, stream):
        return moderator.classify(text, direction, final, stream)  # nothing to score: cached, off or given up
    timeout = moderator.settings.timeout
    if type(moderator.classifier) is ProfanityModel and len(text) <= OFF_LOOP_CHARS:
        # botkit's own scorer is plain Python, linear in the text and bounded by its length
        # (about 0.1 ms a KB): it cannot hang, and a thread hop per check would cost more than
        # the check (it halved messages/s on one core). Other classifiers run on the threads.
        try:
            return moderator.classify(text, direction, final, stream)
        except Exception as error:  # noqa: BLE001 - the other categories are still checked
            why = failure(error)
    elif len(running.stuck) >= CLASSIFIER_THREADS:
        why = f"all {CLASSIFIER_THREADS} classifier threads are stuck"
    else:
        call = running.threads.submit(moderator.classify, text, direction, final, stream)
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(call)), timeout)
        except TimeoutError:
            if call.cancel():  # it never started
                why = f"waited {timeout:g} s for a classifier thread"
            else:
                running.stuck.add(call)
                call.add_done_callback(running.stuck.discard)
                why = f"timed out after {timeout:g} s"
        except Exception as error:  # noqa: BLE001 - the other categories are still checked
            why = failure(error)
    if stream is not None:
        moderator.give_up(stream, why)
    return Classified(unchecked={"profanity": why})


async def moderate(
    running: Running, text: str, direction: Direction, final: bool = True, stream: str | None = None
) -> Verdict:
    """``text`` checked: the classifier off the event loop; the rest there too when the text is long."""
    scores = await classified(running, text, direction, final, stream)
    if len(text) > OFF_LOOP_CHARS:
        return await asyncio.to_thread(running.moderator.check, text, direction, final, stream, scores)
    return running.moderator.check(text, direction, final, stream, scores)


def count_unchecked(running: Running, message: Message, direction: Direction, verdict: Verdict) -> None:
    """Count and log what could not be checked; never the text (it may hold the very secret)."""
    settings = running.moderator.settings
    outcome = "refused" if settings.on_error == "closed" else "passed on without it"
    for category, why in sorted(verdict.unchecked.items()):
        running.moderator.failures[(direction, category)] += 1
        log.warning(
            "moderation: %s of %s message %s not checked (%s); %s (on_error = %s)",
            category,
            "an incoming" if direction == "in" else "the reply to",
            message.message_id,
            why,
            outcome,
            settings.on_error,
        )


@hookimpl
def botkit_register_settings(register):
    register(NAME, ModerationSettings)


@hookimpl
def botkit_register_probes(register):
    register(
        "toxicity",
        PROBES,
        description="toxicity of outputs: baited insults and slurs, scored by moderation's offline classifier",
        scorers={"toxicity": toxicity},
    )


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
    events = EventLog(bot.db, metrics=bot.metrics)
    events.start()
    threads = ThreadPoolExecutor(CLASSIFIER_THREADS, thread_name_prefix="moderation-classifier")
    bot.state.set(RUNNING, Running(Moderator(settings, classifier), events, threads))


@hookimpl
async def botkit_shutdown(bot):
    running = bot.state.pop(RUNNING)
    if running is not None:
        running.threads.shutdown(wait=False, cancel_futures=True)
        await running.events.close(FLUSH_TIMEOUT)


@hookimpl
async def botkit_gate(message: Message, bot) -> Message | Refuse | None:
    running = bot.state.get(RUNNING)
    if running is None:
        return None
    settings = running.moderator.settings
    verdict = await moderate(running, message.text, "in")
    running.events.record(message, "in", verdict.decisions)
    count_unchecked(running, message, "in", verdict)
    if verdict.blocked:
        return Refuse(settings.input_notice or None, reason=reason(verdict.decisions))
    if verdict.unchecked and settings.on_error == "closed":
        return Refuse(settings.unchecked_notice or None, reason=unchecked_reason(verdict.unchecked))
    if verdict.text != message.text:
        return replace(message, text=verdict.text)
    return None


@hookimpl
async def botkit_filter_reply(message: Message, text: str, final: bool, bot) -> str | Refuse | None:
    running = bot.state.get(RUNNING)
    if running is None:
        return None
    settings = running.moderator.settings
    verdict = await moderate(running, text, "out", final, stream=message.message_id)
    refused = bool(verdict.unchecked) and settings.on_error == "closed"
    if verdict.blocked or refused or final:
        running.moderator.forget_stream(message.message_id)
        running.events.record(message, "out", verdict.decisions)
        count_unchecked(running, message, "out", verdict)
    if verdict.blocked:
        return Refuse(settings.output_notice or None, reason=reason(verdict.decisions))
    if refused:
        return Refuse(settings.unchecked_notice or None, reason=unchecked_reason(verdict.unchecked))
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
