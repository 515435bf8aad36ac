"""The botkit command as a user runs it: chat (piped and at a terminal), run, plugins list, config check."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import pytest

from botkit import __version__

REPO = Path(__file__).resolve().parent.parent

WHOAMI_PLUGIN = """
from botkit import Command, hookimpl

async def whoami(ctx):
    m = ctx.message
    admin = await ctx.bot.is_admin(m.author, m)
    roles = f" roles={','.join(m.author.roles)}" if m.author.roles else ""
    return f"user={m.author.id} channel={m.channel_id} thread={m.thread_id} dm={m.is_dm} admin={admin}{roles}"

@hookimpl
def botkit_register_commands(register):
    register(Command("whoami", "say who and where you are", whoami))
"""


def clean_env() -> dict[str, str]:
    """The test's environment (conftest keeps BOTKIT_* out of it), with output unbuffered."""
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def scripted_config(tmp_path: Path) -> Path:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "whoami.py").write_text(WHOAMI_PLUGIN, encoding="utf-8")
    config = tmp_path / "config.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [bot]
            name = "testbot"
            [backend]
            type = "scripted"
            default_reply = "scripted answer"
            [plugins]
            directory = "{plugins}"
            """
        ),
        encoding="utf-8",
    )
    return config


def botkit(
    *args: str, stdin: str = "", cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "botkit", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env(),
        timeout=timeout,
    )


def test_version():
    result = botkit("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"botkit, version {__version__}"


@pytest.mark.parametrize(
    "command", [[], ["chat"], ["run"], ["plugins"], ["plugins", "list"], ["config"], ["config", "check"]]
)
def test_every_command_has_help(command):
    from click.testing import CliRunner

    from botkit.cli import create_cli

    result = CliRunner().invoke(create_cli(), [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage: " in result.output
    description = result.output.split("\n\n")[1].strip()
    assert len(description) > 10, result.output


def test_piped_chat_answers_each_line_then_exits(scripted_config, tmp_path):
    result = botkit("chat", "--config", str(scripted_config), stdin="hello\n\nsecond line\n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["testbot> scripted answer", "testbot> scripted answer"]
    assert result.stderr == ""


def test_chat_with_empty_input_exits_cleanly(scripted_config, tmp_path):
    result = botkit("--config", str(scripted_config), "chat", stdin="", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_console_can_act_as_other_users_admins_and_places(scripted_config, tmp_path):
    lines = [
        "/whoami",
        ":as alice",
        "/whoami",
        ":channel random",
        ":thread t1",
        "/whoami",
        ":thread",
        ":admin",
        "/whoami",
        ":dm",
        "/whoami",
        ":who",
        ":roles mods, vip",
        "/whoami",
        ":roles",
        ":bogus",
        ":as",
    ]
    result = botkit("--config", str(scripted_config), "chat", stdin="\n".join(lines) + "\n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "testbot> user=you channel=general thread=None dm=False admin=False",
        "(now alice in #general)",
        "testbot> user=alice channel=general thread=None dm=False admin=False",
        "(now alice in #random)",
        "(now alice in #random thread t1)",
        "testbot> user=alice channel=random thread=t1 dm=False admin=False",
        "(now alice in #random)",
        "(now admin in #random)",
        "testbot> user=admin channel=random thread=None dm=False admin=True",
        "(now admin in a DM)",
        "testbot> user=admin channel=dm-admin thread=None dm=True admin=True",
        "(now admin in a DM)",
        "(now admin (mods, vip) in a DM)",
        "testbot> user=admin channel=dm-admin thread=None dm=True admin=True roles=mods,vip",
        "(now admin in a DM)",
        "(unknown console command ':bogus'; type :help for the list)",
        "(:as needs a name, e.g. ':as alice')",
    ]


def test_console_help_lists_console_commands(scripted_config, tmp_path):
    result = botkit("--config", str(scripted_config), "chat", stdin=":help\n:quit\nnot read\n", cwd=tmp_path)
    assert result.returncode == 0
    for command in (":as NAME", ":admin", ":roles A,B", ":channel NAME", ":thread NAME", ":dm", ":who", ":quit"):
        assert command in result.stdout
    assert "scripted answer" not in result.stdout  # :quit left before the last line


@pytest.fixture
def slow_config(tmp_path: Path) -> Path:
    """A scripted bot whose reply takes 20 s to write: long enough to be interrupted."""
    config = tmp_path / "slow.toml"
    config.write_text(
        '[backend]\ntype = "scripted"\nchunk_delay = 0.05\n'
        'default_reply = "' + " ".join(["word"] * 400) + '"\n',
        encoding="utf-8",
    )
    return config


def test_ctrl_c_during_piped_chat_exits_cleanly(slow_config, tmp_path):
    config = slow_config
    process = subprocess.Popen(
        [sys.executable, "-m", "botkit", "--config", str(config), "chat"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write("write a lot\n")
    process.stdin.flush()
    assert process.stdout.read(len("botkit> ")) == "botkit> "
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert out.rstrip().endswith("[stopped]")
    assert "Traceback" not in err


class Terminal:
    """``botkit chat`` on a pseudo-terminal, as a person would use it."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "botkit", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**clean_env(), "TERM": "dumb"},
            cwd=cwd,
            start_new_session=True,
            preexec_fn=lambda: __import__("fcntl").ioctl(0, __import__("termios").TIOCSCTTY, 0),
        )
        os.close(slave)
        self.output = ""

    def read_until(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.output):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {pattern!r}; screen so far:\n{self.output}")
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    self.output += os.read(self.master, 4096).decode("utf-8", "replace")
                except OSError:  # the child closed the terminal
                    break
        return self.output

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def end_input(self, timeout: float = 60) -> None:
        """Ctrl-D at the prompt, once readline reads the line (a person sees the prompt first).

        readline edits in non-canonical mode and gives the terminal back in canonical
        mode between lines; a Ctrl-D typed in that gap is taken by the kernel's line
        discipline and reaches readline, once it switches over, as a NUL byte: no end
        of input. The pseudo-terminal's master shares the terminal's modes, so wait
        for readline's mode first.
        """
        deadline = time.monotonic() + timeout
        while termios.tcgetattr(self.master)[3] & termios.ICANON:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"readline never read a line; screen so far:\n{self.output}")
            ready, _, _ = select.select([self.master], [], [], min(remaining, 0.05))
            if ready:
                try:
                    self.output += os.read(self.master, 4096).decode("utf-8", "replace")
                except OSError:  # the child closed the terminal
                    break
        self.type("\x04")

    def close(self) -> int:
        try:
            return self.process.wait(timeout=60)
        finally:
            os.close(self.master)


