"""The contract every chat platform adapter implements, and the settings all adapters share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from botkit.api import BotAPI


class AdapterSettings(BaseModel):
    """``[adapters.<name>]`` in config.toml. An adapter extends this with its own keys."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="whether `botkit run` starts this adapter")


class Adapter(ABC):
    """Connects one platform to the bot: platform events in, replies out. No business logic.

    ``run`` returns when the platform connection ends or ``close`` is called;
    the bot is started before ``run`` and stopped after it.
    """

    name: str

    def __init__(self, bot: BotAPI, settings: AdapterSettings) -> None:
        self.bot = bot
        self.settings = settings

    @abstractmethod
    async def run(self) -> None:
        """Receive messages and hand each to ``self.bot.handle`` until closed."""

    def is_connected(self) -> bool:
        """Whether the platform connection is up now (``/readyz``); an adapter without one is, while it runs."""
        return True

    async def close(self) -> None:  # noqa: B027 - optional: most need nothing
        """Stop receiving; ``run`` returns soon after."""
