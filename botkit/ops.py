"""The operations API: what tools built on botkit use to reach a bot's config, database and running process.

``botkit export``, ``botkit finetune ...`` and the commands a third-party plugin adds
(``botkit_register_cli``) import from here, from ``botkit`` and from ``botkit.storage``, never from
botkit's internal modules, which may change. Most names are botkit's own, re-exported; the rest
are thin wrappers.

- commands: ``Context`` (``ctx.settings()``), ``config_option``, ``fail``, ``run_with_database``;
- settings: ``load_settings``, ``config_table`` (a plugin's top-level table such as ``[finetune]``),
  ``env_name``, ``toml_value``, ``system_prompt_for``;
- backends: ``load_bot``, ``raw_tables``, ``table_path``, ``check_backend_table``,
  ``embedded_model_path``, ``transformers_engine``;
- config.toml: ``edit_table`` (``ConfigEdit``), which keeps the user's comments;
- the running bot: ``control_socket_path``, ``request_sync`` (``{"command": "reload"}``, ``"status"``),
  ``in_process`` (``reload`` and ``status`` asked of a bot of this process from another thread: an ``Ask``),
  ``control_request`` (the same, awaited: ``"probe"`` runs messages through its pipeline), and
  ``answer_probe`` (a ``probe`` request answered by a bot in this process; at most
  ``PROBE_MESSAGES`` messages);
- red-team probes: ``probe_suites`` (what ``botkit_register_probes`` registered), ``ProbeSuite``;
- plugin switches without a started bot: ``store_plugin_switch`` (what ``botkit plugins enable|disable``
  stores), ``apply_stored_switches`` (a loaded bot's plugins as its next start will switch them);
- privacy beside the bot: ``forget_user_beside`` (the running bot forgets the user, else this process);
- GGUF LoRA files: ``read_gguf_header``, ``gguf_model_name``, ``ModelInfo``, ``check_adapter``,
  ``tensor_mismatches``, ``BASE_MODEL_KEY``, ``LoraError``;
- canary rollouts (``botkit/canary.py``): ``Canaries``, ``CanaryPlan``, ``CanaryResults``, ``ArmResults``,
  ``report_lines``, ``CanaryError``, the arms ``CONTROL`` / ``CANARY``, the outcomes ``PROMOTED`` /
  ``ROLLED_BACK``, and the statistics ``wilson_interval``, ``two_proportion_test``;
- text: ``pii_scrubber`` (from ``botkit.detectors``, the rules moderation checks chat with);
- the overview (``botkit overview``, the web console's home page): ``read_overview``, ``Overview``,
  ``human_bytes``, ``human_duration``;
- rate limits: ``limits_storage`` (where ``limits`` counts: this process's memory or a shared Redis).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn, TypeVar

import click
from pydantic import BaseModel

from botkit.backend_set import BackendSlot, raw_tables, table_path, validate_backend
from botkit.backends.llamacpp import LlamaCppSettings, embedded_model_path
from botkit.backends.llamacpp_lora import (
    BASE_MODEL_KEY,
    GGUFHeader,
    ModelInfo,
    check_adapter,
    gguf_model_name,
    read_gguf_header,
    tensor_mismatches,
)
from botkit.bot import Bot
from botkit.canary import (
    CANARY,
    CONTROL,
    PROMOTED,
    ROLLED_BACK,
    ArmResults,
    Canaries,
    CanaryError,
    CanaryPlan,
    CanaryResults,
    report_lines,
)
from botkit.canary_stats import ProportionTest, two_proportion_test, wilson_interval
from botkit.config_edit import ConfigEdit, edit_table
from botkit.control import (
    Ask,
    control_socket_path,
    in_process,
    request_sync,
    unix_sockets_available,
)
from botkit.control import request as control_request
from botkit.control_probe import PROBE_MESSAGES, answer_probe
from botkit.detectors import pii_scrubber  # export scrubs with the rules moderation checks with
from botkit.errors import BotkitError, ConfigError, ControlError, LoraError, NoRunningBot
from botkit.logs import configure_logging
from botkit.overrides import merged
from botkit.overview_live import Overview, human_bytes, human_duration, read_overview
from botkit.plugin_discovery import discover
from botkit.plugin_host import read_stored_switches, store_switch
from botkit.registry import ProbeScorer, ProbeSuite
from botkit.settings import (
    Settings,
    env_name,
    load_settings,
    plugin_table,
    reject_unknown_tables,
    toml_value,
    validate_table,
)
from botkit.storage import PUT_OFF, UserRows, forget_user
from botkit.types import Message

__all__ = [
    "Ask",
    "CANARY",
    "CONTROL",
    "PROMOTED",
    "ROLLED_BACK",
    "ArmResults",
    "Canaries",
    "CanaryError",
    "CanaryPlan",
    "CanaryResults",
    "ProportionTest",
    "report_lines",
    "two_proportion_test",
    "wilson_interval",
    "BASE_MODEL_KEY",
    "CONFIG_HELP",
    "BackendSlot",
    "Bot",
    "ConfigEdit",
    "Context",
    "GGUFHeader",
    "LlamaCppSettings",
    "LoraError",
    "ModelInfo",
    "Overview",
    "PROBE_MESSAGES",
    "ProbeScorer",
    "ProbeSuite",
    "Settings",
    "answer_probe",
    "apply_stored_switches",
    "check_adapter",
    "check_backend_table",
    "config_option",
    "config_table",
    "control_request",
    "control_socket_path",
    "edit_table",
    "embedded_model_path",
    "env_name",
    "fail",
    "forget_user_beside",
    "gguf_model_name",
    "human_bytes",
    "human_duration",
    "limits_storage",
    "load_bot",
    "load_settings",
    "pii_scrubber",
    "probe_suites",
    "raw_tables",
    "read_gguf_header",
    "read_overview",
    "in_process",
    "request_sync",
    "run_with_database",
    "store_plugin_switch",
    "system_prompt_for",
    "table_path",
    "tensor_mismatches",
    "toml_value",
    "transformers_engine",
]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# -- commands -----------------------------------------------------------------

CONFIG_HELP = "config file (default: $BOTKIT_CONFIG, else ./config.toml if present, else built-in defaults)"


def fail(error: BotkitError) -> NoReturn:
    """Print a user-facing error and exit: 2 for configuration problems, 1 otherwise."""
    click.echo(f"botkit: error: {error}", err=True)
    sys.exit(2 if isinstance(error, ConfigError) else 1)


class Context:
    """The ``botkit`` group's object (``@click.pass_obj``): the config file the user named, if any."""

    def __init__(self, config: Path | None = None) -> None:
        self.config = config

    def settings(self) -> Settings:
        """The settings of that config (or of $BOTKIT_CONFIG, ./config.toml, the defaults); logging set up."""
        settings = load_settings(self.config)
        configure_logging(settings.logging)
        return settings


