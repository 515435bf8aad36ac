"""The register hooks no other test implements, each used by a third-party plugin through a real bot."""

from __future__ import annotations

import pytest

from botkit import (
    Adapter,
    AdapterSettings,
    Backend,
    BackendSettings,
    Chunk,
    Message,
    ReplyStatus,
    Responder,
    User,
    hookimpl,
)
from botkit.errors import ConfigError, PluginLoadError


class EchoSettings(BackendSettings):
    type: str = "echo"
    prefix: str = "you said: "


class EchoBackend(Backend):
    """Streams the user's message back, word by word, after a configurable prefix."""

    settings: EchoSettings

    def __init__(self, settings: EchoSettings) -> None:
        super().__init__(settings)
        self.started = self.closed = False

    @property
    def model_name(self) -> str:
        return "echo"

    @property
    def context_window(self) -> int:
        return 4096

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    async def count_text(self, text: str) -> int:
        return len(text.split()) + 1

    async def count_tokens(self, prompt):
        return sum(len(turn.text.split()) for turn in prompt.turns) + 1

    async def stream(self, prompt, params, cancel):
        for word in (self.settings.prefix + prompt.current.text).split(" ")[: params.max_tokens]:
            if cancel.is_set():
                return
            yield Chunk(word + " ")


class EchoPlugin:
    @hookimpl
    def botkit_register_backends(self, register):
        register("echo", EchoBackend, EchoSettings)


async def test_a_plugin_backend_is_chosen_and_configured_by_backend_type(make_bot):
    config = {"backend": {"type": "echo", "prefix": "echo: ", "max_tokens": 3}}
    async with make_bot(config, plugins={"echo": EchoPlugin()}) as bot:
        assert isinstance(bot.backend, EchoBackend) and bot.backend.started
        assert bot.registry.owner("backend", "echo") == "echo"
        reply = await bot.chat.say("one two three four")
    assert bot.backend.closed
    assert reply.final == "echo: one two "  # max_tokens = 3 chunks
    assert reply.status is ReplyStatus.COMPLETED


def test_a_plugin_backend_validates_its_own_settings():
    from botkit.bot import Bot
    from botkit.settings import settings_from_mapping

    settings = settings_from_mapping({"backend": {"type": "echo", "prefx": "typo"}})
    with pytest.raises(ConfigError, match=r"\[backend\] prefx: unknown key"):
        Bot.load(settings, extra_plugins={"echo": EchoPlugin()})


class CollectingResponder(Responder):
    def __init__(self, out: list[str]) -> None:
        self.out = out

    async def send(self, text: str) -> None:
        self.out.append(text)

    async def update(self, text: str) -> None:
        pass

    async def finish(self, text: str, status: ReplyStatus) -> None:
        self.out.append(text)


class LinesSettings(AdapterSettings):
    channel: str = "lobby"


class LinesAdapter(Adapter):
    """Hands each of a list of lines to the bot and collects the answers."""

    name = "lines"
    settings: LinesSettings

    def __init__(self, bot, settings: LinesSettings) -> None:
        super().__init__(bot, settings)
        self.lines: list[str] = []
        self.answers: list[str] = []
        self.seen: list[Message] = []

    async def run(self) -> None:
        for text in self.lines:
            message = Message(text, User("reader"), platform="lines", channel_id=self.settings.channel)
            self.seen.append(message)
            await self.bot.handle(message, CollectingResponder(self.answers))


class LinesPlugin:
    @hookimpl
    def botkit_register_adapters(self, register):
        register("lines", LinesAdapter, LinesSettings)


async def test_a_plugin_adapter_is_configured_and_carries_messages(make_bot):
    config = {"adapters": {"lines": {"channel": "books"}}}
    async with make_bot(config, plugins={"lines": LinesPlugin()}) as bot:
        assert bot.enabled_adapters() == ["console", "lines"]
        adapter = bot.make_adapter("lines")
        assert isinstance(adapter, LinesAdapter) and adapter.settings.channel == "books"
        adapter.lines = ["hello", "/help"]
        bot.backend.say("hi reader")
        await adapter.run()
    assert adapter.answers[0] == "hi reader"
    assert adapter.answers[1].startswith("Commands:")
    assert [m.channel_id for m in adapter.seen] == ["books", "books"]


