"""``[adapters.slack]``: the Slack adapter's settings, and what each mode needs from the environment."""

from __future__ import annotations

import importlib.util
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_core import PydanticCustomError

from botkit.adapter import AdapterSettings
from botkit.adapters.slack_messages import PLATFORM
from botkit.settings import env_name

SLASH_NAME = r"^/[a-z0-9_.-]{1,31}$"


class SlackSettings(AdapterSettings):
    """``[adapters.slack]``."""

    enabled: bool = Field(False, description="whether `botkit run` starts the Slack adapter")
    mode: Literal["socket", "http"] = Field("socket", description="'socket': Socket Mode; 'http': Events API")
    # Secrets, from the environment only: BOTKIT_ADAPTERS__SLACK__BOT_TOKEN, __APP_TOKEN, __SIGNING_SECRET.
    bot_token: SecretStr | None = Field(None, description="Bot User OAuth Token (xoxb-...)")
    app_token: SecretStr | None = Field(None, description="mode 'socket': an app-level token (xapp-...)")
    signing_secret: SecretStr | None = Field(None, description="mode 'http': the app's Signing Secret")
    api_url: str = Field("https://slack.com/api/", description="Web API root (a proxy's, a test server's)")
    host: str = Field("0.0.0.0", description="mode 'http': the address the events endpoint listens on")
    port: int = Field(3000, ge=0, le=65535, description="mode 'http': its port (0: any free port)")
    path: str = Field("/slack/events", pattern=r"^/", description="mode 'http': its path (Request URL)")
    edit_interval: float = Field(1.0, gt=0, description="seconds between edits of a streamed reply")
    message_limit: int = Field(
        4000,
        ge=100,
        le=40000,
        description="longest message in characters as sent (escapes included); longer replies continue in more",
    )
    thread_messages: int = Field(
        50, ge=0, description="most earlier thread messages read when mentioned mid-thread (0: none)"
    )
    ask_command: str = Field("/ask", pattern=SLASH_NAME, description="slash command whose text is a question")
    command: str = Field(
        "/botkit", pattern=SLASH_NAME, description="slash command that runs a bot command: '/botkit reset'"
    )
    rate_limit_retries: int = Field(10, ge=0, description="times one Web API call waits out a 429")

    @field_validator("api_url")
    @classmethod
    def _api_root_ends_with_a_slash(cls, value: str) -> str:
        # slack_sdk appends the method name ("chat.postMessage") to this root.
        return value if value.endswith("/") else value + "/"

    @model_validator(mode="after")
    def _credentials_for_the_mode(self) -> SlackSettings:
        if not self.enabled:
            return self
        if not _installed("slack_bolt"):
            raise PydanticCustomError(
                "slack", "the Slack adapter needs slack-bolt: pip install 'botkit[slack]'"
            )
        needed = [("bot_token", "xoxb-", "the app's Bot User OAuth Token")]
        if self.mode == "socket":
            needed.append(("app_token", "xapp-", "an app-level token with the connections:write scope"))
        else:
            needed.append(("signing_secret", "", "the app's Signing Secret"))
        for name, prefix, what in needed:
            value: SecretStr | None = getattr(self, name)
            variable = env_name(("adapters", PLATFORM, name))
            if value is None or not value.get_secret_value().strip():
                raise PydanticCustomError(
                    "slack", f"mode '{self.mode}' needs {what}: set the environment variable {variable}"
                )
            if not value.get_secret_value().startswith(prefix):
                raise PydanticCustomError(
                    "slack", f"{variable} does not hold {what}, which starts with '{prefix}'"
                )
        return self


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except ImportError:
        return False


__all__ = ["SLASH_NAME", "SlackSettings"]
