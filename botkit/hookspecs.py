"""The hooks a botkit plugin may implement: registration, lifecycle and each pipeline stage.

Every pipeline hook may be a plain function or an ``async def``; botkit awaits
whatever an implementation returns (see :mod:`botkit.hookcall`). pluggy's
``firstresult`` is never used, because an ``async def`` implementation returns a
coroutine, which is "not None" before it has run: "first non-None" is taken
after awaiting. Implementations are called in pluggy's order (last registered
first, ``tryfirst``/``trylast`` respected); wrappers are not supported on
pipeline hooks. An implementation that raises is logged with its plugin's name
and skipped; the message goes on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from botkit.types import Message, MessageChange, Prompt, Reaction, Reply, User

if TYPE_CHECKING:
    import click

    from botkit.api import BotAPI
    from botkit.registry import (
        RegisterAdapter,
        RegisterBackend,
        RegisterCommand,
        RegisterMigrations,
        RegisterPlugin,
        RegisterProbes,
        RegisterSettings,
    )

hookspec = pluggy.HookspecMarker("botkit")

MaybeAwaitable = Any  # T | Awaitable[T]: pluggy cannot express it, botkit awaits either


@hookspec
def botkit_register_settings(register: RegisterSettings) -> None:
    """Declare a plugin's settings model.

    When: once at start-up, before any plugin settings are validated.
    Arguments: ``register(plugin_name, model)`` where ``model`` is a pydantic
    ``BaseModel`` class; the ``[plugins.<plugin_name>]`` table of config.toml
    (less its ``enabled`` key) is validated against it, and the instance is
    available as ``bot.plugin_settings(plugin_name)``. ``register(plugin_name, model,
    top_level=True)`` claims the top-level ``[plugin_name]`` table instead (``[finetune]``;
    only the plugin's own name), read by tools with ``botkit.ops.config_table``.
    Results: all implementations are called; ``register`` raises
    ``DuplicateNameError`` when a name is registered twice.
    Where: any plugin that has settings. Synchronous.
    """


@hookspec
def botkit_register_backends(register: RegisterBackend) -> None:
    """Contribute a model backend type.

    When: once at start-up.
    Arguments: ``register(type_name, factory, settings_model)``: ``factory`` takes
    the validated settings (an instance of ``settings_model``, a subclass of
    ``botkit.backend.BackendSettings``) and returns a ``botkit.backend.Backend``.
    ``[backend] type = "<type_name>"`` in config selects it.
    Results: all implementations are called; duplicates raise ``DuplicateNameError``.
    Where: backend plugins (``botkit.backends.*`` and third-party). Synchronous.
    """


@hookspec
def botkit_register_adapters(register: RegisterAdapter) -> None:
    """Contribute a chat platform adapter.

    When: once at start-up.
    Arguments: ``register(name, factory, settings_model)``: ``factory(bot,
    settings)`` returns a ``botkit.adapter.Adapter``; its settings come from
    ``[adapters.<name>]``.
    Results: all implementations are called; duplicates raise ``DuplicateNameError``.
    Where: adapter plugins. Synchronous.
    """


@hookspec
def botkit_register_commands(register: RegisterCommand) -> None:
    """Contribute chat commands such as ``/help`` or ``/stop``.

    When: once at start-up.
    Arguments: ``register(command)`` with a ``botkit.commands.Command``.
    Commands are only ever parsed from what a user typed, never from model output.
    Results: all implementations are called; duplicates raise ``DuplicateNameError``.
    Where: any plugin. Synchronous.
    """


@hookspec
def botkit_register_migrations(register: RegisterMigrations) -> None:
    """Contribute a branch of database migrations for a plugin's own tables.

    When: once at start-up, before the schema is checked or upgraded.
    Arguments: ``register(versions, metadata)``: ``versions`` is a folder of
    Alembic revision files whose first revision has ``branch_labels`` (the
    plugin's name) and ``depends_on = "botkit"`` when it refers to core
    tables; ``metadata`` is the SQLAlchemy ``MetaData`` of the tables those
    revisions create, so that a test can check models and migrations agree.
    ``botkit db upgrade`` (or start-up with ``[storage] auto_upgrade``)
    applies every branch.
    Results: all implementations are called; a plugin registers one branch.
    Where: plugins that keep their own tables. Synchronous.
    """


@hookspec
def botkit_register_plugin(register: RegisterPlugin) -> None:
    """Declare what the plugin is to the host: required, and which plugins it needs.

    When: once at start-up, when the plugin is loaded.
    Arguments: ``register(required=False, needs=())``. ``required=True``: the
    plugin can never be switched off at run time (``/disable`` and ``botkit
    plugins disable`` refuse; the admin plugin is, so admins cannot lock
    themselves out). ``needs``: names of plugins it cannot work without. A
    plugin whose needed plugin is off is not started (a warning says why,
    ``botkit plugins list`` and ``/plugins`` show it). Switching the needed
    plugin off at run time switches it off first, and switching the needed
    plugin on brings it back, unless an admin switched it off.
    Results: called once per plugin; calling ``register`` twice raises.
    Where: any plugin; plugins that declare nothing are neither required nor
    need anything. Synchronous.
    """


@hookspec
def botkit_register_cli(cli: click.Group) -> None:
    """Add commands to the ``botkit`` command line.

    When: once each time ``botkit`` starts, before the command line is parsed; there is no
    bot. Only this hook runs, so a plugin imports its heavy libraries inside its commands,
    never at import time. The plugins asked are those that are on, as the bot chooses them:
    ``BOTKIT_LOAD_PLUGINS`` and ``[plugins.<name>] enabled = false`` in the config named
    before the command (or by ``$BOTKIT_CONFIG``, or ./config.toml) leave a plugin out.
    Arguments: ``cli``, the ``botkit`` ``click.Group``: ``cli.add_command(command)`` or
    ``@cli.command()``. A command reads the config through ``botkit.ops`` (``Context``,
    ``config_option``, ``fail``, ``run_with_database``).
    Results: all implementations are called, built-ins first; a command name that is
    already taken raises ``DuplicateNameError``, and a plugin whose implementation raises
    adds none of its commands (a warning names it on standard error).
    Where: plugins with command-line tools (the finetune plugin adds ``export`` and
    ``finetune``). Synchronous.
    """


@hookspec
def botkit_register_probes(register: RegisterProbes) -> None:
    """Contribute a suite of red-team probes for ``botkit redteam``.

    When: once at start-up, when the plugin is loaded; ``botkit redteam`` runs the suites of
    the plugins that are on (``botkit.ops.probe_suites``).
    Arguments: ``register(suite, path, *, description="", scorers=None)``: ``path`` is a JSON
    Lines file of probes (docs/safety.md: ``id``, ``prompts``, optional ``setup``, ``score``);
    ``scorers`` maps the names of the suite's own scorers (a probe's ``score.kind``) to
    functions ``scorer(reply: str, probe: Mapping) -> str | None`` that return why the reply
    fails the probe, or None when it passes. They must be deterministic.
    Results: all implementations are called; a suite name registered twice raises
    ``DuplicateNameError``; a path that is not a file or a scorer that is not callable fails
    the plugin's load. The file itself is read, and each line checked, when a run starts.
    Where: any plugin with probes of its own (the moderation plugin adds ``toxicity``,
    scored by its classifier). Synchronous.
    """


@hookspec
def botkit_startup(bot: BotAPI) -> MaybeAwaitable:
    """The bot has loaded its plugins, settings and backend and is about to accept messages.

    Arguments: ``bot``, the running bot (``botkit.BotAPI``).
    Results: every implementation is awaited in turn; return values are ignored.
    An implementation that raises is logged and skipped.
    Where: plugins that open connections or start background tasks.
    """


@hookspec
def botkit_shutdown(bot: BotAPI) -> MaybeAwaitable:
    """The bot is stopping: in-flight replies have finished or been stopped.

    Arguments: ``bot``. Results: every implementation is awaited; values ignored.
    Where: plugins that hold connections, files or tasks.
    """


@hookspec
def botkit_is_admin(user: User, message: Message | None, bot: BotAPI) -> MaybeAwaitable:
    """Decide whether ``user`` is an administrator.

    When: whenever anything asks ``bot.is_admin(user, message)``: admin-only
    commands, exemptions.
    Arguments: ``user``; ``message``, the message being handled when there is
    one (for platform context such as roles); ``bot``.
    Results: the first ``True``/``False`` after awaiting wins; when every
    implementation returns ``None`` the ``[bot] admins`` list of config decides.
    Where: access-control plugins.
    """


@hookspec
def botkit_gate(message: Message, bot: BotAPI) -> MaybeAwaitable:
    """Let a message through, rewrite it, or stop it, before anything answers it.

    When: for every non-empty incoming message, commands included, before
    commands are dispatched and before the model is asked.
    Arguments: ``message`` as rewritten by the gates called before this one; ``bot``.
    Results: a chain. ``None`` lets the message through unchanged; a ``Message``
    replaces it for the rest of the pipeline; ``botkit.types.Refuse`` stops it
    (its ``notice``, if any, is sent to the user) and no later gate runs.
    Where: access control, rate limits, input moderation.
    """


@hookspec
def botkit_prepare_context(message: Message, prompt: Prompt, bot: BotAPI) -> MaybeAwaitable:
    """Shape what the model will see for this message.

    When: after gates and commands, before the backend is asked; ``prompt``
    starts as ``[bot] system_prompt`` and the message as the last turn, after
    ``message.thread_context`` (thread messages an adapter read, if any).
    Arguments: ``message``; ``prompt``, a mutable ``botkit.types.Prompt``
    (change ``prompt.system``, insert history before ``prompt.turns[-1]``);
    ``bot``.
    Results: every implementation is awaited in turn, each seeing the changes of
    the one before; return values are ignored. The core then drops the oldest
    history turns until the prompt fits the model's context window.
    Where: memory (history), per-channel system prompts.
    """


@hookspec
def botkit_filter_reply(message: Message, text: str, final: bool, bot: BotAPI) -> MaybeAwaitable:
    """Check or rewrite the reply before the user sees it.

    When: while the reply streams, before each update is delivered
    (``final=False``, ``text`` is the whole reply so far), and once more on the
    complete reply (``final=True``).
    Arguments: ``message``, the message being answered; ``text`` as rewritten by
    the filters called before this one; ``final``; ``bot``.
    Results: a chain. ``None`` keeps ``text``; a ``str`` replaces it; a
    ``botkit.types.Refuse`` stops generation and replaces the reply by its
    notice (or an empty reply). Filters must be pure functions of the raw text
    so far: they are re-run on the whole text at every update.
    Where: output moderation, mention neutralising, disclosure labels.
    """


@hookspec
def botkit_reply_ready(message: Message, reply: Reply, bot: BotAPI) -> MaybeAwaitable:
    """A reply is final and about to be delivered: the last moment before the user sees it.

    When: after the output filters, just before the final text goes to the
    platform; for a waiting request stopped by ``/stop``, before the after-hooks
    (nothing is delivered). Every reply that reaches ``botkit_after_reply``
    comes here first, with the same ``Reply`` object.
    Arguments: ``message``, the message answered (after gate rewrites); ``reply``,
    a ``botkit.types.Reply`` with its final ``text``, ``status`` and ``key``
    (``platform_message_ids`` is still empty); plugins may add to
    ``reply.moderation_events``; ``bot``.
    Results: every implementation is awaited in turn, before delivery; values ignored.
    Keep it short: the user waits for it.
    Where: write-ahead logging (memory journals the exchange, so that a crash
    after delivery loses nothing the user saw), moderation (its events ride with
    the exchange).
    """


@hookspec
def botkit_after_reply(message: Message, reply: Reply, bot: BotAPI) -> MaybeAwaitable:
    """A generated reply has been delivered (or stopped, timed out, blocked or failed).

    Arguments: ``message``, the message answered (after gate rewrites);
    ``reply``, a ``botkit.types.Reply`` with the final text, status, backend,
    model, token counts and latency; ``bot``.
    Results: every implementation is awaited in turn; values ignored.
    Where: memory writes, metrics, feedback.
    """


@hookspec
def botkit_conversation_handover(conversation_key: str, bot: BotAPI) -> MaybeAwaitable:
    """A message of a conversation was handled; another replica may answer the next one.

    When: only while several replicas may serve the bot (``bot.clustered``),
    inside the conversation's lane, before its cross-replica lock is released:
    after the after-hooks of a reply, and after a command or a refusal.
    Arguments: ``conversation_key``, ``Message.conversation_key`` of the
    conversation; ``bot``.
    Results: every implementation is awaited in turn; values ignored. The lock
    is held until all return (an implementation that waits delays the
    conversation's next message); one that raises is logged.
    Where: plugins that queue writes or cache per conversation (memory puts the
    conversation's pending writes into the database, so the next replica reads them).
    """


@hookspec
def botkit_forget_user(platform: str, user_id: str, bot: BotAPI) -> MaybeAwaitable:
    """A user asked to be forgotten: make sure nothing about them stays outside the database.

    When: before their rows are deleted from the core tables (``/forgetme``, ``botkit privacy
    forget``, the web console's privacy page: ``botkit.storage.forget_user``).
    Arguments: ``platform`` and ``user_id``, the platform's id of the user; ``bot``.
    Results: every implementation is awaited; one that cannot do its part now
    (e.g. pending writes cannot reach the database) returns ``False`` and the
    deletion is put off, the user told to try again. ``None`` or ``True``: done.
    Where: plugins that keep data about users in memory, files or their own tables.
    """


@hookspec
def botkit_reaction(reaction: Reaction, bot: BotAPI) -> MaybeAwaitable:
    """Someone added or removed an emoji reaction on a message.

    When: an adapter calls ``bot.react(reaction)`` for every reaction event its
    platform delivers, on any message (the bot's replies and others').
    Arguments: ``reaction``, a ``botkit.types.Reaction``; ``bot``.
    Results: every implementation is awaited in turn; values ignored.
    Where: feedback (👍 / 👎 on the bot's replies), metrics.
    """


@hookspec
def botkit_message_changed(change: MessageChange, bot: BotAPI) -> MaybeAwaitable:
    """A user edited or deleted a message the bot received earlier.

    When: an adapter calls ``bot.message_changed(change)`` for each edit or
    deletion its platform reports. The edit is not answered again.
    Arguments: ``change``, a ``botkit.types.MessageChange`` (``text`` is
    ``None`` for a deletion); ``bot``.
    Results: every implementation is awaited in turn; values ignored.
    Where: plugins that keep copies of messages (memory updates or deletes its
    stored copy, so that history and exports follow the author's wishes).
    """


HOOK_NAMES: tuple[str, ...] = tuple(
    name for name, value in list(globals().items()) if name.startswith("botkit_") and callable(value)
)
"""Every hook botkit defines, in the order above."""
