"""`botkit chat` as a user runs it: a subprocess on the real embedded model, no config needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.model


def chat(cwd: Path, stdin: str, *options: str) -> subprocess.CompletedProcess[str]:
    # The conversations it stores go to a fresh data folder, not the developer's own.
    env = {**os.environ, "XDG_DATA_HOME": str(cwd / "data")}
    return subprocess.run(
        [sys.executable, "-m", "botkit", *options, "chat"],
        input=stdin,
        check=False,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
    )


def test_piped_chat_answers_each_line_with_the_default_model(tmp_path):
    result = chat(tmp_path, "What is the capital of France?\nSay hello.\n")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    replies = [line for line in result.stdout.splitlines() if line.startswith("botkit> ")]
    assert len(replies) == 2, result.stdout
    assert all(line.removeprefix("botkit> ").strip() for line in replies)


def test_piped_chat_with_no_input_exits_cleanly(tmp_path):
    result = chat(tmp_path, "")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr


def test_missing_model_file_says_which_and_how_to_fix(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[backend]\nmodel_path = "/nonexistent.gguf"\n')
    result = chat(tmp_path, "hello\n", "--config", str(config))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "/nonexistent.gguf" in result.stderr
    assert "set [backend] model_path to a .gguf file" in result.stderr
    assert "botkit> " not in result.stdout
