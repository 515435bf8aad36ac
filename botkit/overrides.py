"""Per-place settings: the system prompt, backend, LoRA adapter and sampling for one channel, thread or DM.

``[overrides."<place>"]`` tables in config.toml, where a place is
``platform:channel`` (the channel and its threads), ``platform:channel/thread``
(one thread) or ``platform:dm`` (every direct message on that platform). For a
message, the thread's table wins over its channel's, which wins over the global
``[bot]`` / ``[backend]`` values; a DM takes its own channel's table, else
``platform:dm``. Each key falls back separately, so a thread may change only
the temperature and keep its channel's system prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from pydantic import ConfigDict, Field

from botkit.renamed_keys import RenamedKeys
from botkit.sampling import PlaceSampling
from botkit.types import NO_LORA, Message, SamplingParams

PLACE = re.compile(r"^(?P<platform>[A-Za-z0-9_-]+):(?P<channel>[^/\s]+)(?:/(?P<thread>[^/\s]+))?$")
DM = "dm"


class PlaceOverride(PlaceSampling, RenamedKeys):
    """One ``[overrides."<place>"]`` table. Unset keys fall back to the parent place, then globally.

    Besides its own keys it takes the sampling keys (``PlaceSampling``).
    """

    model_config = ConfigDict(extra="forbid")
    renamed_keys: ClassVar[dict[str, str]] = {"adapter": "lora"}

    system_prompt: str | None = Field(None, description="system prompt here instead of [bot] system_prompt")
    backend: str | None = Field(
        None, description="'default' ([backend]) or the name of a [backends.<name>] table"
    )
    lora: str | None = Field(
        None, description=f"LoRA adapter by name (from the backend's loras), or {NO_LORA!r} for the base model"
    )


def check_place(place: str) -> str | None:
    """Why ``place`` is not a valid override key, or None when it is."""
    match = PLACE.match(place)
    if match is None:
        return (
            "a place is 'platform:channel', 'platform:channel/thread' or 'platform:dm', "
            'e.g. [overrides."discord:123456789"]'
        )
    if match["channel"] == DM and match["thread"]:
        return "'platform:dm' takes no thread"
    return None


def places_for(message: Message) -> list[str]:
    """The override keys that apply to ``message``, most specific first."""
    platform = message.platform
    if message.is_dm:
        return [f"{platform}:{message.channel_id}", f"{platform}:{DM}"]
    places = [f"{platform}:{message.channel_id}"]
    if message.thread_id is not None:
        places.insert(0, f"{platform}:{message.channel_id}/{message.thread_id}")
    return places


@dataclass(frozen=True, slots=True)
class Choice:
    """What answers one message: which backend, with which system prompt and sampling."""

    backend: str
    system_prompt: str
    params: SamplingParams


def merged(overrides: dict[str, PlaceOverride], message: Message) -> dict[str, object]:
    """The keys set for ``message``'s places, the most specific place winning per key."""
    values: dict[str, object] = {}
    for place in reversed(places_for(message)):
        override = overrides.get(place)
        if override is not None:
            values.update(override.model_dump(exclude_none=True))
    return values