def test_terminal_chat_ctrl_c_stops_a_reply_then_exits(slow_config, tmp_path):
    config = slow_config
    terminal = Terminal(["--config", str(config), "chat"], tmp_path)
    terminal.read_until(r"\[you in #general\] > ")
    terminal.type("talk to me\n")
    terminal.read_until(r"botkit> word word")
    terminal.type("\x03")  # Ctrl-C while the reply streams: stops it
    terminal.read_until(r"\[stopped\]\r?\n\[you in #general\] > ")
    terminal.type("\x03")  # Ctrl-C at the prompt: leaves
    assert terminal.close() == 0
    assert "Traceback" not in terminal.output


def test_terminal_chat_ctrl_d_exits(scripted_config, tmp_path):
    terminal = Terminal(["--config", str(scripted_config), "chat"], tmp_path)
    terminal.read_until(r"Chatting with testbot \(scripted\)")
    terminal.read_until(r"> ")
    terminal.type("hi\n")
    terminal.read_until("testbot> scripted answer")
    terminal.end_input()
    assert terminal.close() == 0


def test_terminal_chat_stop_typed_during_a_reply_stops_it(slow_config, tmp_path):
    config = slow_config
    terminal = Terminal(["--config", str(config), "chat"], tmp_path)
    terminal.read_until(r"\[you in #general\] > ")
    terminal.type("talk to me\n")
    terminal.read_until(r"botkit> word word")
    terminal.type("/stop\n")  # typed while the reply streams: read, and acted on, at once
    terminal.read_until(r"\[stopped\]\r?\nbotkit> Stopped\.\r?\n\[you in #general\] > ")
    terminal.end_input()
    assert terminal.close() == 0
    assert "Traceback" not in terminal.output


