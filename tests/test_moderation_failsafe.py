"""Moderation fails safe per category: a classifier that raises or hangs takes nothing else with it."""

from __future__ import annotations

import copy
import logging
import threading

import pytest
from sqlalchemy import select
from test_memory import flushed
from test_moderation import GITHUB, NOTICE_IN, config, events

import botkit.plugins.moderation as moderation
from botkit import ReplyStatus
from botkit.errors import ConfigError
from botkit.plugins.moderation import ModerationSettings, Moderator, running_moderator
from botkit.plugins.moderation.normalise import Blocklist
from botkit.storage import MessageRecord
from botkit.testing import WAIT_TIMEOUT, eventually

UNCHECKED = ModerationSettings().unchecked_notice
EMAIL = "bob.smith@example.com"
PRIVATE = f"mail {EMAIL} with key {GITHUB}"
REDACTED = "mail [email removed] with key [secret removed]"


class BrokenClassifier:
    """Raises on every text it is given, quoting it (as errors do): the log must not show it."""

    def __init__(self) -> None:
        self.calls = 0

    def score(self, folded: str) -> float:
        self.calls += 1
        raise ValueError(f"cannot score {folded!r}")


class HangingClassifier:
    """Hangs on texts holding ``trigger`` until released (or, bounded, WAIT_TIMEOUT); others score 0."""

    def __init__(self, trigger: str) -> None:
        self.trigger = trigger
        self.release = threading.Event()
        self.hanging = threading.Event()  # set while a call waits
        self.calls = 0

    def score(self, folded: str) -> float:
        if self.trigger not in folded:
            return 0.0
        self.calls += 1
        self.hanging.set()
        try:
            self.release.wait(WAIT_TIMEOUT)
        finally:
            self.hanging.clear()
        return 0.0


@pytest.fixture
def use_classifier(monkeypatch):
    def use(classifier) -> None:
        monkeypatch.setattr(moderation, "load_model", lambda: classifier)

    return use


async def stored_texts(bot) -> list[str]:
    await flushed(bot)
    async with bot.db.sessions() as session:
        return list(await session.scalars(select(MessageRecord.text).order_by(MessageRecord.id)))


def builtin_scorer_that_raises(broken: BrokenClassifier):
    """botkit's own scorer (checked on the event loop, not on a thread) failing the same way."""
    model = copy.copy(moderation.load_model())  # the loaded model is shared: patch a copy
    model.score = broken.score  # type: ignore[method-assign]
    return model


@pytest.mark.parametrize("where", ["worker thread", "built-in, inline"])
async def test_a_failing_classifier_leaves_blocklist_and_redaction_working(
    make_bot, use_classifier, caplog, where
):
    classifier = BrokenClassifier()
    use_classifier(classifier if where == "worker thread" else builtin_scorer_that_raises(classifier))
    with caplog.at_level(logging.WARNING, logger="botkit.plugins.moderation"):
        async with make_bot(config()) as bot:
            blocked = await bot.chat.say("what a frack")
            passed = await bot.chat.say(PRIVATE)
            bot.backend.say(f"Sure: {EMAIL} and {GITHUB}.")
            answered = await bot.chat.say("repeat it")
            stored = await events(bot)
            texts = await stored_texts(bot)
            failures = running_moderator(bot).failures
    assert classifier.calls >= 3
    assert blocked.texts == [NOTICE_IN]
    assert passed.status is answered.status is ReplyStatus.COMPLETED
    assert [prompt.current.text for prompt in bot.backend.prompts] == [REDACTED, "repeat it"]
    assert answered.final == "Sure: [email removed] and [secret removed]."
    assert not any(EMAIL in text or GITHUB in text for text in texts)
    assert REDACTED in texts and "Sure: [email removed] and [secret removed]." in texts
    assert {(e.direction, e.category, e.action) for e in stored} == {
        ("in", "blocklist", "block"), ("in", "email", "redact"), ("in", "secret", "redact"),
        ("out", "email", "redact"), ("out", "secret", "redact"),
    }  # fmt: skip
    assert failures == {("in", "profanity"): 3, ("out", "profanity"): 2}  # two replies
    assert "profanity of an incoming message" in caplog.text and "ValueError at" in caplog.text
    for secret in ("frack", EMAIL, GITHUB, "cannot score"):
        assert secret not in caplog.text


