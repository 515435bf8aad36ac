"""The control socket: a running bot answers reload and status on a local Unix socket; one bot per socket."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from botkit.bot import Bot
from botkit.control import (
    MAX_PATH_BYTES,
    REQUEST_LIMIT,
    ControlServer,
    control_socket_path,
    request,
    request_sync,
)
from botkit.errors import ConfigError, ControlError, NoRunningBot
from botkit.settings import load_settings, settings_from_mapping
from botkit.testing import eventually


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        textwrap.dedent(
            """
            [bot]
            control_socket = "c.sock"
            system_prompt = "first"

            [backend]
            type = "scripted"
            default_reply = "scripted answer"

            [backends.second]
            type = "scripted"

            [storage]
            data_dir = "data"
            """
        ),
        encoding="utf-8",
    )
    return path


@asynccontextmanager
async def running(config: Path) -> AsyncIterator[tuple[Bot, ControlServer]]:
    """A bot started from ``config`` with its control socket, as ``botkit run`` starts them."""
    bot = Bot.load(load_settings(config))
    control = ControlServer(bot)
    await control.open()
    await bot.start()
    await control.start_serving()
    try:
        yield bot, control
    finally:
        await control.close()
        await bot.stop()


async def exchange(path: Path, *lines: bytes) -> list[dict]:
    """Send raw request lines on one connection; the answer to each."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    answers = []
    try:
        for line in lines:
            writer.write(line)
            await writer.drain()
            answers.append(json.loads(await reader.readline()))
    finally:
        writer.close()
    return answers


async def test_status_shows_each_backend_with_its_model_and_adapters(config):
    async with running(config) as (bot, control):
        assert control.path == config.parent / "c.sock"
        answer = await request(control.path, {"command": "status"})
    assert answer["ok"] is True and answer["pid"] == os.getpid() and answer["config"] == str(config)
    assert set(answer["backends"]) == {"default", "second"}
    assert answer["backends"]["default"] == {
        "type": "scripted",
        "model": bot.backend.model_name,
        "adapter": None,
        "adapters": [],
        "context_window": bot.backend.context_window,
        "generating": 0,
        "waiting": 0,
        "concurrency": 1,
        "queue_limit": 100,
        "engine": None,  # the scripted backend reports no engine load
    }
    # What `botkit status` and /readyz show; no adapter runs in this test.
    assert answer["readiness"] == {
        "ready": True,
        "checks": {"model": {"ok": True, "detail": "loaded"}, "database": {"ok": True, "detail": "reachable"}},
    }
    assert answer["metrics"] is None  # [metrics] is off


async def test_reload_applies_the_edited_config_and_each_request_is_logged(config, caplog):
    caplog.set_level(logging.INFO, logger="botkit.control")
    async with running(config) as (bot, control):
        config.write_text(config.read_text().replace('"first"', '"second"'), encoding="utf-8")
        answer = await request(control.path, {"command": "reload"})
        assert answer == {"ok": True, "notes": [f"reloaded {config}"]}
        assert bot.settings.bot.system_prompt == "second"
    assert "control socket: reload requested" in caplog.text


async def test_an_invalid_config_is_refused_and_nothing_is_applied(config):
    async with running(config) as (bot, control):
        config.write_text('[bot]\nsystem_prompt = "changed"\n[backend\n', encoding="utf-8")
        answer = await request(control.path, {"command": "reload"})
        assert answer["ok"] is False and "invalid TOML" in answer["error"] and str(config) in answer["error"]
        assert bot.settings.bot.system_prompt == "first"
        assert (await request(control.path, {"command": "status"}))["ok"] is True


