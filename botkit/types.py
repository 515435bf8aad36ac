"""The values that travel through botkit: messages in, prompts to a model, replies out."""

from __future__ import annotations

import enum
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import Field


class ConversationScope(enum.StrEnum):
    """Which messages share one conversation (and so one history and one ordering lane).

    Direct messages are always one conversation per DM, whatever the scope.
    """

    CHANNEL = "channel"
    THREAD = "thread"
    USER = "user"  # per user within a channel (and thread)


@dataclass(frozen=True, slots=True)
class User:
    """Someone who writes to the bot. ``id`` is the platform's own id for them."""

    id: str
    name: str = ""
    is_bot: bool = False
    roles: tuple[str, ...] = ()

    @property
    def display_name(self) -> str:
        return self.name or self.id


@dataclass(frozen=True, slots=True)
class Message:
    """One incoming chat message, as an adapter translated it from its platform."""

    text: str
    author: User
    platform: str
    channel_id: str
    thread_id: str | None = None
    is_dm: bool = False
    message_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # Earlier messages of the platform thread that the bot was not shown, oldest first: an
    # adapter reads them when the bot is called into the middle of a thread (Slack). They go
    # into the prompt after the stored history and before this message.
    thread_context: tuple[Turn, ...] = ()

    @property
    def user_key(self) -> str:
        """The author as ``platform:id``, the form used in config (admins, lists)."""
        return f"{self.platform}:{self.author.id}"

    def conversation_key(self, scope: ConversationScope) -> str:
        """The key of the conversation this message belongs to under ``scope``."""
        # The user's names are made only where the key has one (a message asks several times).
        if self.is_dm:
            return self.user_conversation_keys(self.platform, self.author.id)[0]
        key = f"{self.platform}:{self.channel_id}"
        if scope is ConversationScope.CHANNEL:
            return key
        if self.thread_id is not None:
            key = f"{key}:{self.thread_id}"
        if scope is ConversationScope.USER:
            key += self.user_conversation_keys(self.platform, self.author.id)[1]
        return key

    @staticmethod
    def user_conversation_keys(platform: str, user_id: str) -> tuple[str, str]:
        """How conversation keys name a user: their DM's whole key, and the end of each per-user key."""
        return f"{platform}:dm:{user_id}", f":user:{user_id}"


