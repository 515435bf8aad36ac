"""Conversation memory: every message and reply stored in SQL, history put back into the prompt.

History is the newest turns of the conversation (scope: ``[bot]
conversation_scope``) that fit ``history_tokens``, counted with the model's
tokenizer when each message was stored. ``/reset`` starts a fresh conversation
(history is kept in the database); ``/history`` shows what the bot remembers.
An edited message is stored (and remembered) as edited; a deleted one loses its
text and leaves history.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import SQLAlchemyError

from botkit import (
    BotAPI,
    Command,
    CommandContext,
    ConversationScope,
    Message,
    MessageChange,
    Prompt,
    Reply,
    Role,
    StateKey,
    Turn,
    hookimpl,
)

from .changes import change_key, change_record, delivery_record
from .spool import Spool
from .store import MemoryStore, StoredTurn, utcnow

log = logging.getLogger("botkit.plugins.memory")

NAME = "memory"
ROLES = {"user": Role.USER, "assistant": Role.ASSISTANT}


class MemorySettings(BaseModel):
    """``[plugins.memory]``."""

    model_config = ConfigDict(extra="forbid")

    history_tokens: int = Field(1500, ge=0, description="most tokens of earlier turns put into the prompt")
    max_turns: int = Field(40, ge=0, description="most earlier turns read for one message")
    attribution: Literal["auto", "always", "never"] = Field(
        "auto",
        description="prefix user turns with the sender's name: 'auto' does so once several people take part",
    )
    retry_interval: float = Field(
        5.0, gt=0, description="seconds between write attempts while the database is down"
    )
    spool_max_bytes: int = Field(50_000_000, ge=0, description="size bound of the on-disk spool")
    flush_timeout: float = Field(10.0, ge=0, description="seconds shutdown waits for pending writes")
    cache_seconds: float = Field(
        300.0,
        ge=0,
        description="keep a conversation's recent turns in memory this long (0: read the database every time)",
    )
    write_delay: float = Field(
        0.05,
        ge=0,
        le=5,
        description="seconds an exchange waits for others to be written with it in one transaction "
        "(fewer transactions when busy; the spool holds it meanwhile; 0: write at once)",
    )


STORE: StateKey[MemoryStore] = StateKey("memory.store")


def memory(bot: BotAPI) -> MemoryStore:
    """The running bot's store (created at start-up)."""
    return bot.state.require(STORE)


def settings_of(bot: BotAPI) -> MemorySettings:
    settings = bot.plugin_settings(NAME)
    assert isinstance(settings, MemorySettings)
    return settings


def shared(message: Message, scope: ConversationScope) -> bool:
    """Whether several people may write in this conversation."""
    return not message.is_dm and scope is not ConversationScope.USER


def fit_budget(turns: list[StoredTurn], budget: int) -> tuple[list[StoredTurn], int]:
    """The newest turns whose token counts add up to at most ``budget``, and how many were dropped."""
    kept: list[StoredTurn] = []
    used = 0
    for turn in reversed(turns):
        if used + turn.token_count > budget:
            break
        kept.append(turn)
        used += turn.token_count
    kept.reverse()
    return kept, len(turns) - len(kept)


@hookimpl
def botkit_register_settings(register):
    register(NAME, MemorySettings)


@hookimpl
def botkit_register_commands(register):
    register(Command("reset", "start a fresh conversation (what was said stays in the log)", reset))
    register(Command("history", "show what I remember of this conversation", show_history))


@hookimpl
async def botkit_startup(bot):
    settings = settings_of(bot)
    storage = bot.settings.storage
    spool = Spool.claim(
        storage.spool_dir,
        "memory",
        settings.spool_max_bytes,
        fsync=storage.sqlite_synchronous == "full",  # the journal is as durable as the database
    )
    # Several replicas: any of them may have written a conversation since this one cached it. A
    # version check would cost the same indexed round trip as the read it saves (docs/storage.md).
    cache_seconds = 0.0 if bot.clustered else settings.cache_seconds
    store = bot.state.set(
        STORE,
        MemoryStore(
            bot.db,
            spool,
            settings.retry_interval,
            cache_seconds,
            write_delay=settings.write_delay,
            metrics=bot.metrics,
        ),
    )
    store.start()


@hookimpl
async def botkit_shutdown(bot):
    store = bot.state.pop(STORE)
    if store is not None:
        await store.close(settings_of(bot).flush_timeout)


@hookimpl(tryfirst=True)
async def botkit_prepare_context(message: Message, prompt: Prompt, bot):
    settings = settings_of(bot)
    key = message.conversation_key(bot.settings.bot.conversation_scope)
    turns = await memory(bot).history(key, settings.max_turns)
    turns, dropped = fit_budget(turns, settings.history_tokens)
    if dropped:
        log.info("memory: %d older turns of %s left out to fit history_tokens", dropped, key)
    attribute = wants_attribution(settings, message, bot.settings.bot.conversation_scope, turns)
    history = [
        Turn(ROLES[turn.role], turn.text, turn.speaker if attribute else None) for turn in turns
    ]
    current = prompt.turns[-1]
    if attribute and current.role is Role.USER and current.speaker is None:
        current = Turn(Role.USER, current.text, speaker=message.author.display_name)
    prompt.turns[:] = [*history, *prompt.turns[:-1], current]


