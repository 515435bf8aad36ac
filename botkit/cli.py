"""The ``botkit`` command: chat, run, plugins, backends, config check, db (``botkit.cli_db``), overview
(``botkit.cli_overview``), privacy (``botkit.cli_privacy``), and what plugins add.

``create_cli()`` builds the click group; the plugins that are on then add their commands
through ``botkit_register_cli`` (``botkit export`` and ``botkit finetune`` come from the
finetune plugin so). The helpers commands share live in ``botkit.ops``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from botkit import __version__
from botkit.bot import Bot
from botkit.cli_db import db, with_migrator
from botkit.cli_models import models
from botkit.cli_overview import overview
from botkit.cli_plugins import CommandGroup, add_plugin_commands
from botkit.cli_privacy import privacy
from botkit.control import ControlServer
from botkit.errors import BotkitError, ConfigError, NoRunningBot
from botkit.metrics_server import MetricsServer
from botkit.ops import CONFIG_HELP, Context, config_option, fail, store_plugin_switch
from botkit.settings import Settings, to_toml

log = logging.getLogger("botkit")


async def serve(
    bot: Bot, adapter_names: list[str], reload_on_hangup: bool = False, metrics: MetricsServer | None = None
) -> None:
    """Start the bot, its control socket and the adapters; stop everything when any adapter ends or on SIGTERM.

    ``reload_on_hangup`` (``botkit run``): SIGHUP re-reads the config as the control socket's
    ``reload`` request does, as daemons do. ``botkit chat`` leaves SIGHUP alone: there it means
    the terminal is gone. ``metrics`` (``botkit run`` with ``[metrics] enabled``): the metrics
    listener, started before the model loads so that ``/readyz`` says it is loading.
    """
    # Only the console: a chat beside a running bot of the same config goes on without the socket.
    control = ControlServer(bot, exclusive=adapter_names != ["console"], adapters=adapter_names)
    await control.open()  # before the model loads: a second bot on the same config stops here
    try:
        if metrics is not None:
            await metrics.start()
        await bot.start()
    except BaseException:
        if metrics is not None:
            await metrics.close()
        await control.close()
        raise
    loop = asyncio.get_running_loop()
    if reload_on_hangup:
        listen_for_hangup(loop, control)  # before the socket answers: a bot that answers reloads on SIGHUP
    await control.start_serving()
    adapters = [bot.make_adapter(name) for name in adapter_names]

    def close_all() -> None:
        for adapter in adapters:
            loop.create_task(adapter.close())

    try:
        loop.add_signal_handler(signal.SIGTERM, close_all)
    except (NotImplementedError, RuntimeError):
        pass  # not the main thread (embedded use): the embedder handles signals
    tasks = [asyncio.ensure_future(adapter.run()) for adapter in adapters]
    failure: BotkitError | None = None
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            error = task.exception()
            if isinstance(error, BotkitError):
                failure = error  # a refused token, a port in use: told without a traceback
            elif error is not None:
                log.error("adapter stopped with an error", exc_info=error)
    finally:
        for adapter in adapters:
            await adapter.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        await control.close()
        await bot.stop()
        if metrics is not None:
            await metrics.close()
    if failure is not None:
        raise failure


def listen_for_hangup(loop: asyncio.AbstractEventLoop, control: ControlServer) -> None:
    """Reload the config on each SIGHUP, through the control server (one reload at a time)."""
    hangup = getattr(signal, "SIGHUP", None)
    if hangup is None:
        return  # Windows has no SIGHUP

    async def reload() -> None:
        answer = await control.run_command("reload", via="SIGHUP")
        if not answer["ok"]:
            log.error("SIGHUP: config not reloaded, nothing changed: %s", answer["error"])

    running: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks

    def start_reload() -> None:
        task = loop.create_task(reload())
        running.add(task)
        task.add_done_callback(running.discard)

    try:
        loop.add_signal_handler(hangup, start_reload)
    except (NotImplementedError, RuntimeError):
        pass  # not the main thread (embedded use): the embedder handles signals


def run_adapters(ctx: Context, only: list[str] | None) -> None:
    try:
        settings = ctx.settings()
        bot = Bot.load(settings)
        names = only if only is not None else bot.enabled_adapters()
        for name in names:
            bot.adapter_settings(name)  # validates, and names a missing adapter plugin
        if not names:
            raise ConfigError("no adapter is enabled: enable one with [adapters.<name>] enabled = true")
        # `botkit run` serves metrics; a `botkit chat` beside it must not take its port.
        metrics = MetricsServer(bot, names) if only is None and settings.metrics.enabled else None
        asyncio.run(serve(bot, names, reload_on_hangup=only is None, metrics=metrics))
    except BotkitError as error:
        fail(error)
    except KeyboardInterrupt:
        pass  # Ctrl-C before the console adapter took over the signal: a clean exit


@click.command()
@config_option
@click.pass_obj
def chat(ctx: Context) -> None:
    """Chat with the bot in this terminal (or through a pipe: one reply per line).

    Lines starting with ':' steer the console (:help lists them): act as
    another user or an admin, or move to another channel, thread or DM.
    """
    run_adapters(ctx, ["console"])


@click.command()
@config_option
@click.pass_obj
def run(ctx: Context) -> None:
    """Start every enabled adapter in one process until stopped (Ctrl-C or SIGTERM).

    SIGHUP re-reads the config file without restarting (as /reload and the control socket do).
    """
    run_adapters(ctx, None)


@click.group()
def plugins() -> None:
    """Inspect the installed plugins."""


@plugins.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@click.pass_obj
def plugins_list(ctx: Context, as_json: bool) -> None:
    """List every plugin: name, whether the bot runs it and why, where it comes from, and its hooks.

    "Enabled" is what a bot started now runs with: the config, then the switches stored by
    ``/enable``, ``/disable`` and ``botkit plugins enable|disable``, less the plugins that
    fail to load or need a plugin that is off.
    """
    from botkit.plugin_host import PluginHost, stored_switches_of

    try:
        settings = ctx.settings()
        settings.plugins.on_error = "skip"  # list broken plugins instead of stopping at the first
        host = PluginHost(settings)
        logging.getLogger("botkit.plugins").setLevel(logging.CRITICAL)
        host.load()
    except BotkitError as error:
        fail(error)
    try:
        stored = asyncio.run(stored_switches_of(settings))
    except BotkitError as error:
        stored = {}
        click.echo(
            f"botkit: warning: stored plugin switches not read; the config alone decides here: {error}",
            err=True,
        )
    host.apply_stored_switches(stored)
    rows = [
        {
            "name": info.name,
            "source": info.origin,
            "enabled": host.is_on(info.name),
            "loaded": info.loaded,
            "hooks": info.hooks,
            "error": info.error,
            "note": info.note,
            "stored_switch": info.stored,
            "why": host.why(info.name),
        }
        for info in sorted(host.infos.values(), key=lambda i: i.name)
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    source_width = max(len(r["source"]) for r in rows)
    click.echo(f"{'NAME':<{width}}  {'ENABLED':<7}  {'SOURCE':<{source_width}}  HOOKS")
    for r in rows:
        state = "error" if r["error"] else ("yes" if r["enabled"] else "no")
        hooks = ", ".join(h.removeprefix("botkit_") for h in r["hooks"]) or "-"
        click.echo(f"{r['name']:<{width}}  {state:<7}  {r['source']:<{source_width}}  {hooks}")
        if r["why"]:
            told = "error" if r["error"] else ("on" if r["enabled"] else "off")
            click.echo(f"{'':<{width}}  {told}: {r['why']}")


def switch_from_shell(ctx: Context, name: str, enabled: bool | None) -> None:
    with_migrator(ctx, lambda bot: store_plugin_switch(bot, name, enabled))
    if enabled is None:
        click.echo(f"stored switch of {name} cleared: config.toml decides from the next start")
    else:
        state = "enabled" if enabled else "disabled"
        click.echo(
            f"{name} {state}; a running bot applies it at its next start (in chat, /{'enable' if enabled else 'disable'} acts at once)"
        )


@plugins.command("enable")
@config_option
@click.argument("name")
@click.pass_obj
def plugins_enable(ctx: Context, name: str) -> None:
    """Switch plugin NAME on, stored in the database: it beats config.toml until cleared."""
    switch_from_shell(ctx, name, True)


@plugins.command("disable")
@config_option
@click.argument("name")
@click.pass_obj
def plugins_disable(ctx: Context, name: str) -> None:
    """Switch plugin NAME off, stored in the database: it beats config.toml until cleared."""
    switch_from_shell(ctx, name, False)


@plugins.command("clear")
@config_option
@click.argument("name")
@click.pass_obj
def plugins_clear(ctx: Context, name: str) -> None:
    """Forget the stored switch of plugin NAME: config.toml decides again."""
    switch_from_shell(ctx, name, None)


@click.group("config")
def config_group() -> None:
    """Check the configuration."""


@config_group.command("check")
@config_option
@click.pass_obj
def config_check(ctx: Context) -> None:
    """Validate the config (file, environment, every plugin's settings) and print the result.

    Every problem is told, each table checked on its own: botkit's, each plugin's, each
    backend's, each adapter's. Secrets are shown masked. Exits 2 when anything is invalid.
    """
    from botkit.config_check import config_problems

    try:
        problems = config_problems(ctx.config)
    except BotkitError as error:
        fail(error)
    if problems:
        for problem in problems:
            click.echo(f"botkit: error: {problem}", err=True)
        count = f"{len(problems)} problems" if len(problems) > 1 else "1 problem"
        click.echo(f"botkit: {count} in the configuration", err=True)
        sys.exit(2)
    try:
        settings = ctx.settings()
        bot = Bot.load(settings)
        effective = bot.effective_config()
    except BotkitError as error:
        fail(error)
    click.echo(f"# {settings.source_name}: valid", err=True)
    click.echo(to_toml(effective))


@click.group()
def backends() -> None:
    """Show the configured model backends."""


@backends.command("list")
@config_option
@click.option("--no-load", is_flag=True, help="only show the configuration; do not try to load each model")
@click.pass_obj
def backends_list(ctx: Context, no_load: bool) -> None:
    """Print each configured backend: type, model, adapters, context size, and whether it loads;
    then what the bot running with this config is doing (its queues and engines), if one is.

    Loading means what the bot does at start: the model file is read (or the
    server asked for its models), then released. Exits 1 when any backend fails.
    """
    from botkit.backend_set import probe

    try:
        bot = Bot.load(ctx.settings())
    except BotkitError as error:
        fail(error)
    failures = 0
    for slot in bot.backends.values():
        problem = None if no_load else asyncio.run(probe(slot))
        summary = slot.summary()
        adapters = ", ".join(summary["adapters"]) or "none"
        lines = [
            f"{slot.name} [{slot.table}]",
            f"  type:     {summary['type']}",
            f"  model:    {summary['model']}",
            f"  loras:    {adapters}" + (f" (active: {summary['adapter']})" if summary["adapter"] else ""),
            f"  context:  {summary['context_window']:,} tokens",
        ]
        if no_load:
            lines.append("  loads:    not checked (--no-load)")
        elif problem is None:
            lines.append("  loads:    yes")
        else:
            failures += 1
            lines.append(f"  loads:    NO: {problem}")
        click.echo("\n".join(lines))
    click.echo("\n".join(running_bot_lines(bot.settings)))
    if failures:
        sys.exit(1)


def running_bot_lines(settings: Settings) -> list[str]:
    """What the bot running with ``settings`` says of its backends (one line each), or why nothing."""
    from botkit.control import CLAIM_TIMEOUT, control_socket_path, request_sync

    try:
        path = control_socket_path(settings)
        if path is None:
            return ["running bot: not asked ([bot] control_socket is off)"]
        answer = request_sync(path, {"command": "status"}, timeout=CLAIM_TIMEOUT)
    except NoRunningBot:
        return ["running bot: none with this config"]
    except BotkitError as error:
        return [f"running bot: not asked: {error}"]
    if not answer.get("ok"):
        return [f"running bot: its status failed: {answer.get('error')}"]
    return [f"running bot (pid {answer.get('pid')}):", *backend_lines(answer)]


def backend_lines(answer: dict[str, object]) -> list[str]:
    """One line per backend of a running bot's status answer."""
    from botkit.backend_set import status_from_summary

    try:
        backends = answer["backends"]
        assert isinstance(backends, dict)
        return [f"  {status_from_summary(name, summary).describe()}" for name, summary in backends.items()]
    except (KeyError, TypeError, AssertionError) as error:
        # A bot of an older botkit reports less; say what it gave rather than fail.
        return [f"  its status lacks {error} (an older botkit?)"]


@click.command()
@config_option
@click.option("--metrics", "show_metrics", is_flag=True, help="print its Prometheus metrics instead")
@click.pass_obj
def status(ctx: Context, show_metrics: bool) -> None:
    """Ask the bot running with this config (its control socket) whether it is ready, and what it does.

    Prints each readiness check (model, database, each adapter), as /readyz does, then
    each backend's queue. Exits 0 when ready, 1 when not or when no bot answers. With
    --metrics: the bot's metrics in the Prometheus text format ([metrics] enabled = true).
    """
    from botkit.control import CLAIM_TIMEOUT, control_socket_path, request_sync

    try:
        settings = ctx.settings()
        path = control_socket_path(settings)
        if path is None:
            raise ConfigError(f"{settings.source_name}: [bot] control_socket is off: no running bot to ask")
        command = "metrics" if show_metrics else "status"
        answer = request_sync(path, {"command": command}, timeout=CLAIM_TIMEOUT)
    except BotkitError as error:
        fail(error)
    if not answer["ok"]:
        fail(BotkitError(f"the running bot says: {answer.get('error')}"))
    if show_metrics:
        click.echo(answer["metrics"], nl=False)
        return
    readiness = answer.get("readiness")
    if not isinstance(readiness, dict):
        fail(BotkitError(f"the bot (pid {answer.get('pid')}) reports no readiness (an older botkit?)"))
    click.echo(f"bot (pid {answer.get('pid')}): {'ready' if readiness['ready'] else 'NOT READY'}")
    for name, check in readiness["checks"].items():
        click.echo(f"  {name}: {'ok' if check['ok'] else 'FAILING'} ({check['detail']})")
    click.echo("\n".join(backend_lines(answer)))
    click.echo(f"  metrics: {answer.get('metrics') or 'not served ([metrics] enabled = false)'}")
    if not readiness["ready"]:
        sys.exit(1)


CORE_COMMANDS: tuple[click.Command, ...] = (
    chat, run, status, overview, plugins, config_group, backends, db, models, privacy
)


def root_group() -> click.Group:
    """The ``botkit`` group with its own options and no commands."""

    @click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="botkit")
    @click.option(
        "--config", "-c", type=click.Path(path_type=Path, dir_okay=False), default=None, help=CONFIG_HELP
    )
    @click.pass_context
    def cli(ctx: click.Context, config: Path | None) -> None:
        """Run your own instruction-tuned LLM chatbot on Slack, Discord and the console."""
        ctx.obj = Context(config)

    return cli


def create_cli(config: Path | None = None) -> click.Group:
    """The ``botkit`` group: botkit's own commands, then those the plugins that are on add.

    ``config`` names the config file whose ``[plugins]`` table (``directory``, ``enabled =
    false``) says which plugins are asked (default: $BOTKIT_CONFIG, else ./config.toml if
    present); ``BOTKIT_LOAD_PLUGINS`` applies too. See ``botkit.cli_plugins``.
    """
    cli = root_group()
    for command in CORE_COMMANDS:
        cli.add_command(command)
    add_plugin_commands(cli, config)
    return cli


def config_before_command(args: Sequence[str]) -> Path | None:
    """The ``--config`` given before the command (``botkit --config bot.toml export``), if any.

    The plugins' commands must exist before click parses the command line, so the group's
    own options are parsed once ahead, leniently: anything else is left to the real parse.
    """
    try:
        ctx = root_group().make_context("botkit", list(args), resilient_parsing=True)
    except click.ClickException:
        return None  # the real parse says what is wrong
    config = ctx.params.get("config")
    return config if isinstance(config, Path) else None


def main() -> None:
    """The ``botkit`` console script."""
    args = sys.argv[1:]
    create_cli(config_before_command(args)).main(args)


if __name__ == "__main__":
    main()
