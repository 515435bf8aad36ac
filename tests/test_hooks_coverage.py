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
    # Alembic stores only notes_0001 (it depends on the core branch); the schema is still current.
    async with make_bot({"storage": {**storage, "auto_upgrade": False}}, plugins={"notes": plugin}) as bot:
        assert await bot.migrator.current() == {"notes_0001"}
        assert await bot.migrator.is_current()
