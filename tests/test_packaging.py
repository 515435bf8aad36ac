"""A non-editable `pip install .` into a fresh venv, used from outside the repository."""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with botkit installed from this checkout (no editable links)."""
    root = tmp_path_factory.mktemp("install")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", str(REPO)],
        check=True,
        timeout=900,
    )
    return env_dir


def run(env_dir: Path, *args: str, stdin: str = "", cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOTKIT_", "PYTHON", "VIRTUAL_ENV"))}
    return subprocess.run(
        [str(env_dir / "bin" / "botkit"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def test_no_generic_top_level_names_are_installed(installed):
    site = next((installed / "lib").glob("python3.*/site-packages"))
    for generic in ("plugins", "finetune", "web", "migrations", "tests", "bench", "scripts"):
        assert not (site / generic).exists(), f"{generic}/ installed at the top level of site-packages"
    assert (site / "botkit" / "plugins" / "commands.py").is_file()
    assert (site / "botkit" / "finetune" / "seed_tasks.jsonl").is_file()  # `finetune synth`'s seed set
    # `botkit redteam`'s probe suites, and moderation's toxicity suite
    assert (site / "botkit" / "plugins" / "redteam" / "suites" / "injection.jsonl").is_file()
    assert (site / "botkit" / "plugins" / "moderation" / "toxicity_probes.jsonl").is_file()
    assert (site / "botkit" / "web" / "templates" / "review.html").is_file()  # the console's pages
    assert (site / "botkit" / "web" / "static" / "console.css").is_file()
    assert not list(site.glob("__editable__*"))


def test_installed_botkit_lists_its_builtin_plugins(installed, tmp_path):
    result = run(installed, "plugins", "list", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    import json

    names = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"commands", "console", "llamacpp", "scripted"} <= names.keys()
    assert all(row["error"] is None for row in names.values())


def test_the_web_console_without_its_extra_says_what_to_install(installed, tmp_path):
    site = next((installed / "lib").glob("python3.*/site-packages"))
    assert not (site / "starlette").exists()  # a plain install stays lean
    for command in (["web"], ["web", "user", "add", "alice", "--role", "admin"]):
        result = run(installed, *command, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "pip install 'botkit[web]'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.model
def test_installed_botkit_chats_on_the_embedded_model(installed, tmp_path):
    result = run(installed, "chat", stdin="Say hello.\n/help\n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("botkit> ") and len(lines[0]) > len("botkit> ")
    assert "botkit> Commands:" in lines
    assert "Traceback" not in result.stderr
