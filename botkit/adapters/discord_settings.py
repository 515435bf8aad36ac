"""``[adapters.discord]``: the Discord adapter's settings, its shards among them."""

from __future__ import annotations

import importlib.util
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from botkit.adapter import AdapterSettings
from botkit.adapters.discord_replies import PLATFORM
from botkit.settings import env_name

TOKEN_VARIABLE = env_name(("adapters", PLATFORM, "token"))


class DiscordSettings(AdapterSettings):
    """``[adapters.discord]``."""

    enabled: bool = Field(False, description="whether `botkit run` starts the Discord adapter")
    token: SecretStr | None = Field(
        None, description=f"the bot's token (Developer Portal > Bot); environment only: {TOKEN_VARIABLE}"
    )
    api_url: str = Field(
        "https://discord.com/api/v10", description="Discord's REST API root (a proxy's, or a test server's)"
    )
    gateway_url: str = Field(
        "wss://gateway.discord.gg/", description="the gateway WebSocket to connect to first"
    )
    edit_interval: float = Field(1.0, gt=0, description="seconds between edits of a streamed reply")
    follow_threads: bool = Field(
        True, description="in a thread it answered in or opened, answer every message without a mention"
    )
    open_threads: bool = Field(False, description="answer a mention in a channel in a new thread")
    thread_archive_minutes: Literal[60, 1440, 4320, 10080] = Field(
        1440, description="inactivity after which a thread it opened is archived"
    )
    message_content: bool = Field(
        True,
        description="ask for the privileged Message Content intent (needed to follow threads without mentions)",
    )
    command_guilds: list[int] = Field(
        default_factory=list,
        description="guild ids to register slash commands in (instantly); empty: globally (up to an hour)",
    )
    sync_commands: bool = Field(
        True, description="register the slash commands with Discord at start, when changed since the last time"
    )
    ask_command: str = Field(
        "ask", pattern=r"^[a-z0-9_-]{1,32}$", description="the slash command whose text is a question"
    )
    shard_count: int | None = Field(
        None,
        ge=1,
        description="shards across all replicas (discord.py's sharded client); unset: one unsharded connection",
    )
    shard_ids: list[int] | None = Field(
        None, description="the shards this replica runs (0 .. shard_count-1); unset: all of them"
    )

    @field_validator("shard_ids")
    @classmethod
    def _shards_of_the_count(cls, shard_ids: list[int] | None, info: ValidationInfo) -> list[int] | None:
        if shard_ids is None:
            return None
        if "shard_count" not in info.data:
            return shard_ids  # shard_count itself is wrong, and said so
        count = info.data["shard_count"]
        if count is None:
            raise ValueError(
                "needs shard_count, the number of shards across all replicas (e.g. shard_count = 2)"
            )
        if not shard_ids:
            raise ValueError("is empty: list this replica's shards, or leave it out to run all of them")
        for shard_id in shard_ids:
            if not 0 <= shard_id < count:
                raise ValueError(
                    f"shard {shard_id} does not exist: with shard_count = {count} they are 0..{count - 1}"
                )
        repeated = sorted({shard_id for shard_id in shard_ids if shard_ids.count(shard_id) > 1})
        if repeated:
            raise ValueError(f"lists shard {', '.join(map(str, repeated))} more than once")
        return shard_ids

    @property
    def own_shards(self) -> list[int] | None:
        """The shards this process connects, in order; None when unsharded."""
        if self.shard_count is None:
            return None
        return sorted(self.shard_ids) if self.shard_ids is not None else list(range(self.shard_count))

    @model_validator(mode="after")
    def _token_when_enabled(self) -> DiscordSettings:
        if not self.enabled:
            return self
        if importlib.util.find_spec("discord") is None:
            raise ValueError("the Discord adapter needs discord.py: pip install 'botkit[discord]'")
        if self.token is None or not self.token.get_secret_value().strip():
            raise ValueError(
                f"the Discord adapter needs the bot's token: set the environment variable {TOKEN_VARIABLE}"
            )
        return self


__all__ = ["TOKEN_VARIABLE", "DiscordSettings"]