async def test_a_disabled_plugin_adapter_is_not_started_by_run(make_bot):
    config = {"adapters": {"lines": {"enabled": False}}}
    async with make_bot(config, plugins={"lines": LinesPlugin()}) as bot:
        assert bot.enabled_adapters() == ["console"]


def test_two_adapters_with_one_name_name_both_plugins():
    from botkit.bot import Bot
    from botkit.settings import settings_from_mapping

    class Impostor:
        @hookimpl
        def botkit_register_adapters(self, register):
            register("console", LinesAdapter, LinesSettings)

    settings = settings_from_mapping({"backend": {"type": "scripted"}})
    with pytest.raises(
        PluginLoadError,
        match="adapter 'console' is registered by both plugin 'console' and plugin 'impostor'",
    ):
        Bot.load(settings, extra_plugins={"impostor": Impostor()})


NOTES_REVISION = '''
"""notes plugin: its own table

Revision ID: notes_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "notes_0001"
down_revision = None
branch_labels = ("notes",)
depends_on = "botkit"


def upgrade():
    op.create_table(
        "notes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("text", sa.Text(), nullable=False),
    )


def downgrade():
    op.drop_table("notes")
'''


def notes_plugin(folder):
    """A plugin with its own table: a migration branch in ``folder`` and the matching metadata."""
    import sqlalchemy as sa

    versions = folder / "notes_versions"
    versions.mkdir(exist_ok=True)
    (versions / "notes_0001.py").write_text(NOTES_REVISION, encoding="utf-8")
    metadata = sa.MetaData()
    table = sa.Table(
        "notes",
        metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("text", sa.Text(), nullable=False),
    )

    class Notes:
        @hookimpl
        def botkit_register_migrations(self, register):
            register(versions, metadata)

    return Notes(), versions, table


async def test_a_plugin_migration_branch_is_applied_at_start(make_bot, tmp_path):
    import sqlalchemy as sa

    plugin, versions, notes = notes_plugin(tmp_path)
    async with make_bot(plugins={"notes": plugin}) as bot:
        assert bot.registry.migrations["notes"].versions == versions
        assert "notes_0001" in bot.migrator.heads()
        assert "notes_0001" in await bot.migrator.current()
        assert await bot.migrator.differences() == []  # models and migrations agree
        async with bot.db.session() as session:
            await session.execute(notes.insert().values(text="remember the milk"))
        async with bot.db.session() as session:
            assert (await session.execute(sa.select(notes.c.text))).scalars().all() == ["remember the milk"]


async def test_a_migrated_database_with_a_dependent_branch_is_current(make_bot, tmp_path):
    plugin, _, _ = notes_plugin(tmp_path)
    storage = {"data_dir": str(tmp_path / "data")}
    async with make_bot({"storage": storage}, plugins={"notes": plugin}):
        pass
    # notes_0001 depends on the core branch's first revision (its label), which the core's head
    # 0006 comes after: Alembic stores both heads, and the schema is current.
    async with make_bot({"storage": {**storage, "auto_upgrade": False}}, plugins={"notes": plugin}) as bot:
        assert await bot.migrator.current() == {"0006", "notes_0001"}
        assert await bot.migrator.is_current()


# -- botkit_register_cli: a third-party plugin adds commands to `botkit` -------------

GREET_PLUGIN = '''
import click
from botkit import BotkitError, hookimpl
from botkit.ops import Context, config_option, fail


@click.command()
@config_option
@click.option("--loud", is_flag=True)
@click.pass_obj
def greet(ctx: Context, loud: bool):
    """Greet as the configured bot."""
    try:
        name = ctx.settings().bot.name
    except BotkitError as error:
        fail(error)
    click.echo(f"{name} says hello" + ("!" if loud else ""))


@hookimpl
def botkit_register_cli(cli):
    cli.add_command(greet)
'''

