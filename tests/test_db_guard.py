"""`botkit db upgrade|downgrade` beside a running bot: found by its control socket or its PostgreSQL connections."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_control import running
from test_db_cli import invoke

from botkit.bot import Bot
from botkit.db_guard import bots_using
from botkit.settings import load_settings
from botkit.testing import eventually


@pytest.fixture
def runtime_dir(monkeypatch) -> Iterator[Path]:
    """A private $XDG_RUNTIME_DIR for ``auto`` sockets, short enough for a socket path."""
    folder = Path(tempfile.mkdtemp(prefix="rt"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def write_config(path: Path, control_socket: str, storage: str) -> Path:
    path.write_text(
        f'[bot]\ncontrol_socket = "{control_socket}"\n[backend]\ntype = "scripted"\n[storage]\n{storage}\n',
        encoding="utf-8",
    )
    return path


async def run_cli(config: Path, *args: str, stdin: str | None = None):
    """The command in a thread: it runs its own event loop while this one serves the bot."""
    return await asyncio.to_thread(invoke, config, *args, stdin=stdin)


async def revisions(config: Path) -> set[str]:
    bot = Bot.load(load_settings(config))
    await bot.db.connect()
    try:
        return await bot.migrator.current()
    finally:
        await bot.db.close()


async def test_the_bot_of_this_config_is_found_on_its_socket_and_force_goes_on(tmp_path, runtime_dir):
    config = write_config(tmp_path / "config.toml", "c.sock", 'data_dir = "data"')
    async with running(config):
        head = await revisions(config)  # the bot brought the schema up to date as it started
        assert head
        for verb, command in (("upgrading", ["upgrade"]), ("downgrading", ["downgrade", "base"])):
            refused = await run_cli(config, "db", *command)
            assert refused.exit_code == 1, refused.output
            assert f"not {verb} sqlite+aiosqlite:///{tmp_path / 'data' / 'botkit.db'}" in refused.stderr
            assert (
                f"a running bot uses it: a bot (pid {os.getpid()}, config {config}) answers on the "
                f"control socket {tmp_path / 'c.sock'}" in refused.stderr
            )
            assert "stop it (every replica) first, or pass --force" in refused.stderr
        assert await revisions(config) == head  # nothing was done

        forced = await run_cli(config, "db", "upgrade", "--force")
        assert forced.exit_code == 0, forced.output
        assert f"botkit: warning: a bot (pid {os.getpid()}" in forced.stderr
        assert "going on (--force)" in forced.stderr
    assert (await run_cli(config, "db", "upgrade")).exit_code == 0  # the bot stopped: nobody in the way


async def test_a_bot_of_another_config_on_the_same_file_is_found_in_the_auto_folder(tmp_path, runtime_dir):
    shared = f'data_dir = "{tmp_path / "data"}"'
    bot_config = write_config(tmp_path / "bot.toml", "auto", shared)
    ops_config = write_config(tmp_path / "ops.toml", "auto", shared)
    other_config = write_config(tmp_path / "other.toml", "auto", f'data_dir = "{tmp_path / "other"}"')
    async with running(bot_config):
        refused = await run_cli(ops_config, "db", "upgrade")
        assert refused.exit_code == 1
        assert (
            f"a bot (pid {os.getpid()}, config {bot_config}) answers on the control socket" in refused.stderr
        )
        assert str(runtime_dir / "botkit") in refused.stderr
        elsewhere = await run_cli(other_config, "db", "upgrade")  # another database: none of its business
        assert elsewhere.exit_code == 0, elsewhere.output


async def test_a_bot_on_postgresql_is_found_by_its_connections(tmp_path, runtime_dir, postgres):
    url = postgres.create_database("guard")
    config = write_config(tmp_path / "config.toml", "off", f'url = "{url}"')
    async with running(config) as (bot, _):
        head = await revisions(config)
        refused = await run_cli(config, "db", "downgrade", "base")
        assert refused.exit_code == 1
        assert "a running bot uses it: " in refused.stderr
        assert (
            "PostgreSQL connection" in refused.stderr
            and "named 'botkit-bot' from 127.0.0.1" in refused.stderr
        )
        assert await revisions(config) == head
        forced = await run_cli(config, "db", "upgrade", "--force")
        assert forced.exit_code == 0, forced.output
    # Once the bot's connections are closed, the server forgets them (a moment later).
    tool = Bot.load(load_settings(config))
    await tool.db.connect()
    try:
        assert await eventually(lambda: _none_found(tool), what="the stopped bot's connections gone")
    finally:
        await tool.db.close()
    assert (await run_cli(config, "db", "upgrade")).exit_code == 0


async def _none_found(bot: Bot) -> bool:
    return await bots_using(bot.db, bot.settings) == []