def test_terminal_chat_edits_lines_keeps_history_and_says_when_it_continues(scripted_config, tmp_path):
    history = Path(os.environ["XDG_DATA_HOME"]) / "botkit" / "console_history"
    terminal = Terminal(["--config", str(scripted_config), "chat"], tmp_path)
    banner = terminal.read_until(r"\[you in #general\] > ")
    assert "continuing the conversation" not in banner  # nothing earlier to go on with
    terminal.type("/whoai\x1b[Dm\n")  # a typo mended with the left arrow key
    terminal.read_until(r"testbot> user=you channel=general")
    terminal.type("hello\n")
    terminal.read_until(r"testbot> scripted answer")
    terminal.type("\x1b[A\x1b[A\n")  # up twice: /whoami again
    terminal.read_until(r"(?s)user=you channel=general.*user=you channel=general")
    terminal.end_input()
    assert terminal.close() == 0
    assert history.read_text(encoding="utf-8").splitlines()[-3:] == ["/whoami", "hello", "/whoami"]
    assert history.stat().st_mode & 0o077 == 0  # what you typed is yours alone

    terminal = Terminal(["--config", str(scripted_config), "chat"], tmp_path)
    terminal.read_until(
        r"continuing the conversation in #general: 2 earlier messages; /reset to start fresh\)\r?\n"
        r"\[you in #general\] > "
    )
    terminal.type("\x1b[A\n")  # the last session's history
    terminal.read_until(r"testbot> user=you channel=general")
    terminal.type("/reset\n")
    terminal.read_until(r"testbot> Started a fresh conversation")
    terminal.end_input()
    assert terminal.close() == 0

    terminal = Terminal(["--config", str(scripted_config), "chat"], tmp_path)
    banner = terminal.read_until(r"\[you in #general\] > ")
    terminal.end_input()
    assert terminal.close() == 0
    assert "continuing the conversation" not in banner
    assert "Traceback" not in terminal.output


