"""AI disclosure: an optional label before, or a footer after, every generated reply."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from botkit import hookimpl

NAME = "disclosure"


class DisclosureSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field("", description="the label, e.g. '🤖 AI-generated'; empty for none")
    position: Literal["header", "footer"] = Field(
        "footer",
        description="'header': shown from the first streamed words; 'footer': added to the final reply",
    )


@hookimpl
def botkit_register_settings(register):
    register(NAME, DisclosureSettings)


@hookimpl(trylast=True)
def botkit_filter_reply(text: str, final: bool, bot) -> str | None:
    settings = bot.plugin_settings(NAME)
    if not settings.text:
        return None
    if settings.position == "header":
        return f"{settings.text}\n{text}"
    return f"{text}\n\n{settings.text}" if final else None
