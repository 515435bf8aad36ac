"""Shared fixtures. ``make_bot`` and ``botkit_bot`` come from botkit's own pytest plugin (botkit.pytest_plugin)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def bot(botkit_bot):
    """This suite's short name for the plugin's ``botkit_bot``: a started bot on the scripted backend."""
    return botkit_bot


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a config.toml and return its path."""

    def write(text: str, name: str = "config.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session", autouse=True)
def no_botkit_environment():
    """No ``BOTKIT_*`` variable of the developer's shell steers a test, nor a botkit process it starts.

    Session-wide, so that module-scoped fixtures and subprocesses see the clean
    environment too. A test that sets a variable uses ``monkeypatch.setenv``,
    which undoes it when the test ends.
    """
    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if name.startswith("BOTKIT_")]:
            patch.delenv(name)
        yield


@pytest.fixture(autouse=True)
def private_data_dir(tmp_path_factory, monkeypatch):
    """Keep every test (and every botkit it starts) out of the real ~/.local/share/botkit."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the whole test session (never skipped)."""
    import tempfile

    from servers import remove_tree, start_postgres

    # Not under pytest's tmp folder: the server runs as the 'postgres' user, who must reach it.
    root = Path(tempfile.mkdtemp(prefix="botkit-pg-"))
    server = start_postgres(root)
    yield server
    server.stop()
    remove_tree(root)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_config(request, tmp_path) -> dict:
    """``{"storage": ...}`` for a fresh, empty database of each kind."""
    storage = {"data_dir": str(tmp_path / "data")}
    if request.param == "postgresql":
        import uuid

        storage["url"] = request.getfixturevalue("postgres").create_database(f"t{uuid.uuid4().hex[:12]}")
    return {"storage": storage}


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server for the whole test session (never skipped)."""
    from servers import start_redis

    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def configured_logging():
    """``configure_logging`` for a test in this process; the logging set-up as it was afterwards."""
    import logging

    from botkit.logs import QUIET_LOGGERS, configure_logging
    from botkit.settings import LoggingSettings

    root = logging.getLogger()
    names = ["botkit", *QUIET_LOGGERS]
    saved = (root.level, {name: logging.getLogger(name).level for name in names})

    def configure(**values):
        return configure_logging(LoggingSettings(**values), force=True)

    yield configure
    for handler in [h for h in root.handlers if h.get_name() == "botkit"]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(saved[0])
    for name, level in saved[1].items():
        logging.getLogger(name).setLevel(level)
