"""`botkit db ...` and several bot processes sharing one SQLite file."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from botkit.cli import create_cli


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


def invoke(config: Path, *args: str, stdin: str | None = None) -> Result:
    """``botkit -c CONFIG ARGS...`` in this process (quicker than a subprocess)."""
    return CliRunner().invoke(create_cli(), ["-c", str(config), *args], input=stdin)


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
    assert current.stdout.strip() == f"sqlite+aiosqlite:///{db_file}: empty (out of date (newest: 0006))"

    refused = botkit("-c", str(config), "chat", stdin="hi\n", cwd=tmp_path)
    assert refused.returncode == 1
    assert "is out of date" in refused.stderr and "run `botkit db upgrade`" in refused.stderr

    upgraded = botkit("-c", str(config), "db", "upgrade", cwd=tmp_path)
    assert upgraded.stdout.strip() == f"sqlite+aiosqlite:///{db_file}: empty -> 0006"
    assert (
        botkit("-c", str(config), "db", "current", cwd=tmp_path).stdout.strip().endswith("0006 (up to date)")
    )
    assert botkit("-c", str(config), "chat", stdin="hi\n", cwd=tmp_path).returncode == 0

    history = botkit("-c", str(config), "db", "history", cwd=tmp_path)
    assert "<base> -> 0001 (botkit), core schema" in history.stdout
    assert "0001 -> 0002 (botkit), write keys and dead letters" in history.stdout
    assert "0002 -> 0003 (botkit), seen deliveries" in history.stdout
    assert "0003 -> 0004 (botkit), web console: accounts, sessions and the audit log" in history.stdout
    assert "0004 -> 0005 (botkit), canary rollout: the canaries table and each reply's arm" in history.stdout
    assert (
        "0005 -> 0006 (botkit) (head), search indexes: message text, and feedback and moderation events by time"
        in history.stdout
    )

    backup = botkit("-c", str(config), "db", "backup", str(tmp_path / "copy.db"), cwd=tmp_path)
    assert backup.returncode == 0, backup.stderr
    with sqlite3.connect(tmp_path / "copy.db") as copy:
        assert copy.execute("SELECT text FROM messages WHERE role = 'user'").fetchall() == [("hi",)]
    again = botkit("-c", str(config), "db", "backup", str(tmp_path / "copy.db"), cwd=tmp_path)
    assert again.returncode == 1 and "pass --overwrite" in again.stderr

    down = botkit("-c", str(config), "db", "downgrade", "base", "--yes", cwd=tmp_path)
    assert down.stdout.splitlines()[-1] == f"sqlite+aiosqlite:///{db_file}: 0006 -> empty"


def test_downgrade_takes_a_relative_revision_and_still_refuses_a_mistyped_option(config):
    assert invoke(config, "db", "upgrade").exit_code == 0
    down = invoke(config, "db", "downgrade", "-1", stdin="y\n")
    assert down.exit_code == 0, down.output
    assert "from 0006 to -1 undoes migrations, which may drop tables and columns" in down.stderr
    assert down.stdout.splitlines()[-1].endswith(": 0006 -> 0005")
    typo = invoke(config, "db", "downgrade", "--yse", "base")
    assert typo.exit_code == 2 and "No such option '--yse'" in typo.stderr
    assert invoke(config, "db", "downgrade", "-h").stdout.count("'-1' for one step") == 1


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


CORE_TABLES = {
    "users",
    "conversations",
    "messages",
    "feedback",
    "moderation_events",
    "plugin_state",
    "privacy",
}


@pytest.mark.parametrize("answer", ["n\n", "", "\n"], ids=["no", "end-of-input", "default"])
def test_downgrade_to_base_asks_first_and_anything_but_yes_drops_nothing(config, tmp_path, answer):
    db_file = tmp_path / "data" / "botkit.db"
    assert invoke(config, "db", "upgrade").exit_code == 0
    refused = invoke(config, "db", "downgrade", "base", stdin=answer)
    assert refused.exit_code == 1
    assert (
        f"Downgrading sqlite+aiosqlite:///{db_file} from 0006 to base drops every table of botkit and its "
        "plugins, with the data in them; a backup is made first: " in refused.stderr
    )
    assert "Downgrade? [y/N]" in refused.stderr
    assert "downgrade cancelled: nothing changed (--yes does not ask)" in refused.stderr
    assert CORE_TABLES <= tables(db_file)
    assert sorted(path.name for path in db_file.parent.glob("*.db")) == ["botkit.db"]  # no backup either


def test_downgrade_to_base_with_yes_backs_up_the_file_then_drops_every_table(config, tmp_path):
    db_file = tmp_path / "data" / "botkit.db"
    assert invoke(config, "db", "upgrade").exit_code == 0
    with sqlite3.connect(db_file) as db:
        db.execute(
            "INSERT INTO users (platform, platform_user_id, display_name, created_at, last_seen_at) "
            "VALUES ('console', 'u1', 'Ada', '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
        )
    down = invoke(config, "db", "downgrade", "base", "--yes")
    assert down.exit_code == 0, down.output
    assert "Downgrade?" not in down.output
    announced, result = down.stdout.splitlines()
    backup = Path(announced.split(" to ", 1)[1].rsplit(" (", 1)[0])
    assert announced.startswith(f"backed up sqlite+aiosqlite:///{db_file} to ")
    assert backup.parent == db_file.parent
    assert re.fullmatch(r"botkit-before-downgrade-\d{8}T\d{6}Z\.db", backup.name)
    assert f"a backup is made first: {backup}" in down.stderr
    assert result == f"sqlite+aiosqlite:///{db_file}: 0006 -> empty"
    with sqlite3.connect(backup) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert copy.execute("SELECT version_num FROM alembic_version").fetchall() == [("0006",)]
        assert copy.execute("SELECT display_name FROM users").fetchall() == [("Ada",)]
    assert CORE_TABLES <= tables(backup)
    assert not CORE_TABLES & tables(db_file)

    again = invoke(config, "db", "downgrade", "base")
    assert again.exit_code == 0 and again.stdout.strip().endswith(": empty: nothing to downgrade")


def test_backups_made_in_the_same_second_get_names_of_their_own(tmp_path):
    from datetime import UTC, datetime

    from botkit.storage import Database, StorageSettings
    from botkit.storage.backup import timestamped_path

    db = Database(StorageSettings(data_dir=tmp_path))
    now = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)
    first = timestamped_path(db, "before-downgrade", now)
    assert first == tmp_path / "botkit-before-downgrade-20261128T093000Z.db"
    first.touch()
    assert (
        timestamped_path(db, "before-downgrade", now).name == "botkit-before-downgrade-20261128T093000Z-2.db"
    )


def test_downgrade_of_postgresql_says_no_backup_is_made_and_still_asks(tmp_path, postgres):
    url = postgres.create_database("downgrade")
    config = tmp_path / "config.toml"
    config.write_text(f'[backend]\ntype = "scripted"\n[storage]\nurl = "{url}"\n', encoding="utf-8")
    assert invoke(config, "db", "upgrade").exit_code == 0
    kept = invoke(config, "db", "downgrade", "base", stdin="n\n")
    assert kept.exit_code == 1
    assert (
        "no backup is made of a PostgreSQL database: make one first, e.g. pg_dump --format=custom "
        f"--file=downgrade.dump --host=127.0.0.1 --port={postgres.port} --username=botkit downgrade"
    ) in kept.stderr
    listed = "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
    assert CORE_TABLES <= set(postgres.psql(listed, "downgrade").split())
    dropped = invoke(config, "db", "downgrade", "base", "--yes")
    assert dropped.exit_code == 0, dropped.output
    assert "no backup is made of a PostgreSQL database" in dropped.stderr
    assert dropped.stdout.strip().endswith(": 0006 -> empty")
    assert not CORE_TABLES & set(postgres.psql(listed, "downgrade").split())


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
