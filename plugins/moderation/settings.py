"""``[plugins.moderation]``: the blocklist, the classifier threshold, an action per category and direction, failures."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .normalise import Blocklist

Action = Literal["block", "redact", "flag", "off"]


class Actions(BaseModel):
    """What happens when a category is found: block (with the notice), redact, flag (record only) or off."""

    model_config = ConfigDict(extra="forbid")

    blocklist: Action = Field("block", description="words and patterns of the blocklist")
    profanity: Action = Field("flag", description="the classifier's score reaches profanity_threshold")
    email: Action = Field("redact", description="e-mail addresses")
    phone: Action = Field("redact", description="phone numbers")
    card: Action = Field("redact", description="payment card numbers (Luhn-checked)")
    secret: Action = Field("redact", description="API keys, tokens, private keys, password assignments")
    injection: Action = Field("flag", description="prompt-injection and jailbreak attempts")

    def enabled(self) -> dict[str, str]:
        return {category: action for category, action in self.model_dump().items() if action != "off"}


class OutputActions(Actions):
    """The same for what the model writes; a model's own text is not looked at for injection."""

    injection: Action = Field("off", description="prompt-injection phrases in the model's reply")


class ModerationSettings(BaseModel):
    """``[plugins.moderation]``."""

    model_config = ConfigDict(extra="forbid")

    blocklist: list[str] = Field(
        default_factory=list,
        description="words and phrases, matched as whole words through case, accents, leetspeak",
    )
    blocklist_patterns: list[str] = Field(
        default_factory=list, description="regular expressions, searched in the folded text of each sentence"
    )
    profanity_threshold: float = Field(
        0.9, gt=0, le=1, description="classifier score at which profanity is found"
    )
    input_actions: Actions = Field(default_factory=Actions, description="actions on what users write")
    output_actions: OutputActions = Field(
        default_factory=OutputActions, description="actions on what the model writes"
    )
    input_notice: str = Field(
        "Sorry, I can't answer that message: it contains something this bot doesn't allow.",
        description="what a user whose message is blocked is told; empty: nothing",
    )
    output_notice: str = Field(
        "Sorry, I stopped that answer: it contained something this bot doesn't allow.",
        description="what replaces a blocked reply; empty: nothing",
    )
    on_error: Literal["open", "closed"] = Field(
        "open",
        description="when a category cannot be checked (its detector fails or times out): "
        "open lets the message on without that category, closed refuses it",
    )
    timeout: float = Field(
        1.0,
        gt=0,
        description="seconds a classifier on the worker threads (any but botkit's own) may take on one "
        "message before profanity is skipped",
    )
    unchecked_notice: str = Field(
        "Sorry, I can't pass that on right now: moderation could not check it. Please try again later.",
        description='what the user is told when on_error = "closed" refuses a message or stops a reply',
    )

    @field_validator("blocklist")
    @classmethod
    def _words(cls, value: list[str]) -> list[str]:
        Blocklist(value)  # raises ValueError naming the entry
        return value

    @field_validator("blocklist_patterns")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"{pattern!r} is not a valid regular expression: {error}") from None
        return value
