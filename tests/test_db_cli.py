"""`botkit db ...` and several bot processes sharing one SQLite file."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest


def botkit(*args: str, cwd: Path, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "botkit", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[backend]\ntype = "scripted"\n[storage]\ndata_dir = "{tmp_path / "data"}"\nauto_upgrade = false\n',
        encoding="utf-8",
    )
    return path


def test_db_commands_walk_the_schema_up_and_down(config, tmp_path):
    db_file = tmp_path / "data" / "botkit.db"
    current = botkit("-c", str(config), "db", "current", cwd=tmp_path)
    assert current.returncode == 0, current.stderr
    assert current.stdout.strip() == f"sqlite+aiosqlite:///{db_file}: empty (out of date (newest: 0002))"

    refused = botkit("-c", str(config), "chat", stdin="hi\n", cwd=tmp_path)
    assert refused.returncode == 1
    assert "is out of date" in refused.stderr and "run `botkit db upgrade`" in refused.stderr

    upgraded = botkit("-c", str(config), "db", "upgrade", cwd=tmp_path)
    assert upgraded.stdout.strip() == f"sqlite+aiosqlite:///{db_file}: empty -> 0002"
    assert (
        botkit("-c", str(config), "db", "current", cwd=tmp_path).stdout.strip().endswith("0002 (up to date)")
    )
    assert botkit("-c", str(config), "chat", stdin="hi\n", cwd=tmp_path).returncode == 0

    history = botkit("-c", str(config), "db", "history", cwd=tmp_path)
    assert "<base> -> 0001 (botkit), core schema" in history.stdout
    assert "0001 -> 0002 (botkit) (head), write keys and dead letters" in history.stdout

    backup = botkit("-c", str(config), "db", "backup", str(tmp_path / "copy.db"), cwd=tmp_path)
    assert backup.returncode == 0, backup.stderr
    with sqlite3.connect(tmp_path / "copy.db") as copy:
        assert copy.execute("SELECT text FROM messages WHERE role = 'user'").fetchall() == [("hi",)]
    again = botkit("-c", str(config), "db", "backup", str(tmp_path / "copy.db"), cwd=tmp_path)
    assert again.returncode == 1 and "pass --overwrite" in again.stderr

    down = botkit("-c", str(config), "db", "downgrade", "base", cwd=tmp_path)
    assert down.stdout.strip() == f"sqlite+aiosqlite:///{db_file}: 0002 -> empty"


def test_unreachable_database_at_start_is_a_clear_error(tmp_path):
    from servers import free_port

    config = tmp_path / "config.toml"
    config.write_text(
        f'[backend]\ntype = "scripted"\n[storage]\nurl = "postgresql+asyncpg://bot@127.0.0.1:{free_port()}/botkit"\n',
        encoding="utf-8",
    )
    result = botkit(
        "-c", str(config), "chat", stdin="hi\n", cwd=tmp_path, env={"BOTKIT_STORAGE__PASSWORD": "pw-123"}
    )
    assert result.returncode == 1
    assert "cannot reach the database at postgresql+asyncpg://bot:***@127.0.0.1" in result.stderr
    assert "pw-123" not in result.stderr and "Traceback" not in result.stderr


def test_two_bot_processes_share_one_sqlite_file(config, tmp_path):
    assert botkit("-c", str(config), "db", "upgrade", cwd=tmp_path).returncode == 0
    lines = 40
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "botkit", "-c", str(config), "chat"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for _ in range(2)
    ]
    outputs = [
        process.communicate(
            "".join(f":as user{n}\nmessage {i} from process {n}\n" for i in range(lines)), timeout=120
        )
        for n, process in enumerate(processes)
    ]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
        assert "database is locked" not in err and "Traceback" not in err
        assert out.count("botkit> ") == lines
    with sqlite3.connect(tmp_path / "data" / "botkit.db") as db:
        stored = db.execute("SELECT count(*) FROM messages WHERE role = 'user'").fetchone()[0]
        users = db.execute("SELECT count(*) FROM users").fetchone()[0]
    assert (stored, users) == (2 * lines, 2)


def test_chat_remembers_across_restarts(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(
        f'[backend]\ntype = "scripted"\n[storage]\ndata_dir = "{tmp_path / "data"}"\n', encoding="utf-8"
    )
    first = botkit("-c", str(config), "chat", stdin="My favourite colour is teal.\n", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = botkit("-c", str(config), "chat", stdin="/history\n/reset\n/history\n", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [
        "botkit> What I remember of this conversation (oldest first):",
        "you: My favourite colour is teal.",
        "me: Hello from the scripted backend.",
        "botkit> Started a fresh conversation: I won't use what was said before (it stays in the log).",
        "botkit> I don't remember anything of this conversation yet.",
    ]