# Its second command takes a core command's name: the plugin adds neither.
GRABBY_PLUGIN = '''
import click
from botkit import hookimpl


@hookimpl
def botkit_register_cli(cli):
    @cli.command()
    def wave():
        """Wave."""

    @cli.command()
    def chat():
        """Not the real chat."""
'''


def plugin_folder(tmp_path, **plugins: str):
    """A config whose ``[plugins] directory`` holds the given single-file plugins, by name."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    for name, text in plugins.items():
        (folder / f"{name}.py").write_text(text, encoding="utf-8")
    config = tmp_path / "config.toml"
    config.write_text(f'[bot]\nname = "Ada"\n[plugins]\ndirectory = "{folder}"\n', encoding="utf-8")
    return config


def run_botkit(*args: str, cwd, env: dict[str, str] | None = None):
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if not k.startswith("BOTKIT_")}
    return subprocess.run(
        [sys.executable, "-m", "botkit", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**clean, **(env or {})},
        timeout=60,
    )


def test_a_plugin_command_runs_with_the_config_named_before_it(tmp_path):
    config = plugin_folder(tmp_path, greet=GREET_PLUGIN)
    result = run_botkit("--config", str(config), "greet", "--loud", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "Ada says hello!\n", "")
    listing = run_botkit("--config", str(config), "--help", cwd=tmp_path)
    assert "greet     Greet as the configured bot." in listing.stdout


def test_a_plugin_command_finds_the_config_in_the_current_folder_too(tmp_path):
    plugin_folder(tmp_path, greet=GREET_PLUGIN)
    result = run_botkit("greet", cwd=tmp_path)
    assert result.stdout == "Ada says hello\n"


def test_a_plugin_command_taking_a_taken_name_adds_nothing_and_is_named(tmp_path, capsys):
    from click.testing import CliRunner

    from botkit.cli import create_cli

    config = plugin_folder(tmp_path, grabby=GRABBY_PLUGIN)
    cli = create_cli(config)
    assert capsys.readouterr().err == (
        "botkit: warning: plugin 'grabby' adds no commands: DuplicateNameError: there is already a "
        "command 'chat'; a plugin cannot replace it (leave it out with [plugins.grabby] enabled = false, "
        "or BOTKIT_LOAD_PLUGINS)\n"
    )
    assert "wave" not in cli.commands
    result = CliRunner().invoke(cli, ["chat", "--help"])
    assert "Chat with the bot in this terminal" in result.output


def test_a_broken_or_switched_off_plugin_adds_no_command(tmp_path, monkeypatch):
    config = plugin_folder(tmp_path, greet=GREET_PLUGIN, broken="raise RuntimeError('half-written')\n")
    result = run_botkit("--config", str(config), "greet", cwd=tmp_path)
    assert result.stdout == "Ada says hello\n"
    assert "botkit: warning: plugin 'broken' adds no commands: RuntimeError: half-written" in result.stderr

    config.write_text(config.read_text() + "[plugins.greet]\nenabled = false\n", encoding="utf-8")
    off = run_botkit("--config", str(config), "greet", cwd=tmp_path)
    assert off.returncode == 2 and "No such command 'greet'" in off.stderr
    only = run_botkit("greet", cwd=tmp_path, env={"BOTKIT_LOAD_PLUGINS": "console,scripted"})
    assert only.returncode == 2 and "No such command 'greet'" in only.stderr


def test_the_finetune_plugin_adds_export_and_finetune_and_can_be_switched_off(tmp_path):
    from botkit.cli import create_cli

    assert {"export", "finetune"} <= set(create_cli().commands)
    config = tmp_path / "config.toml"
    config.write_text("[plugins.finetune]\nenabled = false\n", encoding="utf-8")
    assert not {"export", "finetune"} & set(create_cli(config).commands)


def test_asking_the_plugins_for_commands_imports_no_heavy_library():
    import subprocess
    import sys

    heavy = ("torch", "transformers", "peft", "discord", "slack_bolt", "llama_cpp", "datasets")
    probe = (
        "import sys; from botkit.cli import create_cli; create_cli(); "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr


# -- top-level tables: a plugin claims the table of its own name ---------------------

NOTES_PLUGIN = """
from pydantic import BaseModel
from botkit import hookimpl