def _set_config(ctx: click.Context, _: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.ensure_object(Context).config = value


def config_option(command: Any) -> Any:
    """``--config`` accepted after the subcommand too: ``botkit chat --config bot.toml``."""
    return click.option(
        "--config",
        "-c",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        expose_value=False,
        callback=_set_config,
        help=CONFIG_HELP,
    )(command)


def run_with_database(
    ctx: Context, action: Callable[[Bot], Awaitable[T]], *, check_schema: bool = True
) -> T:
    """Run ``action(bot)`` with the config's bot loaded (plugins, no model) and its database connected.

    ``check_schema``: first bring the schema up to date as start-up does (``[storage]
    auto_upgrade`` decides between upgrading and refusing); the ``db`` commands pass False.
    A ``BotkitError`` propagates, for the command to report (``fail``).
    """

    async def run() -> T:
        bot = Bot.load(ctx.settings())
        await bot.db.connect()
        try:
            if check_schema:
                await bot.migrator.ensure_current(bot.settings.storage.auto_upgrade)
            return await action(bot)
        finally:
            await bot.db.close()

    return asyncio.run(run())


async def store_plugin_switch(bot: Bot, name: str, enabled: bool | None) -> None:
    """Store (``None``: clear) the switch of plugin ``name`` as ``/enable`` and ``/disable`` do, for a bot that
    is not running here: the bot on this database applies it at its next start.

    ``bot`` is loaded (``load_bot``) with its database connected. Raises ``ConfigError`` for a plugin
    that does not exist or cannot be switched at run time (checked before the schema is brought up to
    date, as ``[storage] auto_upgrade`` says, so that a typo changes nothing).
    """
    if name not in bot.host.infos:
        raise ConfigError(f"there is no plugin {name!r}; available: {', '.join(sorted(bot.host.infos))}")
    reason = bot.host.switchable(name)
    if reason is not None and enabled is not None:
        raise ConfigError(reason)
    await bot.migrator.ensure_current(bot.settings.storage.auto_upgrade)
    await store_switch(bot.db, name, enabled)


async def apply_stored_switches(bot: Bot) -> None:
    """Switch the plugins of a loaded, not started ``bot`` as the stored switches say (as its start would),
    so that ``bot.plugins`` tells which plugins a bot started now runs. No plugin is started.

    Called again after a switch changed, it follows: a switch cleared since the last call gives the
    plugin back the state config.toml chose.
    """
    stored = await read_stored_switches(bot.db)
    infos = bot.host.infos
    cleared = [name for name, info in infos.items() if info.stored is not None and name not in stored]
    bot.host.apply_stored_switches({**{name: infos[name].selected for name in cleared}, **stored})
    for name in cleared:
        infos[name].stored = None


FORGET_TIMEOUT = 60.0  # seconds the running bot may take to forget a user (its pending writes first)


async def forget_user_beside(bot: Bot, platform: str, platform_user_id: str) -> tuple[UserRows, str]:
    """Forget a user from a tool beside the bot (``botkit privacy forget``, the console of ``botkit web``).

    The bot running on this config does it (its control socket, ``forget``), so that its caches and
    pending writes let go of the user too; with none running, this process does it
    (``botkit.storage.forget_user``). Returns what was deleted and who deleted it (``"the running
    bot"``, ``"this process"``). Raises ``ControlError`` when the running bot cannot do it now or
    cannot be reached: nothing is deleted then.
    """
    try:
        path = control_socket_path(bot.settings) if unix_sockets_available() else None
    except ConfigError:
        path = None  # a socket path too long to listen on: no bot listens there
    if path is not None:
        payload = {"command": "forget", "platform": platform, "user": platform_user_id}
        try:
            answer = await control_request(path, payload, timeout=FORGET_TIMEOUT)
        except NoRunningBot:
            pass
        else:
            if not answer["ok"]:
                who = f"{platform}:{platform_user_id}"
                raise ControlError(f"the running bot did not forget {who}: {answer.get('error')}")
            try:
                return UserRows(**answer["deleted"]), "the running bot"
            except (KeyError, TypeError):
                raise ControlError(f"the running bot at {path} gave no usable answer to forget") from None
    deleted = await forget_user(bot, platform, platform_user_id)
    if deleted is None:
        raise ControlError(f"{PUT_OFF}: nothing was deleted; try again later")
    return deleted, "this process"


# -- settings -----------------------------------------------------------------


def config_table(settings: Settings, name: str, model: type[M]) -> M:
    """The top-level table ``[name]`` that plugin ``name`` claims, validated against ``model``.

    The file's values with ``BOTKIT_<NAME>__*`` on top, as the bot checks them at start; for
    tools that need the table without loading the plugins (``botkit finetune train`` reads
    ``[finetune]``). A top-level table that names no installed plugin is refused here too.
    Raises ``ConfigError``.
    """
    reject_unknown_tables(settings, discover(settings.plugins.directory))
    validated = validate_table(model, plugin_table(settings, name), settings, (name,))
    assert isinstance(validated, model)
    return validated


def system_prompt_for(settings: Settings, place: Message) -> str:
    """The system prompt of ``place``'s conversations: ``[bot] system_prompt`` or its place overrides'."""
    values = merged(settings.overrides, place)
    return str(values.get("system_prompt", settings.bot.system_prompt))


# -- backends -----------------------------------------------------------------


def load_bot(settings: Settings) -> Bot:
    """The bot ``settings`` describe: plugins loaded, every table checked; no database, no model yet."""
    return Bot.load(settings)


def probe_suites(bot: Bot) -> dict[str, ProbeSuite]:
    """The red-team probe suites the bot's plugins that are on registered (``botkit_register_probes``)."""
    return dict(bot.registry.probe_suites)


def check_backend_table(bot: Bot, settings: Settings, name: str) -> None:
    """Backend ``name`` of ``settings`` (e.g. a config just written) validates against ``bot``'s backend types.

    Raises ``ConfigError`` naming the key, as the bot would at its next start or reload.
    """
    validate_backend(bot.registry, settings, name, raw_tables(settings)[name])


def transformers_engine() -> ModuleType:
    """The transformers backend's loading code (``load``), for training on the model the bot runs.

    Raises ``ImportError`` (naming the package) without ``pip install 'botkit[gpu]'``.
    """
    from botkit.backends import transformers_engine as engine

    return engine


def limits_storage(uri: str, password: str | None = None) -> Any:
    """The ``limits`` (asyncio) storage for ``uri``: ``redis://`` / ``rediss://`` (shared by every process
    that counts in it; ``password`` from the environment, never the URL), anything else this process's memory.
    """
    from limits.storage import storage_from_string

    if uri.startswith("redis"):
        return storage_from_string(f"async+{uri}", **({"password": password} if password is not None else {}))
    return storage_from_string("async+memory://")

