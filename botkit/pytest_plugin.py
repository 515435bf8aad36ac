"""botkit's pytest plugin: the ``make_bot`` and ``botkit_bot`` fixtures, loaded with pytest.

pytest loads this module (entry point ``pytest11``) in every test run of every
project that has botkit installed, before it collects a single test. So it
imports nothing but pytest: the bot, its storage and its backends are imported
by the fixtures when a test asks for one. The helpers themselves live in
``botkit.testing``. The fixture names carry the project's name where a short one
(``bot``) would shadow or be shadowed by a fixture of the user's own suite.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from botkit.testing import MakeBot, TestBot


@pytest.fixture
def make_bot(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> MakeBot:
    """Build, start and (always) stop a bot: ``async with make_bot(config, plugins=...) as bot``.

    Each bot gets a fresh SQLite database in a temporary folder unless the
    config names ``[storage]`` itself. ``BOTKIT_*`` variables of the environment
    the tests run in are removed, so that a developer's own settings do not
    leak into the bot under test.
    """
    from botkit.testing import bot_factory

    for name in list(os.environ):
        if name.startswith("BOTKIT_"):
            monkeypatch.delenv(name)
    return bot_factory(tmp_path_factory)


@pytest.fixture
async def botkit_bot(make_bot: MakeBot) -> AsyncIterator[TestBot]:
    """A started bot with the default plugins and the scripted backend."""
    async with make_bot() as started:
        yield started
