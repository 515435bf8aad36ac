"""Mention safety: whatever the model writes, a reply pings nobody but the person it answers.

Neutralises mass mentions (``@everyone``, ``@here``, Slack's ``<!channel>``,
``<!here>``, ``<!everyone>``), role and user-group pings (``<@&id>``,
``<!subteam^id>``) and user pings (``<@id>``, ``<@!id>``) other than the
message's author. Adapters also send platform-level "no pings" flags; this
filter makes the rule hold on every platform and in stored text alike.
E-mail addresses (``ops@channel.io``, ``team@here.com``) are not mentions and
are left as they are.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from botkit import Message, hookimpl
from botkit.detectors import rules_for, scan

NAME = "mentions"
ZERO_WIDTH = "\u200b"

_MASS = re.compile(r"@(everyone|here|channel)\b", re.IGNORECASE)
_SLACK_SPECIAL = re.compile(r"<!(channel|here|everyone)(\|[^>]*)?>", re.IGNORECASE)
_SLACK_GROUP = re.compile(r"<!subteam\^([A-Z0-9]+)(\|([^>]*))?>")
_DISCORD_ROLE = re.compile(r"<@&(\d+)>")
_USER = re.compile(r"<@!?([A-Za-z0-9]+)(\|[^>]*)?>")
# The moderation plugin's e-mail rule: what it takes for an address is no mention here either.
_EMAIL = rules_for(["email"])


class MentionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allow_author: bool = Field(True, description="the reply may mention the person it answers")


def neutralise(text: str, author_id: str | None) -> str:
    """``text`` with every ping made inert (readable, but notifying nobody)."""
    text = _SLACK_SPECIAL.sub(lambda m: f"@{ZERO_WIDTH}{m.group(1).lower()}", text)
    text = _SLACK_GROUP.sub(lambda m: f"@{ZERO_WIDTH}{m.group(3) or 'group'}", text)
    text = _DISCORD_ROLE.sub(lambda m: f"@{ZERO_WIDTH}role", text)
    text = _USER.sub(lambda m: m.group(0) if m.group(1) == author_id else f"@{ZERO_WIDTH}{m.group(1)}", text)
    addresses = scan(_EMAIL, text)

    def mass(match: re.Match[str]) -> str:
        if any(address.start < match.start() < address.end for address in addresses):
            return match.group(0)
        return f"@{ZERO_WIDTH}{match.group(1)}"

    return _MASS.sub(mass, text)


@hookimpl
def botkit_register_settings(register):
    register(NAME, MentionSettings)


@hookimpl(trylast=True)
def botkit_filter_reply(message: Message, text: str, bot) -> str:
    settings = bot.plugin_settings(NAME)
    return neutralise(text, message.author.id if settings.allow_author else None)