async def test_on_error_closed_refuses_what_could_not_be_checked(make_bot, use_classifier):
    use_classifier(BrokenClassifier())
    async with make_bot(config(on_error="closed")) as bot:
        refused = await bot.chat.say(PRIVATE)
        blocked = await bot.chat.say("what a frack")  # a block is still a block
        stored = await events(bot)
    assert refused.texts == [UNCHECKED] and blocked.texts == [NOTICE_IN]
    assert bot.backend.requests == []
    assert {(e.category, e.action) for e in stored} == {
        ("email", "redact"),
        ("secret", "redact"),
        ("blocklist", "block"),
    }


async def test_on_error_closed_stops_a_reply_that_could_not_be_checked(make_bot, use_classifier):
    use_classifier(classifier := HangingClassifier("poison"))
    try:
        async with make_bot(config(on_error="closed", timeout=0.2)) as bot:
            bot.backend.say("Here is some poison. And more.")
            reply = await bot.chat.say("hello")
            moderator = running_moderator(bot)
    finally:
        classifier.release.set()
    assert reply.status is ReplyStatus.BLOCKED and reply.final == UNCHECKED
    assert moderator.failures == {("out", "profanity"): 1}


async def test_a_classifier_timeout_skips_profanity_only(make_bot, use_classifier, caplog):
    use_classifier(classifier := HangingClassifier("slow"))
    try:
        with caplog.at_level(logging.WARNING, logger="botkit.plugins.moderation"):
            async with make_bot(config(timeout=0.2)) as bot:
                blocked = await bot.chat.say("slow frack")
                passed = await bot.chat.say(f"slow {PRIVATE}")
                # Long enough for a sentence to close, and be classified, while the reply streams.
                bot.backend.say(
                    "A slow reply. " + "Then a tail of words follows here. " * 6 + f"Mail {EMAIL} now."
                )
                answered = await bot.chat.say("and now?")
                stored = await events(bot)
                failures = running_moderator(bot).failures
    finally:
        classifier.release.set()
    assert blocked.texts == [NOTICE_IN]
    assert passed.status is answered.status is ReplyStatus.COMPLETED
    assert bot.backend.prompts[0].current.text == f"slow {REDACTED}"
    assert EMAIL not in answered.final and "[email removed]" in answered.final
    assert classifier.calls == 3  # a reply whose check timed out is not classified again
    assert {(e.direction, e.category, e.action) for e in stored} == {
        ("in", "blocklist", "block"), ("in", "email", "redact"), ("in", "secret", "redact"),
        ("out", "email", "redact"),
    }  # fmt: skip
    assert failures == {("in", "profanity"): 2, ("out", "profanity"): 1}
    assert "timed out after 0.2 s" in caplog.text and EMAIL not in caplog.text


async def test_a_hung_classifier_does_not_stall_another_channel(make_bot, use_classifier):
    use_classifier(classifier := HangingClassifier("slow"))
    try:
        async with make_bot(config(timeout=WAIT_TIMEOUT * 2)) as bot:
            task, slow = bot.chat.say_nowait("slow question", channel="one")
            await eventually(classifier.hanging.is_set, what="the classifier to hang")
            helped = await bot.chat.say("/help", channel="two")
            answered = await bot.chat.say("hello there", channel="two")
            # Still hanging: the other channel was served meanwhile, not after it.
            assert classifier.hanging.is_set() and not task.done()
            classifier.release.set()
            await task
    finally:
        classifier.release.set()
    assert helped.texts and "/help" in helped.texts[0]
    assert answered.status is slow.status is ReplyStatus.COMPLETED


def test_a_failing_detector_leaves_only_its_own_category_unchecked(monkeypatch):
    def broken(self, text):
        raise RuntimeError(f"cannot read {text}")

    monkeypatch.setattr(Blocklist, "find", broken)
    checker = Moderator(ModerationSettings(blocklist=["frack"]), classifier=None)
    verdict = checker.check(f"frack, {PRIVATE}", "in")
    assert verdict.text == f"frack, {REDACTED}"
    assert {(d.finding.category, d.action) for d in verdict.decisions} == {
        ("email", "redact"),
        ("secret", "redact"),
    }
    assert list(verdict.unchecked) == ["blocklist"]
    assert verdict.unchecked["blocklist"].startswith("RuntimeError at test_moderation_failsafe.py:")
    assert "frack" not in verdict.unchecked["blocklist"]


@pytest.mark.parametrize(
    ("settings", "shown"),
    [
        ({"on_error": "ignore"}, "[plugins.moderation] on_error: Input should be 'open' or 'closed'"),
        ({"timeout": 0}, "[plugins.moderation] timeout: Input should be greater than 0"),
    ],
)
async def test_bad_failure_settings_say_what_is_wrong(make_bot, settings, shown):
    with pytest.raises(ConfigError) as error:
        async with make_bot({"plugins": {"moderation": settings}}):
            pass
    assert shown in str(error.value)
