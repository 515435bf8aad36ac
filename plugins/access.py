"""Access control: who is an admin, and who may talk to the bot where (allow and deny lists, DMs).

Every entry names its platform: users ``"discord:1234"``, channels
``"slack:C0456"``, roles or user groups ``"discord:987"`` / ``"slack:S0123"``.
Deny lists beat allow lists; an empty allow list allows everyone. Admins are
always let through. Other plugins ask ``bot.is_admin(user, message)``, which
this plugin answers through the ``botkit_is_admin`` hook.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, Field, field_validator

from botkit import Message, Refuse, hookimpl

log = logging.getLogger("botkit.plugins.access")

NAME = "access"


class AccessSettings(BaseModel):
    """``[plugins.access]``."""

    model_config = ConfigDict(extra="forbid")

    admin_roles: list[str] = Field(
        default_factory=list, description="roles / user groups whose members are admins"
    )
    allow_users: list[str] = Field(default_factory=list, description="only these users (empty: everyone)")
    deny_users: list[str] = Field(default_factory=list, description="never these users")
    allow_channels: list[str] = Field(default_factory=list, description="only in these channels (empty: all)")
    deny_channels: list[str] = Field(default_factory=list, description="never in these channels")
    allow_roles: list[str] = Field(default_factory=list, description="members of these roles are allowed too")
    deny_roles: list[str] = Field(default_factory=list, description="members of these roles are refused")
    dms: bool = Field(True, description="answer direct messages")
    refusal: str = Field("", description="what a refused user is told; empty: nothing")

    @field_validator(
        "admin_roles",
        "allow_users",
        "deny_users",
        "allow_channels",
        "deny_channels",
        "allow_roles",
        "deny_roles",
    )
    @classmethod
    def _platform_prefixed(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            platform, _, ident = entry.partition(":")
            if not platform or not ident:
                raise ValueError(f"{entry!r} must be 'platform:id', e.g. 'discord:1234' or 'slack:U0123'")
        return entries


def roles_of(message: Message) -> set[str]:
    return {f"{message.platform}:{role}" for role in message.author.roles}


def refusal_reason(settings: AccessSettings, message: Message) -> str | None:
    """Why ``message`` may not be answered, or ``None`` when it may."""
    user, roles = message.user_key, roles_of(message)
    channel = f"{message.platform}:{message.channel_id}"
    if user in settings.deny_users:
        return "user denied"
    if roles & set(settings.deny_roles):
        return "role denied"
    if message.is_dm and not settings.dms:
        return "direct messages are off"
    if not message.is_dm and channel in settings.deny_channels:
        return "channel denied"
    if not message.is_dm and settings.allow_channels and channel not in settings.allow_channels:
        return "channel not allowed"
    if (settings.allow_users or settings.allow_roles) and not (
        user in settings.allow_users or roles & set(settings.allow_roles)
    ):
        return "user not allowed"
    return None


@hookimpl
def botkit_register_settings(register):
    register(NAME, AccessSettings)


@hookimpl
def botkit_is_admin(user, message, bot) -> bool | None:
    if message is None:
        return None
    settings = bot.plugin_settings(NAME)
    if roles_of(message) & set(settings.admin_roles):
        return True
    return None  # the [bot] admins list decides


@hookimpl(tryfirst=True)
async def botkit_gate(message: Message, bot) -> Refuse | None:
    settings = bot.plugin_settings(NAME)
    reason = refusal_reason(settings, message)
    if reason is None or await bot.is_admin(message.author, message):
        return None
    log.info(
        "access: refused %s in %s:%s (%s)", message.user_key, message.platform, message.channel_id, reason
    )
    return Refuse(settings.refusal or None, reason=f"access: {reason}")