async def test_a_probe_runs_through_the_pipeline_on_the_redteam_platform_and_bad_ones_are_refused(config):
    async with running(config) as (bot, control):
        answer = await request(
            control.path, {"command": "probe", "messages": [{"text": "hi", "user": "p1", "channel": "c1"}]}
        )
        assert answer["ok"] is True
        assert answer["replies"] == [{"text": "scripted answer", "status": "completed", "notices": []}]
        assert "redteam" in answer["plugins"] and answer["backend"]["type"] == "scripted"
        assert bot.backends["default"].backend.prompts[-1].current.text == "hi"
        for messages, error in [
            (None, 'probe: "messages" must be a list of 1 to 20 messages'),
            ([{"text": "hi", "user": "p1"}], 'probe: message 1 needs "text", "user" and "channel", each a string'),
        ]:
            refused = await request(control.path, {"command": "probe", "messages": messages})
            assert refused == {"ok": False, "error": error}


async def test_bad_requests_get_an_error_and_the_server_keeps_answering(config):
    async with running(config) as (_, control):
        answers = await exchange(
            control.path,
            b"not json\n",
            b"[1, 2]\n",
            b'{"command": 3}\n',
            b'{"command": "shutdown"}\n',
            b'{"command": "status"}\n',
        )
        assert [a["ok"] for a in answers] == [False, False, False, False, True]
        assert answers[0]["error"].startswith("not JSON")
        assert answers[1]["error"] == 'a request is a JSON object with a "command": reload, status, metrics, probe, canary, forget'
        assert answers[2]["error"] == answers[1]["error"]
        assert answers[3]["error"] == "unknown command 'shutdown'; known: reload, status, metrics, probe, canary, forget"
        (too_long,) = await exchange(control.path, b"x" * (REQUEST_LIMIT + 10) + b"\n")
        assert too_long == {
            "ok": False,
            "error": f"a request is one line of JSON of at most {REQUEST_LIMIT} bytes",
        }
        assert (await request(control.path, {"command": "status"}))["ok"] is True  # a new connection


async def test_a_client_that_goes_away_mid_request_does_not_stop_the_server(config, caplog):
    caplog.set_level(logging.DEBUG, logger="botkit.control")  # a status request is a DEBUG line
    async with running(config) as (_, control):
        _, writer = await asyncio.open_unix_connection(str(control.path))
        writer.write(b'{"command": "status"}\n')
        writer.close()
        await eventually(lambda: "control socket: status requested" in caplog.text, what="the request is read")
        assert (await request(control.path, {"command": "status"}))["ok"] is True


async def test_reads_are_not_logged_at_info_but_actions_are(config, caplog):
    # A console or a scraper asks for status and metrics every few seconds: no INFO line each time.
    caplog.set_level(logging.INFO, logger="botkit.control")
    async with running(config) as (_, control):
        assert (await request(control.path, {"command": "status"}))["ok"] is True
        assert (await request(control.path, {"command": "reload"}))["ok"] is True
    requested = [record.getMessage() for record in caplog.records if "requested" in record.getMessage()]
    assert requested == ["control socket: reload requested"]


async def test_requests_are_answered_one_at_a_time(config):
    async with running(config) as (bot, control):
        answers = await asyncio.gather(*(request(control.path, {"command": "reload"}) for _ in range(5)))
    assert all(answer["ok"] for answer in answers)


async def test_a_socket_left_by_a_dead_bot_is_replaced_and_removed_at_stop(config):
    stale = config.parent / "c.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(stale))
    dead.close()  # the file stays, nobody listens: what a killed bot leaves
    with pytest.raises(NoRunningBot, match=f"no running bot found at {stale}"):
        await request(stale, {"command": "status"})
    async with running(config) as (_, control):
        assert (await request(control.path, {"command": "status"}))["ok"] is True
        assert stat.S_IMODE(os.stat(stale).st_mode) == 0o600
    assert not stale.exists()


async def test_a_console_only_bot_beside_a_running_one_goes_on_without_a_socket(config, caplog):
    async with running(config) as (bot, control):
        second = ControlServer(Bot.load(load_settings(config)), exclusive=False)
        await second.open()
        assert second.path is None
        await second.close()
        assert f"another bot (pid {os.getpid()}) holds the control socket {control.path}" in caplog.text
        assert (await request(control.path, {"command": "status"}))["ok"] is True