class Role(enum.StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


@dataclass(frozen=True, slots=True)
class Turn:
    """One entry of a conversation as the model sees it."""

    role: Role
    text: str
    speaker: str | None = None  # sender attribution in shared conversations


@dataclass(slots=True)
class Prompt:
    """What the model is asked: a system prompt and the conversation, newest turn last."""

    system: str
    turns: list[Turn]

    @property
    def history(self) -> list[Turn]:
        return self.turns[:-1]

    @property
    def current(self) -> Turn:
        return self.turns[-1]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How the model samples one reply.

    The one declaration of the sampling keys: every field but ``lora`` is also a key
    of ``[backend]`` (its default) and of ``[overrides."<place>"]``, with the bounds
    and description given here (``botkit.sampling`` derives those settings from it).
    """

    max_tokens: Annotated[int, Field(ge=1, description="most tokens one reply may have")] = 512
    temperature: Annotated[float, Field(ge=0.0, le=5.0, description="sampling temperature; 0 is greedy")] = 0.7
    top_p: Annotated[float, Field(gt=0.0, le=1.0, description="nucleus sampling's probability mass")] = 0.95
    top_k: Annotated[int, Field(ge=0, description="sample among the K likeliest tokens; 0: no limit")] = 40
    repeat_penalty: Annotated[float, Field(ge=0.0, description="penalty for repeating tokens; 1.0: none")] = 1.1
    seed: Annotated[int | None, Field(description="fixed sampling seed; unset for a random one")] = None
    stop: Annotated[tuple[str, ...], Field(description="extra stop strings")] = ()
    # The LoRA adapter for this generation: a name the backend knows, NO_LORA for the
    # base model, or None for the backend's active one (see Backend.switch_lora).
    lora: str | None = None


NO_LORA = "none"

# The platform of red-team probes (``botkit redteam``): a conversation of its own that no adapter
# uses, so that probes never join a real user's conversation, and export leaves them out.
REDTEAM_PLATFORM = "redteam"
# The old name, from when "adapter" meant a LoRA adapter too; removed in the next release.
NO_ADAPTER = NO_LORA


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of streamed model output.

    ``tokens`` is what the piece adds to the reply's token count. A backend that
    learns the exact counts only at the end (an OpenAI-compatible server's usage)
    closes with a chunk without text whose ``tokens`` corrects the sum (it may be
    negative) and whose ``prompt_tokens`` replaces botkit's count of the prompt.

    ``truncated`` marks the reply's last chunk when the engine's own finish
    reason says it stopped at the length limit (``max_tokens``, or the end of
    the context window) rather than at the end of its answer: the reply is then
    stored as ``ReplyStatus.TRUNCATED``. A backend sends it only from that
    finish reason, never from a guess.
    """

    text: str
    tokens: int = 1
    prompt_tokens: int | None = None
    truncated: bool = False


class ReplyStatus(enum.StrEnum):
    COMPLETED = "completed"
    TRUNCATED = "truncated"  # the model was cut off at max_tokens (or the context's end), mid-answer
    STOPPED = "stopped"  # the user asked /stop, or the bot shut down
    TIMED_OUT = "timed_out"
    BLOCKED = "blocked"  # an output filter stopped the generation
    FAILED = "failed"  # the backend raised

    @property
    def in_history(self) -> bool:
        """Whether a reply of this status is part of the conversation the model sees next:
        a completed one, and a truncated one (the user saw it and may ask to go on)."""
        return self in HISTORY_STATUSES


# The statuses of replies that are history (``ReplyStatus.in_history``), for queries on stored rows.
HISTORY_STATUSES = frozenset({ReplyStatus.COMPLETED, ReplyStatus.TRUNCATED})


@dataclass(slots=True)
class Reply:
    """A generated reply, handed to after-hooks once delivery is done."""

    text: str
    status: ReplyStatus
    backend: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    first_token_s: float | None = None
    dropped_turns: int = 0
    lora: str | None = None  # the LoRA adapter that generated it, if any
    # While a canary ran on its backend (botkit/canary.py): that canary's id, and the reply's arm there.
    canary_id: int | None = None
    arm: str | None = None  # "control" or "canary"
    # The platform's ids of the message(s) that carry the reply, first one first
    # (what ``Responder.finish`` returned): reactions and edits refer to these.
    platform_message_ids: tuple[str, ...] = ()
    # Made when the message is answered, unique: whoever stores the exchange stores it under this
    # key, so that a write that is retried (a crash, a lost acknowledgement) stores it once.
    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    # Moderation events of this exchange (its message and its reply), added by the moderation plugin
    # in ``botkit_reply_ready`` (``botkit.storage.moderation_event``): whoever stores the exchange
    # stores them in the same transaction, so that a stored exchange never lacks its flags.
    moderation_events: list[dict[str, Any]] = field(default_factory=list)


class Responder(ABC):
    """Where the answers to one incoming message go; each adapter implements it.

    ``send`` delivers a complete message (a command's answer, a notice);
    ``update`` and ``finish`` deliver a streamed reply: ``update`` is called with
    the whole reply so far each time it grows, ``finish`` once with the final text.
    An adapter throttles updates as its platform needs. ``finish`` returns the
    platform's ids of the messages that carry the reply (first part first), so
    that reactions to them can be traced back to the reply; ``None`` where the
    platform has no ids (the console).
    """

    @abstractmethod
    async def send(self, text: str) -> None: ...

    @abstractmethod
    async def update(self, text: str) -> None: ...

    @abstractmethod
    async def finish(self, text: str, status: ReplyStatus) -> Sequence[str] | None: ...


@dataclass(frozen=True, slots=True)
class Refuse:
    """Returned by a gate or an output filter to stop the message or the reply.

    ``notice`` is what the user is told (nothing when ``None``); ``reason`` goes
    to the log and to after-hooks. ``plugin`` is the plugin that refused, filled in
    by botkit (the ``reason`` label of ``botkit_messages_refused_total``).
    """

    notice: str | None = None
    reason: str = ""
    plugin: str = ""


@dataclass(frozen=True, slots=True)
class Reaction:
    """An emoji reaction added to (or removed from) a message, as an adapter saw it.

    ``message_id`` is the platform's id of the message reacted to (for a reply
    of the bot, one of ``Reply.platform_message_ids``). ``emoji`` is the Unicode
    emoji, or the platform's name for a custom one (Slack's ``+1``).
    """

    platform: str
    channel_id: str
    message_id: str
    user: User
    emoji: str
    added: bool = True


@dataclass(frozen=True, slots=True)
class MessageChange:
    """A user edited or deleted a message the platform delivered earlier.

    ``text`` is the new text, or ``None`` when the message was deleted.
    """

    platform: str
    channel_id: str
    message_id: str
    text: str | None
    user: User | None = None

    @property
    def deleted(self) -> bool:
        return self.text is None