class NotesSettings(BaseModel):
    model_config = {"extra": "forbid"}
    shelf: str = "inbox"
    keep: int = 10


@hookimpl
def botkit_register_settings(register):
    register("notes", NotesSettings, top_level=True)
"""


def notes_config(tmp_path, text: str):
    """Settings of a config that has ``text`` and a plugin folder with the notes and greet plugins."""
    from botkit.settings import load_settings

    config = plugin_folder(tmp_path, notes=NOTES_PLUGIN, greet=GREET_PLUGIN)
    # First, so that a key outside any table (`notes = 3`) stays top-level.
    config.write_text(text + config.read_text() + '[backend]\ntype = "scripted"\n', encoding="utf-8")
    return load_settings(config)


def test_a_plugin_top_level_table_is_validated_with_the_environment_on_top(tmp_path, monkeypatch):
    from botkit.bot import Bot
    from botkit.ops import config_table

    monkeypatch.setenv("BOTKIT_NOTES__SHELF", "work")
    settings = notes_config(tmp_path, "[notes]\nkeep = 3\n")
    bot = Bot.load(settings)
    model = bot.registry.top_level_models["notes"]
    assert bot.registry.owner("top-level table", "notes") == "notes"
    assert config_table(settings, "notes", model) == model(shelf="work", keep=3)


@pytest.mark.parametrize(
    "text, problem",
    [
        ('[notes]\nkeep = "many"\n', r"\[notes\] keep: Input should be a valid integer"),
        ("[notes]\nshelv = 1\n", r"\[notes\] shelv: unknown key"),
        ("[nots]\nkeep = 1\n", r"nots: unknown key \(check the spelling\); the top-level tables are botkit's"),
        ("[greet]\nloud = true\n", r"\[greet\]: plugin 'greet' has no top-level table"),
        ("notes = 3\n", r"notes: expected a table, \[notes\]"),
    ],
)
def test_a_bad_top_level_table_stops_loading(tmp_path, text, problem):
    from botkit.bot import Bot

    settings = notes_config(tmp_path, text)
    with pytest.raises(ConfigError, match=problem):
        Bot.load(settings)


def test_the_table_of_a_plugin_that_is_off_is_not_checked(tmp_path):
    from botkit.bot import Bot

    settings = notes_config(tmp_path, '[plugins.notes]\nenabled = false\n[notes]\nkeep = "many"\n')
    assert "notes" not in Bot.load(settings).registry.top_level_models


def test_a_plugin_claims_no_top_level_table_but_its_own():
    from botkit.bot import Bot
    from botkit.settings import settings_from_mapping

    class Jotter:
        @hookimpl
        def botkit_register_settings(self, register):
            register("notes", EchoSettings, top_level=True)

    settings = settings_from_mapping({"backend": {"type": "scripted"}})
    with pytest.raises(PluginLoadError, match=r"claims only the top-level table of its own name: \[jotter\]"):
        Bot.load(settings, extra_plugins={"jotter": Jotter()})


async def test_reload_refuses_a_bad_top_level_table_and_keeps_the_old_config(tmp_path, make_bot):
    settings = notes_config(tmp_path, "[notes]\nkeep = 3\n")
    async with make_bot({"plugins": {"directory": str(settings.plugins.directory)}}) as bot:
        bot.host.settings = settings  # as if started from the file
        assert settings.source_path is not None
        settings.source_path.write_text(settings.source_path.read_text().replace("keep = 3", 'keep = "x"'))
        with pytest.raises(ConfigError, match=r"\[notes\] keep: Input should be a valid integer"):
            await bot.reload_settings()
    assert bot.settings is settings