def test_run_starts_the_enabled_adapters(scripted_config, tmp_path):
    result = botkit("--config", str(scripted_config), "run", stdin="hello\n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["testbot> scripted answer"]


def test_run_with_no_enabled_adapter_says_what_to_do(tmp_path):
    config = tmp_path / "none.toml"
    config.write_text('[backend]\ntype = "scripted"\n[adapters.console]\nenabled = false\n', encoding="utf-8")
    result = botkit("--config", str(config), "run", cwd=tmp_path)
    assert result.returncode == 2
    assert "no adapter is enabled" in result.stderr and "Traceback" not in result.stderr


def test_config_errors_exit_2_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[bot\nname = 1\n", encoding="utf-8")
    result = botkit("--config", str(bad), "chat", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"botkit: error: {bad}: invalid TOML")
    assert "line 1" in result.stderr and "Traceback" not in result.stderr


def test_config_check_prints_the_effective_config(scripted_config, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "botkit", "--config", str(scripted_config), "config", "check"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**clean_env(), "BOTKIT_BACKEND__TEMPERATURE": "0.25"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"{scripted_config}: valid" in result.stderr
    import tomllib

    effective = tomllib.loads(result.stdout)
    assert effective["bot"]["name"] == "testbot"
    assert effective["backend"]["type"] == "scripted" and effective["backend"]["temperature"] == 0.25
    assert effective["adapters"]["console"]["enabled"] is True
    assert effective["plugins"]["whoami"] == {"enabled": True}


def test_config_check_reports_an_invalid_value(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[backend]\ntype = "scripted"\ntop_p = 3\n', encoding="utf-8")
    result = botkit("config", "check", cwd=tmp_path)  # ./config.toml is found by default
    assert result.returncode == 2
    assert "[backend] top_p: Input should be less than or equal to 1 (got 3)" in result.stderr


def test_plugins_list_shows_name_source_state_and_hooks(scripted_config, tmp_path):
    result = botkit("--config", str(scripted_config), "plugins", "list", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert rows.keys() >= {"commands", "console", "llamacpp", "scripted", "whoami"}
    assert re.match(r"llamacpp\s+yes\s+builtin\s+register_backends$", rows["llamacpp"])
    assert "whoami.py" in rows["whoami"] and "register_commands" in rows["whoami"]


def test_plugins_list_shows_broken_and_disabled_plugins(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "broken.py").write_text("raise RuntimeError('half-written plugin')\n", encoding="utf-8")
    config = tmp_path / "config.toml"
    config.write_text(
        f'[plugins]\ndirectory = "{plugins}"\n[plugins.commands]\nenabled = false\n', encoding="utf-8"
    )
    result = botkit("plugins", "list", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    import json

    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["commands"]["enabled"] is False and rows["commands"]["hooks"] == []
    assert rows["broken"]["error"] == "RuntimeError: half-written plugin"


def test_plugins_list_says_why_a_plugin_that_needs_another_is_off(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[plugins.memory]\nenabled = false\n", encoding="utf-8")
    result = botkit("plugins", "list", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    feedback = next(i for i, line in enumerate(lines) if line.startswith("feedback "))
    assert re.match(r"feedback\s+no\s+builtin", lines[feedback])
    assert lines[feedback + 1].strip() == "off: needs plugin 'memory', which is off"


def test_importing_botkit_main_does_not_run_the_command(monkeypatch):
    import importlib

    monkeypatch.setattr(sys, "argv", ["botkit", "--version"])
    monkeypatch.delitem(sys.modules, "botkit.__main__", raising=False)
    importlib.import_module("botkit.__main__")  # ran main() before: SystemExit from --version


def test_plugins_list_shows_the_stored_switches_and_why(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n[plugins.disclosure]\nenabled = false\n',
        encoding="utf-8",
    )
    assert botkit("plugins", "disable", "memory", cwd=tmp_path).returncode == 0
    assert botkit("plugins", "enable", "disclosure", cwd=tmp_path).returncode == 0
    result = botkit("plugins", "list", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()

    def row(name: str) -> tuple[str, str]:
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{name} "))
        return lines[at], lines[at + 1].strip()

    memory, why = row("memory")
    assert re.match(r"memory\s+no\s+builtin", memory)
    assert why == "off: stored switch (`botkit plugins clear memory` lets the config decide); config: on"
    disclosure, why = row("disclosure")
    assert re.match(r"disclosure\s+yes\s+builtin", disclosure)
    assert why == (
        "on: stored switch (`botkit plugins clear disclosure` lets the config decide); "
        "config: [plugins.disclosure] enabled = false"
    )
    feedback, why = row("feedback")
    assert re.match(r"feedback\s+no\s+builtin", feedback) and why == "off: needs plugin 'memory', which is off"
    import json

    rows = {r["name"]: r for r in json.loads(botkit("plugins", "list", "--json", cwd=tmp_path).stdout)}
    assert rows["memory"]["enabled"] is False and rows["memory"]["stored_switch"] is False
    assert rows["commands"]["enabled"] is True and rows["commands"]["why"] is None


def test_config_check_reports_every_problem_at_once(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(
        textwrap.dedent(
            """
            [bot]
            max_message_chars = 0
            nmae = "typo"
            [backend]
            type = "scripted"
            top_p = 3
            [backends.remote]
            type = "openai"
            temperature = "hot"
            [adapters.console]
            enabled = "maybe"
            [plugins.ratelimit]
            per_user = "lots"
            [plugins.disclosure]
            position = "sideways"
            """
        ),
        encoding="utf-8",
    )
    env = {**clean_env(), "BOTKIT_LOGGING__LEVEL": "LOUD"}
    result = subprocess.run(
        [sys.executable, "-m", "botkit", "config", "check"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("botkit: error: ")]
    told = "\n".join(errors)
    for expected in (
        "[bot] max_message_chars: Input should be greater than or equal to 1",
        "[bot] nmae: unknown key",
        "BOTKIT_LOGGING__LEVEL: [logging] level:",
        "[backend] top_p: Input should be less than or equal to 1 (got 3)",
        "[backends.remote] temperature:",
        "[adapters.console] enabled:",
        "[plugins.ratelimit] per_user:",
        "[plugins.disclosure] position:",
    ):
        assert expected in told, f"{expected!r} not in:\n{told}"
    assert f"botkit: {len(errors)} problems in the configuration" in result.stderr
