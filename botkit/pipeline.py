"""The path of one message: gates, commands, context, backend, filters, delivery, after-hooks."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from botkit.backend_set import DEFAULT, BackendSlot
from botkit.canary import Canaries
from botkit.commands import Command, CommandContext, parse_command
from botkit.context_fit import ContextFit, fit_context
from botkit.detectors import has_tags, strip_hidden_tags
from botkit.errors import QueueFull
from botkit.generation import GenerationCancelled, Ticket
from botkit.hookcall import call_all, run_chain
from botkit.lanes import ConversationLanes
from botkit.log_events import ANSWERED
from botkit.logs import message_context
from botkit.overrides import Choice, merged
from botkit.reply_updates import Streamed, StreamedUpdates
from botkit.sampling import with_values
from botkit.types import (
    NO_LORA,
    Chunk,
    Message,
    Prompt,
    Refuse,
    Reply,
    ReplyStatus,
    Responder,
    Role,
    SamplingParams,
    Turn,
    User,
)

if TYPE_CHECKING:
    from botkit.api import BotAPI
    from botkit.cluster import ClusterLocks
    from botkit.metrics import MessageMetrics
    from botkit.registry import Registry
    from botkit.settings import Settings

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


def without_hidden_text(message: Message) -> Message:
    """``message`` without text hidden in Unicode tag characters ("ASCII smuggling").

    Taken out after the gates, which see it (moderation reads it as ASCII), and
    before commands, memory and the model, which must not.
    """
    turns = message.thread_context
    if not has_tags(message.text) and not any(has_tags(turn.text) for turn in turns):
        return message
    return replace(
        message,
        text=strip_hidden_tags(message.text),
        thread_context=tuple(replace(turn, text=strip_hidden_tags(turn.text)) for turn in turns),
    )


@dataclass(frozen=True, slots=True)
class CommandReading:
    """A message's text as read on arrival: the command it names, if any, and that command."""

    text: str
    prefix: str
    call: tuple[str, str] | None  # (name, arguments); None: not a command
    command: Command | None  # registered under that name on arrival; None: none is

    @property
    def immediate(self) -> bool:
        return self.command is not None and self.command.immediate


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One message's request for the model, from its place in the queue to its reply."""

    message: Message
    slot: BackendSlot
    prompt: Prompt
    params: SamplingParams
    fit: ContextFit
    ticket: Ticket
    model: str
    lora: str | None  # the LoRA adapter it is generated with; None for the base model
    canary_id: int | None = None  # the canary running on its backend (botkit/canary.py), and its arm there
    arm: str | None = None

    def reply(
        self,
        text: str,
        status: ReplyStatus,
        *,
        prompt_tokens: int | None = None,
        completion_tokens: int = 0,
        latency_s: float = 0.0,
        first_token_s: float | None = None,
    ) -> Reply:
        return Reply(
            text,
            status,
            self.slot.type_name,
            self.model,
            self.fit.prompt_tokens if prompt_tokens is None else prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=latency_s,
            first_token_s=first_token_s,
            dropped_turns=self.fit.dropped,
            lora=self.lora,
            canary_id=self.canary_id,
            arm=self.arm,
        )


