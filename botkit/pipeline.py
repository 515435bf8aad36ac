"""The path of one message: gates, commands, context, backend, filters, delivery, after-hooks."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from botkit.commands import Command, CommandContext, parse_command
from botkit.errors import QueueFull
from botkit.generation import GenerationCancelled, Ticket
from botkit.hookcall import call_all, run_chain
from botkit.types import (
    NO_LORA,
    Message,
    Prompt,
    Refuse,
    Reply,
    ReplyStatus,
    Responder,
    Role,
    SamplingParams,
    Turn,
)

if TYPE_CHECKING:
    from botkit.backend_set import BackendSlot
    from botkit.bot import Bot

log = logging.getLogger("botkit.pipeline")

EMPTY_REPLY = "(the model gave an empty answer)"
FAILED_REPLY = "Sorry, something went wrong while I was answering. Please try again."


def readable(text: str) -> bool:
    """False for text no database stores faithfully: NUL bytes, unpaired surrogates."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class ConversationLanes:
    """One FIFO lock per conversation: its messages are handled in arrival order."""

    def __init__(self) -> None:
        self._lanes: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._lanes.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._lanes[key]

    def __len__(self) -> int:
        return len(self._lanes)


class Pipeline:
    """Runs each incoming message through the hooks; one instance per bot."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot
        self.lanes = ConversationLanes()
        self._in_flight: set[asyncio.Future[None]] = set()
        # Numbers messages as their handling starts: the order they take the model in.
        self._arrivals = itertools.count()

    async def handle(self, message: Message, responder: Responder) -> None:
        """Answer ``message`` through ``responder``. Never raises for a bad message or plugin."""
        if not message.text.strip():
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._in_flight.add(done)
        try:
            command = self._command_for(message.text)
            if command is not None and command.immediate:
                await self._process(message, responder)
            else:
                async with self.lanes.hold(
                    message.conversation_key(self.bot.settings.bot.conversation_scope)
                ):
                    await self._process(message, responder)
        except Exception:
            log.exception("failed to handle message %s from %s", message.message_id, message.user_key)
        finally:
            done.set_result(None)
            self._in_flight.discard(done)

    async def drain(self) -> None:
        """Wait until every message being handled now is finished."""
        if self._in_flight:
            await asyncio.wait(list(self._in_flight))

    def _command_for(self, text: str) -> Command | None:
        parsed = parse_command(text.strip(), self.bot.settings.bot.command_prefix)
        return self.bot.registry.commands.get(parsed[0]) if parsed else None

    async def _process(self, message: Message, responder: Responder) -> None:
        arrival = next(self._arrivals)
        limit = self.bot.settings.bot.max_message_chars
        if len(message.text) > limit:
            await responder.send(
                f"Sorry, your message is too long for me ({len(message.text):,} characters; "
                f"the limit is {limit:,}). Please shorten it or split it up."
            )
            return
        if not readable(message.text):
            await responder.send(
                "Sorry, your message contains characters I can't read (a NUL byte or broken Unicode). "
                "Please send it again without them."
            )
            return
        hook = self.bot.hook
        gated = await run_chain(hook.botkit_gate, "message", message, Message, bot=self.bot)
        if isinstance(gated, Refuse):
            log.info("message %s from %s refused: %s", message.message_id, message.user_key, gated.reason)
            if gated.notice:
                await responder.send(gated.notice)
            return
        message = gated
        if not message.text.strip():
            return
        prefix = self.bot.settings.bot.command_prefix
        parsed = parse_command(message.text.strip(), prefix)
        if parsed is not None:
            await self._run_command(message, responder, *parsed)
            return
        await self._answer(message, responder, arrival)

    async def _run_command(self, message: Message, responder: Responder, name: str, args: str) -> None:
        prefix = self.bot.settings.bot.command_prefix
        command = self.bot.registry.commands.get(name)
        if command is None:
            await responder.send(f"Unknown command {prefix}{name}. Type {prefix}help to see the commands.")
            return
        if command.admin_only and not await self.bot.is_admin(message.author, message):
            log.warning("refused admin command %s%s from non-admin %s", prefix, name, message.user_key)
            await responder.send(f"Sorry, {prefix}{name} is for admins only.")
            return
        try:
            answer = await command.handler(CommandContext(message, args, self.bot, responder))
        except Exception:
            plugin = self.bot.registry.owner("command", name)
            log.exception("command %s%s of plugin %r failed", prefix, name, plugin)
            answer = f"Sorry, {prefix}{name} failed; the error has been logged."
        if answer:
            await responder.send(answer)

    async def _answer(self, message: Message, responder: Responder, arrival: int) -> None:
        bot = self.bot
        slot, system_prompt, params = bot.choose(message)
        backend = slot.backend
        prompt = Prompt(system=system_prompt, turns=[*message.thread_context, Turn(Role.USER, message.text)])
        await call_all(bot.hook.botkit_prepare_context, message=message, prompt=prompt, bot=bot)
        if not prompt.turns:
            log.error("prepare_context hooks left no turns for message %s; not answered", message.message_id)
            return
        budget = backend.context_window - params.max_tokens
        prompt_tokens = await backend.count_tokens(prompt)
        dropped = 0
        while prompt_tokens > budget and len(prompt.turns) > 1:
            del prompt.turns[0]
            dropped += 1
            prompt_tokens = await backend.count_tokens(prompt)
        if dropped:
            log.info("dropped %d oldest turns of %s to fit the context window", dropped, message.message_id)
        if prompt_tokens > budget:
            await responder.send(
                f"Sorry, your message is too long for the model ({prompt_tokens:,} tokens; "
                f"it can take {max(budget, 0):,}). Please shorten it."
            )
            return

        ticket = Ticket(owner=bot.generation_owner(message), order=arrival)
        queue = slot.queue
        try:
            place = queue.enqueue(ticket)
        except QueueFull:
            await responder.send("I'm answering a lot of people right now. Please try again in a minute.")
            return
        lora = params.lora if params.lora is not None else backend.active_lora
        reply = Reply(
            "",
            ReplyStatus.STOPPED,
            slot.type_name,
            backend.model_name,
            prompt_tokens,
            dropped_turns=dropped,
            lora=None if lora == NO_LORA else lora,
        )
        try:
            if place:
                ahead = "1 request" if place == 1 else f"{place} requests"
                await responder.send(
                    f"The model is busy; {ahead} ahead of you. I'll answer as soon as I can."
                )
            await queue.wait_turn(ticket)
            await self._generate(message, prompt, params, slot, ticket, responder, reply)
        except GenerationCancelled:
            pass  # /stop while waiting: ``reply`` stays empty and marked stopped
        finally:
            queue.release(ticket)
        await call_all(bot.hook.botkit_after_reply, message=message, reply=reply, bot=bot)

    async def _generate(
        self,
        message: Message,
        prompt: Prompt,
        params: SamplingParams,
        slot: BackendSlot,
        ticket: Ticket,
        responder: Responder,
        reply: Reply,
    ) -> None:
        """Stream the backend's answer through the output filters to the responder; fill ``reply``."""
        bot = self.bot
        filters = bot.hook.botkit_filter_reply
        started = time.monotonic()
        raw, shown = "", ""
        status = ReplyStatus.COMPLETED
        refusal: Refuse | None = None
        try:
            async with asyncio.timeout(slot.settings.timeout):
                async for chunk in slot.backend.stream(prompt, params, ticket.cancel):
                    if reply.first_token_s is None:
                        reply.first_token_s = time.monotonic() - started
                    raw += chunk.text
                    reply.completion_tokens += chunk.tokens
                    filtered = await run_chain(
                        filters, "text", raw, str, message=message, final=False, bot=bot
                    )
                    if isinstance(filtered, Refuse):
                        ticket.cancel.set()
                        status, refusal = ReplyStatus.BLOCKED, filtered
                        break
                    if filtered != shown:
                        shown = filtered
                        await responder.update(shown)
            if status is ReplyStatus.COMPLETED and ticket.cancel.is_set():
                status = ReplyStatus.STOPPED
        except TimeoutError:
            ticket.cancel.set()
            status = ReplyStatus.TIMED_OUT
        except Exception:
            log.exception(
                "backend %r (%s) failed on message %s", slot.name, slot.type_name, message.message_id
            )
            status = ReplyStatus.FAILED

        if refusal is None:
            final = await run_chain(filters, "text", raw, str, message=message, final=True, bot=bot)
            if isinstance(final, Refuse):
                status, refusal = ReplyStatus.BLOCKED, final
            else:
                text = final
        if refusal is not None:
            log.info("reply to %s blocked: %s", message.message_id, refusal.reason)
            text = refusal.notice or ""
        text = self._with_status_note(text, status, slot.settings.timeout)
        reply.text, reply.status = text, status
        reply.latency_s = time.monotonic() - started
        delivered = await responder.finish(text, status)
        reply.platform_message_ids = tuple(delivered or ())

    def _with_status_note(self, text: str, status: ReplyStatus, seconds: float) -> str:
        if status is ReplyStatus.COMPLETED:
            return text if text.strip() else EMPTY_REPLY
        if status is ReplyStatus.STOPPED:
            return f"{text} [stopped]".lstrip()
        if status is ReplyStatus.TIMED_OUT:
            return f"{text} [stopped: the answer took longer than {seconds:g} s]".lstrip()
        if status is ReplyStatus.FAILED:
            return f"{text}\n\n{FAILED_REPLY}" if text.strip() else FAILED_REPLY
        return text