def wants_attribution(
    settings: MemorySettings, message: Message, scope: ConversationScope, turns: list[StoredTurn]
) -> bool:
    """Names go into the prompt when several people take part ('auto'), or as configured."""
    if settings.attribution != "auto":
        return settings.attribution == "always"
    if not shared(message, scope):
        return False
    speakers = {turn.speaker for turn in turns if turn.role == "user"} | {message.author.display_name}
    return len(speakers) > 1


@hookimpl
async def botkit_reply_ready(message: Message, reply: Reply, bot):
    # Journaled before the user sees the reply: a crash from here on loses nothing they saw.
    store = bot.state.get(STORE)
    if store is None:
        return
    scope = bot.settings.bot.conversation_scope
    sent_at = message.created_at.isoformat()
    store.add(
        {
            "id": reply.key,
            "kind": "exchange",
            "scope_key": message.conversation_key(scope),
            "platform": message.platform,
            "channel_id": message.channel_id,
            "thread_id": message.thread_id,
            "is_dm": message.is_dm,
            "at": sent_at,
            "user": {
                "author_id": message.author.id,
                "name": message.author.display_name,
                "speaker": message.author.display_name,
                "message_id": message.message_id,
                "text": message.text,
                "at": sent_at,
                "tokens": await bot.count_tokens(message.text),
            },
            "reply": {
                # NUL cannot be stored in PostgreSQL text; it never belongs in a reply anyway.
                "text": reply.text.replace("\x00", ""),
                "status": reply.status.value,
                "backend": reply.backend,
                "model": reply.model,
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
                "latency_ms": round(reply.latency_s * 1000),
                "at": utcnow().isoformat(),
                "tokens": await bot.count_tokens(reply.text),
                "adapter": reply.lora,  # the messages.adapter column
                "canary_id": reply.canary_id,  # the canary that ran, and its arm (botkit/canary.py)
                "arm": reply.arm,
                "message_ids": [],  # known once delivered: see botkit_after_reply
            },
            # Stored in the exchange's transaction: a stored exchange never lacks its flags.
            "moderation_events": list(reply.moderation_events),
        }
    )


@hookimpl
async def botkit_after_reply(message: Message, reply: Reply, bot):
    # The platform's ids of the delivered reply, for reactions and edits: written after its row.
    store = bot.state.get(STORE)
    if store is not None and reply.platform_message_ids:
        store.add(delivery_record(reply.key, list(reply.platform_message_ids)))


@hookimpl
async def botkit_conversation_handover(conversation_key: str, bot):
    # Another replica may answer this conversation next: it must read what this one queued.
    store = bot.state.get(STORE)
    if store is not None and not await store.written_up_to_now(settings_of(bot).flush_timeout):
        log.warning(
            "memory: the database did not take %s's pending turns within flush_timeout; another replica "
            "answering it now does not see them until they are written",
            conversation_key,
        )


@hookimpl
async def botkit_message_changed(change: MessageChange, bot):
    store = bot.state.get(STORE)
    if store is None:
        return
    text = None if change.text is None else readable(change.text)
    tokens = 0 if text is None else await bot.count_tokens(text)
    record = change_record(
        change.platform, change.channel_id, change.message_id, text, tokens, utcnow().isoformat()
    )
    # Queued like every write, so that it lands after the message's own row even while that
    # row is still pending or spooled; reads apply it meanwhile.
    store.add(record)
    try:
        scope_key = await store.conversation_of(change_key(record))
    except (SQLAlchemyError, OSError):
        scope_key = None  # unknown: every cached history is dropped
        store.forget_conversation(None)
    if scope_key is not None:
        store.forget_conversation(scope_key)


def readable(text: str) -> str:
    """An edit's text without what no database stores faithfully (NUL, broken Unicode).

    The pipeline refuses a message containing them; an edit cannot be refused.
    """
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


@hookimpl
async def botkit_forget_user(platform: str, user_id: str, bot) -> bool:
    # Everything pending goes to the database first, where the deletion then finds it.
    store = bot.state.get(STORE)
    if store is None:
        return True
    store.forget_cached()
    return await store.flush(settings_of(bot).flush_timeout)


async def reset(ctx: CommandContext) -> str:
    scope = ctx.bot.settings.bot.conversation_scope
    memory(ctx.bot).add(
        {"kind": "reset", "scope_key": ctx.message.conversation_key(scope), "at": utcnow().isoformat()}
    )
    return "Started a fresh conversation: I won't use what was said before (it stays in the log)."


async def show_history(ctx: CommandContext) -> str:
    bot = ctx.bot
    settings = settings_of(bot)
    scope = bot.settings.bot.conversation_scope
    turns = await memory(bot).history(ctx.message.conversation_key(scope), settings.max_turns)
    turns, dropped = fit_budget(turns, settings.history_tokens)
    if not turns:
        return "I don't remember anything of this conversation yet."
    lines = ["What I remember of this conversation (oldest first):"]
    for turn in turns:
        if turn.role == "assistant":
            who = "me"
        elif turn.speaker in (None, ctx.message.author.display_name):
            who = "you"
        else:
            who = turn.speaker
        text = turn.text if len(turn.text) <= 300 else turn.text[:297] + "..."
        lines.append(f"{who}: {text}")
    if dropped:
        lines.append(f"({dropped} older messages no longer fit in what I remember.)")
    return "\n".join(lines)
