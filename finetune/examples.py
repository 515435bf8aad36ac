"""The values an export passes along: stored messages as read, their feedback, and training examples."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from botkit import Prompt, Role, Turn

# Reactions read as a vote on the bot's reply: the Unicode emoji and the names platforms use for them
# (Slack sends names such as "+1"). Anything else is neither.
POSITIVE_REACTIONS = frozenset(
    {"👍", "👍🏻", "👍🏼", "👍🏽", "👍🏾", "👍🏿", "+1", "thumbsup", "❤️", "heart", "✅", "white_check_mark",
     "🎉", "tada", "💯", "100"}
)  # fmt: skip
NEGATIVE_REACTIONS = frozenset(
    {"👎", "👎🏻", "👎🏼", "👎🏽", "👎🏾", "👎🏿", "-1", "thumbsdown", "❌", "x", "🚫", "no_entry_sign"}
)  # fmt: skip

FORMATS = ("alpaca", "alpaca-jsonl", "chat", "sharegpt", "preference")
FeedbackSelection = Literal["any", "rated", "unrated"]
FeedbackPolicy = Literal["off", "approved", "weighted"]
PiiPolicy = Literal["scrub", "drop", "off"]
PreferencePrompt = Literal["chat", "alpaca"]
# The exported formats training reads (not "preference": pairs, no single answer).
TrainingFormat = Literal["chat", "sharegpt", "alpaca-jsonl", "alpaca"]

REVIEW = "review"  # feedback kind of an admin's decision in the review queue
APPROVED = "approved"
REJECTED = "rejected"
CORRECTION = "correction"


@dataclass(slots=True)
class StoredMessage:
    """One ``messages`` row as the export reads it (with its conversation's ``is_dm``)."""

    id: int
    conversation_id: int
    user_id: int | None
    reply_to_id: int | None
    role: str
    text: str
    speaker: str | None
    platform: str
    channel_id: str
    thread_id: str | None
    is_dm: bool
    platform_message_id: str | None
    created_at: datetime
    backend: str | None
    model: str | None
    adapter: str | None
    status: str | None
    edited_at: datetime | None
    deleted_at: datetime | None


@dataclass(slots=True)
class Feedback:
    """What people said about one bot reply: votes, the admin's review decision, the newest correction."""

    up: int = 0
    down: int = 0
    review: str | None = None  # APPROVED or REJECTED: the newest decision wins
    correction: str | None = None
    rows: int = 0

    @property
    def net(self) -> int:
        return self.up - self.down

    def score(self, corrections: bool) -> int:
        """Votes up minus down, +1 for an admin's approval or a correction that replaces the answer.

        Without ``corrections`` a correction counts -1: it says the bot's own answer was wrong.
        """
        corrected = self.correction is not None
        if self.review == APPROVED or (corrected and corrections):
            return self.net + 1
        return self.net - 1 if corrected else self.net

    def approved(self, corrections: bool) -> bool:
        """Not rejected, and approved by an admin, corrected (when corrections apply) or voted up."""
        if self.review == REJECTED:
            return False
        return self.review == APPROVED or self.score(corrections) > 0

    def add(self, kind: str, value: str | None, score: int | None, correction: str | None) -> None:
        """Count one ``feedback`` row; rows must come oldest first."""
        self.rows += 1
        if kind == "reaction" and value is not None:
            if value in POSITIVE_REACTIONS:
                self.up += 1
            elif value in NEGATIVE_REACTIONS:
                self.down += 1
        elif kind == "score" and score is not None:
            if score > 0:
                self.up += 1
            elif score < 0:
                self.down += 1
        elif kind == REVIEW and value in (APPROVED, REJECTED):
            self.review = value
        elif kind == CORRECTION and correction and correction.strip():
            self.correction = correction


@dataclass(slots=True)
class Example:
    """One training example: a bot reply with what preceded it in its conversation.

    ``history`` holds the earlier exchanges as turns (already curated and
    scrubbed); ``output`` is the answer to learn, the correction where there
    is one; ``rejected`` keeps the bot's own answer when a correction replaced it.
    """

    conversation_id: int
    reply_id: int
    created_at: datetime
    platform: str
    channel_id: str
    backend: str | None
    model: str | None
    adapter: str | None
    status: str | None
    system: str
    history: list[Turn]
    instruction: str
    speaker: str | None
    output: str
    feedback: Feedback
    moderated: bool = False
    rejected: str | None = None
    weight: int = 1

    @property
    def truncated(self) -> bool:
        """Whether ``output`` is the bot's answer as cut at max_tokens (not a correction replacing it)."""
        return self.status == "truncated" and self.rejected is None

    def prompt(self) -> Prompt:
        """The prompt the model should have been given (``botkit.prompts`` renders it)."""
        return Prompt(self.system, [*self.history, Turn(Role.USER, self.instruction, self.speaker)])