class Pipeline:
    """Runs each incoming message through the hooks to a backend's queue; one instance per bot.

    It owns the message path: which backend, system prompt and sampling answer
    a message, who may stop its generation, and the queues' use. It gets what it
    works with rather than the whole bot: ``settings`` is called for the current
    settings each time (a reload replaces them), ``hook`` is the plugin manager's
    hook relay, and ``bot`` is what hooks and command handlers receive as ``bot=``.
    """

    clock: Callable[[], float] = staticmethod(time.monotonic)  # when a streamed reply is next looked at

    def __init__(
        self,
        *,
        settings: Callable[[], Settings],
        hook: Any,
        registry: Registry,
        backends: Mapping[str, BackendSlot],
        is_admin: Callable[[User, Message | None], Awaitable[bool]],
        bot: BotAPI,
        metrics: MessageMetrics,
        canaries: Canaries,
        locks: ClusterLocks | None = None,
    ) -> None:
        self._settings = settings
        self._canaries = canaries
        self._hook = hook
        self._registry = registry
        self._backends = backends
        self._is_admin = is_admin
        self._bot = bot
        self._metrics = metrics
        self.lanes = ConversationLanes(locks, self._hand_over)
        self._in_flight: set[asyncio.Future[None]] = set()
        # Numbers messages as their handling starts: the order they take the model in.
        self._arrivals = itertools.count()

    async def handle(self, message: Message, responder: Responder) -> None:
        """Answer ``message`` through ``responder``. Never raises for a bad message or plugin."""
        if not message.text.strip():
            return
        self._metrics.received(message)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._in_flight.add(done)
        try:
            # Whether a command skips its lane is decided on the text as received;
            # which command runs, on the text the gates let through.
            reading = self._read_command(message.text)
            if reading.immediate:
                await self._process(message, responder, reading)
            else:
                async with self.lanes.hold(message.conversation_key(self._settings().bot.conversation_scope)):
                    await self._process(message, responder, reading)
        except Exception:
            log.exception(
                "failed to handle message %s from %s",
                message.message_id,
                message.user_key,
                extra=self._context(message),
            )
        finally:
            done.set_result(None)
            self._in_flight.discard(done)

    async def _hand_over(self, key: str) -> None:
        """Before another replica may take the conversation: what it must see is made visible."""
        try:
            await call_all(self._hook.botkit_conversation_handover, conversation_key=key, bot=self._bot)
        except Exception:
            log.exception("a botkit_conversation_handover hook failed", extra={"conversation": key})

    async def _still_held(self, message: Message) -> None:
        """Fencing before the reply is written down and delivered: a holder whose lock expired (a long
        pause, Redis lost it) waits for it again rather than committing alongside the next holder."""
        key = message.conversation_key(self._settings().bot.conversation_scope)
        lease = self.lanes.lease(key)
        if lease is None or await lease.confirm():
            return
        log.warning(
            "message %s: its conversation's %s lock (token %s) was lost while answering; waiting for it again "
            "before delivering",
            message.message_id,
            lease.store,
            lease.token,
            extra=self._context(message),
        )
        if not await lease.regain():
            log.warning(
                "message %s: no lock store answers; delivering with this process's ordering only",
                message.message_id,
                extra=self._context(message),
            )

    async def drain(self) -> None:
        """Wait until every message being handled now is finished."""
        if self._in_flight:
            await asyncio.wait(list(self._in_flight))

    async def stop_and_drain(self) -> None:
        """Stop every generation, waiting or running, on every backend; then ``drain``."""
        for slot in self._backends.values():
            slot.queue.cancel_all()
        await self.drain()

    def choose(self, message: Message) -> Choice:
        """The backend, system prompt and sampling that answer ``message`` (see ``botkit.overrides``)."""
        settings = self._settings()
        values = merged(settings.overrides, message)
        backend = str(values.get("backend", DEFAULT))
        params = with_values(self._backends[backend].settings.sampling(), values)
        return Choice(backend, str(values.get("system_prompt", settings.bot.system_prompt)), params)

    def generation_owner(self, message: Message) -> str:
        """Who may stop the generation started by ``message``: its author, in its conversation."""
        scope = self._settings().bot.conversation_scope
        return f"{message.conversation_key(scope)}|{message.user_key}"

    def stop_generations(self, message: Message) -> int:
        """Stop the generations of ``message``'s author in its conversation. Returns how many."""
        owner = self.generation_owner(message)
        return sum(slot.queue.cancel(owner) for slot in self._backends.values())

    def _context(self, message: Message) -> dict[str, Any]:
        """What log lines about ``message`` carry as fields (``extra=``): never its text."""
        return message_context(message, message.conversation_key(self._settings().bot.conversation_scope))

    def _read_command(self, text: str) -> CommandReading:
        prefix = self._settings().bot.command_prefix
        call = parse_command(text.strip(), prefix)
        command = self._registry.commands.get(call[0]) if call is not None else None
        return CommandReading(text, prefix, call, command)

    async def _process(self, message: Message, responder: Responder, arrived: CommandReading) -> None:
        arrival = next(self._arrivals)
        if log.isEnabledFor(logging.DEBUG):  # its arguments are built for every message otherwise
            log.debug(
                "message %s from %s: %d characters",
                message.message_id,
                message.user_key,
                len(message.text),
                extra=self._context(message),
            )
        limit = self._settings().bot.max_message_chars
        if len(message.text) > limit:
            self._metrics.refused(message, "too_long")
            await responder.send(
                f"Sorry, your message is too long for me ({len(message.text):,} characters; "
                f"the limit is {limit:,}). Please shorten it or split it up."
            )
            return
        if not readable(message.text):
            self._metrics.refused(message, "unreadable")
            await responder.send(
                "Sorry, your message contains characters I can't read (a NUL byte or broken Unicode). "
                "Please send it again without them."
            )
            return
        gated = await run_chain(self._hook.botkit_gate, "message", message, Message, bot=self._bot)
        if isinstance(gated, Refuse):
            log.info(
                "message %s from %s refused: %s",
                message.message_id,
                message.user_key,
                gated.reason,
                extra=self._context(message),
            )
            self._metrics.refused(message, gated.plugin)
            if gated.notice:
                await responder.send(gated.notice)
            return
        message = without_hidden_text(gated)
        if not message.text.strip():
            return
        prefix = self._settings().bot.command_prefix
        if message.text == arrived.text and prefix == arrived.prefix:
            call = arrived.call
        else:  # a gate rewrote the text, or a reload changed the prefix while the message waited
            call = parse_command(message.text.strip(), prefix)
        if call is None:
            await self._answer(message, responder, arrival)
            return
        if call is arrived.call and arrived.immediate:
            command = arrived.command
        else:
            # This one may have waited in its lane while its plugin was switched off.
            command = self._registry.commands.get(call[0])
        await self._run_command(message, responder, *call, command)

    async def _run_command(
        self, message: Message, responder: Responder, name: str, args: str, command: Command | None
    ) -> None:
        prefix = self._settings().bot.command_prefix
        self._metrics.command(message, command.name if command is not None else None)
        if command is None:
            # Point at /help only while a plugin answers it (the commands plugin may be off).
            hint = f" Type {prefix}help to see the commands." if "help" in self._registry.commands else ""
            await responder.send(f"Unknown command {prefix}{name}.{hint}")
            return
        if command.admin_only and not await self._is_admin(message.author, message):
            log.warning(
                "refused admin command %s%s from non-admin %s",
                prefix,
                name,
                message.user_key,
                extra=self._context(message),
            )
            await responder.send(f"Sorry, {prefix}{name} is for admins only.")
            return
        try:
            answer = await command.handler(CommandContext(message, args, self._bot, responder))
        except Exception:
            plugin = self._registry.owner("command", name)
            log.exception(
                "command %s%s of plugin %r failed", prefix, name, plugin, extra=self._context(message)
            )
            answer = f"Sorry, {prefix}{name} failed; the error has been logged."
        if answer:
            await responder.send(answer)

    async def _answer(self, message: Message, responder: Responder, arrival: int) -> None:
        choice = self.choose(message)
        slot = self._backends[choice.backend]
        backend, params = slot.backend, choice.params
        prompt = Prompt(
            system=choice.system_prompt, turns=[*message.thread_context, Turn(Role.USER, message.text)]
        )
        await call_all(self._hook.botkit_prepare_context, message=message, prompt=prompt, bot=self._bot)
        if not prompt.turns:
            log.error(
                "prepare_context hooks left no turns for message %s; not answered",
                message.message_id,
                extra=self._context(message),
            )
            return
        budget = backend.context_window - params.max_tokens
        fit = await fit_context(prompt, budget, backend.count_tokens)
        del prompt.turns[: fit.dropped]
        if fit.dropped:
            log.info(
                "dropped %d oldest turns of %s to fit the context window",
                fit.dropped,
                message.message_id,
                extra=self._context(message),
            )
        if fit.prompt_tokens > budget:
            self._metrics.refused(message, "context_full")
            await responder.send(
                f"Sorry, your message is too long for the model ({fit.prompt_tokens:,} tokens; "
                f"it can take {max(budget, 0):,}). Please shorten it."
            )
            return

        ticket = Ticket(owner=self.generation_owner(message), order=arrival)
        queue = slot.queue
        enqueued = time.perf_counter()
        try:
            place = queue.enqueue(ticket)
        except QueueFull:
            self._metrics.refused(message, "queue_full")
            await responder.send("I'm answering a lot of people right now. Please try again in a minute.")
            return
        lora = params.lora if params.lora is not None else backend.active_lora
        arm = None
        canary = self._canaries.plan_for(slot.name)
        if canary is not None and params.lora is None:  # a place that names its adapter stays out of it
            arm = canary.arm(message.conversation_key(self._settings().bot.conversation_scope))
            lora = canary.lora(arm) or NO_LORA
            params = replace(params, lora=lora)  # the backend applies the arm's adapter to this request only
        request = ModelRequest(
            message,
            slot,
            prompt,
            params,
            fit,
            ticket,
            backend.model_name,
            None if lora == NO_LORA else lora,
            canary.id if arm is not None else None,
            arm,
        )
        try:
            if place:
                ahead = "1 request" if place == 1 else f"{place} requests"
                await responder.send(
                    f"The model is busy; {ahead} ahead of you. I'll answer as soon as I can."
                )
            await queue.wait_turn(ticket)
            self._metrics.waited(slot.name, time.perf_counter() - enqueued)
            reply = await self._generate(request, responder)
        except GenerationCancelled:  # /stop while waiting: never generated
            reply = request.reply("", ReplyStatus.STOPPED)
            await call_all(self._hook.botkit_reply_ready, message=message, reply=reply, bot=self._bot)
        finally:
            queue.release(ticket)  # _generate released it when its stream ended; this covers the rest
        self._metrics.answered(message, slot.name, reply)
        await call_all(self._hook.botkit_after_reply, message=message, reply=reply, bot=self._bot)

    async def _generate(self, request: ModelRequest, responder: Responder) -> Reply:
        """Stream the backend's answer through the output filters to the responder; the reply delivered.

        The model slot is given back as soon as the backend's stream ends: the final
        filters and the delivery, which may wait out a platform's rate limit, run
        outside it, so a slow platform never makes another conversation wait.
        """
        message, slot = request.message, request.slot
        filters, bot = self._hook.botkit_filter_reply, self._bot
        started = time.monotonic()
        updates = StreamedUpdates(responder)
        try:
            streamed = await self._stream(request, updates, started)
            status, refusal = streamed.status, streamed.refusal
            if refusal is None:
                final = await run_chain(
                    filters, "text", streamed.raw, str, message=message, final=True, bot=bot
                )
                if isinstance(final, Refuse):
                    status, refusal = ReplyStatus.BLOCKED, final
                else:
                    text = final
            if refusal is not None:
                log.info(
                    "reply to %s blocked: %s",
                    message.message_id,
                    refusal.reason,
                    extra=self._context(message),
                )
                text = refusal.notice or ""
            text = self._with_status_note(text, status, slot.settings.timeout)
            latency_s = time.monotonic() - started
            await updates.settle()
        except BaseException:
            updates.abandon()  # cancelled (shutdown): an update stuck on the platform is not waited for
            raise
        reply = request.reply(
            text,
            status,
            prompt_tokens=streamed.prompt_tokens,
            completion_tokens=streamed.completion_tokens,
            latency_s=latency_s,
            first_token_s=streamed.first_token_s,
        )
        await self._still_held(message)
        # Before the user sees it: what must survive a crash after delivery is written down now.
        await call_all(self._hook.botkit_reply_ready, message=message, reply=reply, bot=bot)
        delivered = await responder.finish(text, status)
        reply.platform_message_ids = tuple(delivered or ())
        if log.isEnabledFor(logging.INFO):  # at botkit's default level (WARNING) nothing is built
            ANSWERED.log(
                message,
                self._settings().bot.conversation_scope,
                slot.name,
                status.value,
                latency_s,
                reply.first_token_s,
                reply.prompt_tokens,
                reply.completion_tokens,
            )
        return reply

    async def _stream(self, request: ModelRequest, updates: StreamedUpdates, started: float) -> Streamed:
        """Run the backend's stream to its end, showing the filtered text as it grows.

        Returns once the stream is closed, so the backend holds nothing of this
        request any more (a worker thread, a batch slot), and its model slot has
        gone to the next request in line.
        """
        message, slot, cancel = request.message, request.slot, request.ticket.cancel
        filters, bot = self._hook.botkit_filter_reply, self._bot
        streamed = Streamed()
        shown = ""
        # The filters read the whole reply so far, and the model streams a token at a time: looking at
        # every chunk would cost the engine's threads a share of the CPU for updates no platform shows.
        interval, next_look = self._settings().bot.stream_interval, 0.0
        stream: AsyncIterator[Chunk] | None = None
        try:
            async with asyncio.timeout(slot.settings.timeout):
                stream = slot.backend.stream(request.prompt, request.params, cancel)
                async for chunk in stream:
                    streamed.truncated = streamed.truncated or chunk.truncated
                    if streamed.first_token_s is None:
                        streamed.first_token_s = time.monotonic() - started
                    streamed.raw += chunk.text
                    streamed.completion_tokens += chunk.tokens
                    if chunk.prompt_tokens is not None:
                        streamed.prompt_tokens = chunk.prompt_tokens
                    if interval:
                        now = self.clock()
                        if now < next_look:
                            continue
                        next_look = now + interval
                    filtered = await run_chain(
                        filters, "text", streamed.raw, str, message=message, final=False, bot=bot
                    )
                    if isinstance(filtered, Refuse):
                        cancel.set()
                        streamed.status, streamed.refusal = ReplyStatus.BLOCKED, filtered
                        break
                    if filtered != shown:
                        shown = filtered
                        await updates.offer(shown)
            if streamed.status is ReplyStatus.COMPLETED and cancel.is_set():
                streamed.status = ReplyStatus.STOPPED
            elif streamed.status is ReplyStatus.COMPLETED and streamed.truncated:
                streamed.status = ReplyStatus.TRUNCATED
        except TimeoutError:
            cancel.set()
            streamed.status = ReplyStatus.TIMED_OUT
        except Exception:
            log.exception(
                "backend %r (%s) failed on message %s",
                slot.name,
                slot.type_name,
                message.message_id,
                extra={**self._context(message), "backend": slot.name},
            )
            streamed.status = ReplyStatus.FAILED
        finally:
            if stream is not None:
                await self._close_stream(stream, slot)
            slot.queue.release(request.ticket)
        return streamed

    async def _close_stream(self, stream: AsyncIterator[Chunk], slot: BackendSlot) -> None:
        # Leaving ``async for`` early (a refusal) does not close an async generator; closing it
        # here makes the backend finish with this request before its slot goes to the next one.
        close = getattr(stream, "aclose", None)
        if close is None:
            return
        try:
            await close()
        except Exception:
            log.exception("backend %r (%s) failed while ending a stream", slot.name, slot.type_name)

    def _with_status_note(self, text: str, status: ReplyStatus, seconds: float) -> str:
        if status is ReplyStatus.COMPLETED or status is ReplyStatus.TRUNCATED:
            # A truncated reply carries no note: its text is history, and the model must not learn one.
            return text if text.strip() else EMPTY_REPLY
        if status is ReplyStatus.STOPPED:
            return f"{text} [stopped]".lstrip()
        if status is ReplyStatus.TIMED_OUT:
            return f"{text} [stopped: the answer took longer than {seconds:g} s]".lstrip()
        if status is ReplyStatus.FAILED:
            return f"{text}\n\n{FAILED_REPLY}" if text.strip() else FAILED_REPLY
        return text