async def test_a_second_bot_on_the_same_socket_is_refused(config):
    async with running(config) as (bot, control):
        with pytest.raises(ControlError) as raised:
            await ControlServer(Bot.load(load_settings(config))).open()
        message = str(raised.value)
        assert f"another bot (pid {os.getpid()}) already runs with this config" in message
        assert str(control.path) in message and f"kill {os.getpid()}" in message
        assert "[bot] control_socket" in message and "BOTKIT_BOT__CONTROL_SOCKET" in message
        assert (await request(control.path, {"command": "status"}))["ok"] is True  # the first one goes on


async def test_a_file_that_is_not_a_socket_is_left_alone(config):
    (config.parent / "c.sock").write_text("mine")
    with pytest.raises(ControlError, match="c.sock exists and is not a socket"):
        await ControlServer(Bot.load(load_settings(config))).open()
    assert (config.parent / "c.sock").read_text() == "mine"


def test_nobody_listening_is_said_plainly(tmp_path):
    with pytest.raises(NoRunningBot) as raised:
        request_sync(tmp_path / "none.sock", {"command": "status"})
    assert str(raised.value) == f"no running bot found at {tmp_path / 'none.sock'}"


# -- where the socket is ------------------------------------------------------------


def test_auto_is_per_config_in_the_runtime_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    for name in ("a.toml", "b.toml"):
        (tmp_path / name).write_text("", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    path = control_socket_path(load_settings(Path("a.toml")))  # relative: keyed on the resolved path
    digest = hashlib.sha256(str(tmp_path.resolve() / "a.toml").encode()).hexdigest()[:16]
    assert path == tmp_path / "run" / "botkit" / f"{digest}.sock"
    assert control_socket_path(load_settings(tmp_path / "a.toml")) == path
    assert control_socket_path(load_settings(tmp_path / "b.toml")) != path


def test_auto_without_a_runtime_folder_uses_a_private_temporary_one(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    path = control_socket_path(settings_from_mapping({}))  # no config file: keyed on the folder
    digest = hashlib.sha256(str(tmp_path.resolve()).encode()).hexdigest()[:16]
    assert path == tmp_path / f"botkit-{os.getuid()}" / f"{digest}.sock"


async def test_the_auto_folder_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    config = tmp_path / "config.toml"
    config.write_text(f'[backend]\ntype = "scripted"\n[storage]\ndata_dir = "{tmp_path}"\n', encoding="utf-8")
    async with running(config) as (_, control):
        assert control.path.parent == tmp_path / "run" / "botkit"
        assert stat.S_IMODE(control.path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(control.path.stat().st_mode) == 0o600
        assert stat.S_ISSOCK(control.path.stat().st_mode)


def test_a_path_is_relative_to_the_config_file_and_off_is_off(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    config = tmp_path / "conf" / "bot.toml"
    config.write_text('[bot]\ncontrol_socket = "run/bot.sock"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert control_socket_path(load_settings(Path("conf/bot.toml"))) == tmp_path / "conf" / "run" / "bot.sock"
    config.write_text('[bot]\ncontrol_socket = "off"\n', encoding="utf-8")
    assert control_socket_path(load_settings(config)) is None


def test_a_path_too_long_for_a_unix_socket_names_the_key(tmp_path):
    long = "/tmp/" + "x" * MAX_PATH_BYTES + ".sock"
    with pytest.raises(ConfigError) as raised:
        control_socket_path(settings_from_mapping({"bot": {"control_socket": long}}))
    message = str(raised.value)
    assert message.startswith("config: [bot] control_socket: /tmp/xxx")
    assert f"is {len(long)} bytes long; a Unix socket path may have at most {MAX_PATH_BYTES}" in message


def test_without_unix_sockets_auto_is_off_and_a_path_is_an_error(monkeypatch, caplog):
    monkeypatch.setattr("botkit.control.unix_sockets_available", lambda: False)
    caplog.set_level(logging.DEBUG, logger="botkit.control")
    assert control_socket_path(settings_from_mapping({})) is None
    assert "this platform has no Unix sockets" in caplog.text
    with pytest.raises(
        ConfigError, match=r'\[bot\] control_socket: this platform has no Unix sockets; set it to "off"'
    ):
        control_socket_path(settings_from_mapping({"bot": {"control_socket": "/tmp/b.sock"}}))


# -- botkit chat / run ----------------------------------------------------------------


def test_botkit_chat_listens_a_second_chat_goes_on_without_the_socket_and_cleanup(config, tmp_path):
    """A chat beside a running bot of the same config works; the socket stays the first bot's."""
    command = [sys.executable, "-m", "botkit", "--config", str(config), "chat"]
    first = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert first.stdin is not None and first.stdout is not None
    try:
        first.stdin.write("hello\n")
        first.stdin.flush()
        assert first.stdout.readline() == "botkit> scripted answer\n"  # started: the socket answers
        sock = tmp_path / "c.sock"
        status = request_sync(sock, {"command": "status"})
        assert status["ok"] and status["pid"] == first.pid
        second = subprocess.run(command, input="hello\n", capture_output=True, text=True, timeout=60)
        assert second.returncode == 0 and second.stdout == "botkit> scripted answer\n"
        assert f"another bot (pid {first.pid}) holds the control socket {sock}" in second.stderr
        assert "Traceback" not in second.stderr
        assert request_sync(sock, {"command": "status"})["pid"] == first.pid
    finally:
        first.stdin.close()
        assert first.wait(timeout=60) == 0, first.stderr.read() if first.stderr else ""
    assert not sock.exists()


async def test_botkit_run_reloads_its_config_on_sighup(config, tmp_path):
    """As daemons do: SIGHUP is the control socket's reload; a bad config is refused and the bot goes on."""
    text = config.read_text(encoding="utf-8") + '\n[logging]\nlevel = "INFO"\n'
    config.write_text(text, encoding="utf-8")
    bot = subprocess.Popen(
        [sys.executable, "-m", "botkit", "--config", str(config), "run"],  # the console adapter alone
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert bot.stdin is not None and bot.stderr is not None
    log: list[str] = []
    reader = asyncio.get_running_loop().run_in_executor(None, lambda: log.extend(bot.stderr))
    sock = tmp_path / "c.sock"

    async def answers() -> bool:
        try:
            return (await request(sock, {"command": "status"}))["pid"] == bot.pid
        except (NoRunningBot, ControlError):
            return False

    def logged(text: str) -> bool:
        if bot.poll() is not None:  # SIGHUP's default action ends a process
            raise AssertionError(f"the bot ended with {bot.returncode}: {''.join(log)}")
        return any(text in line for line in log)

    try:
        await eventually(answers, timeout=60, what="the bot answers on its control socket")
        config.write_text(text.replace('"first"', '"second"'), encoding="utf-8")
        bot.send_signal(signal.SIGHUP)
        await eventually(lambda: logged(f"reload: reloaded {config}"), timeout=60, what="the reload")
        assert logged("SIGHUP: reload requested")
        config.write_text(text.replace("[logging]", "[logging]\nnope = 1"), encoding="utf-8")
        bot.send_signal(signal.SIGHUP)
        await eventually(lambda: logged("SIGHUP: config not reloaded"), timeout=60, what="the refusal")
        assert "[logging] nope: unknown key" in "".join(log)
        assert bot.poll() is None and await answers()  # still running
    finally:
        bot.stdin.close()
        code = bot.wait(timeout=60)
        await reader
    assert code == 0, "".join(log)
