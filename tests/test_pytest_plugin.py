"""botkit's pytest plugin as a user's own test suite meets it: light at start, fixtures that do not collide."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

USERS_TESTS = '''
import sys

# What pytest had imported once every plugin was loaded and this file collected.
HEAVY = sorted(
    name for name in sys.modules
    if name.split(".")[0] in {"sqlalchemy", "aiosqlite", "alembic", "llama_cpp", "numpy", "pydantic"}
    or name in {"botkit.bot", "botkit.testing", "botkit.storage"}
)


def test_nothing_heavy_was_imported_at_collection():
    assert HEAVY == []


async def test_make_bot_runs_a_bot_on_the_scripted_backend(make_bot):
    async with make_bot() as bot:
        bot.backend.say("hello from the plugin")
        reply = await bot.chat.say("hi")
    assert reply.final == "hello from the plugin"


async def test_botkit_bot_is_a_started_bot(botkit_bot):
    botkit_bot.backend.say("ready")
    assert (await botkit_bot.chat.say("hi")).final == "ready"


# A user's suite with its own short fixture names keeps them.
import pytest


@pytest.fixture
def bot():
    return "the user's own bot fixture"


def test_a_users_own_bot_fixture_is_not_shadowed(bot):
    assert bot == "the user's own bot fixture"
'''


def test_the_plugin_loads_by_itself_imports_nothing_heavy_and_keeps_users_fixture_names(tmp_path: Path):
    (tmp_path / "test_users_suite.py").write_text(textwrap.dedent(USERS_TESTS), encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_users_suite.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout
