"""`botkit web` as a user runs it: accounts from the command line, the server on a real port, `[web] enabled`."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
from pathlib import Path

import httpx2
import pytest
from click.testing import CliRunner
from servers import free_port
from web_helpers import csrf_of, serve_on_a_free_port, start_botkit_web

from botkit.cli import create_cli

PASSWORD = "correct horse battery"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[backend]\ntype = "scripted"\n[storage]\ndata_dir = "{tmp_path / "data"}"\n', encoding="utf-8")
    return path


def invoke(config: Path, *args: str, stdin: str | None = None):
    return CliRunner().invoke(create_cli(), ["-c", str(config), *args], input=stdin)


def test_accounts_are_added_listed_and_removed_and_the_password_is_never_printed(config, monkeypatch):
    monkeypatch.setenv("BOTKIT_WEB_PASSWORD", PASSWORD)
    added = invoke(config, "web", "user", "add", "alice", "--role", "admin")
    assert added.exit_code == 0, added.output
    assert added.stdout.strip() == "account alice added (admin)"
    monkeypatch.delenv("BOTKIT_WEB_PASSWORD")
    prompted = invoke(config, "web", "user", "add", "rita", "--role", "reviewer", stdin=f"{PASSWORD}\n{PASSWORD}\n")
    assert prompted.exit_code == 0, prompted.output
    assert PASSWORD not in prompted.output
    assert invoke(config, "web", "user", "list").stdout.splitlines() == ["alice  admin", "rita  reviewer"]
    again = invoke(config, "web", "user", "add", "alice", "--role", "admin", stdin=f"{PASSWORD}\n{PASSWORD}\n")
    assert again.exit_code == 1 and "account 'alice' exists already" in again.stderr
    short = invoke(config, "web", "user", "add", "bob", "--role", "admin", stdin="short\nshort\n")
    assert short.exit_code == 1 and "at least 12 characters" in short.stderr
    assert invoke(config, "web", "user", "remove", "rita").exit_code == 0
    gone = invoke(config, "web", "user", "remove", "rita")
    assert gone.exit_code == 1 and "there is no account 'rita'" in gone.stderr
    assert invoke(config, "web", "user", "list").stdout.splitlines() == ["alice  admin"]


def test_botkit_web_serves_the_console_until_sigterm(config, monkeypatch):
    monkeypatch.setenv("BOTKIT_WEB_PASSWORD", PASSWORD)
    assert invoke(config, "web", "user", "add", "alice", "--role", "admin").exit_code == 0
    server, base = serve_on_a_free_port(config)
    try:
        with httpx2.Client(base_url=base) as http:
            form = http.get("/login")
            assert "default-src 'none'" in form.headers["content-security-policy"]
            logged_in = http.post(
                "/login", data={"csrf": csrf_of(form.text), "name": "alice", "password": PASSWORD, "next": "/"}
            )
            assert logged_in.status_code == 303
            assert "Log out" in http.get("/").text
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=30)
    assert server.returncode == 0, stderr
    assert f"botkit web console on {base}/" in stderr
    assert "Traceback" not in stderr and PASSWORD not in stderr


def test_listening_beyond_loopback_without_https_is_warned_and_a_taken_port_is_told(config):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start_botkit_web(config, "--listen", f"0.0.0.0:{port}")
        _, stderr = server.communicate(timeout=60)
    assert server.returncode == 2
    assert "botkit: warning: [web] listen = '0.0.0.0:" in stderr and "without HTTPS" in stderr
    assert f"botkit: error: [web] listen = '0.0.0.0:{port}': cannot listen there" in stderr
    assert "Traceback" not in stderr


async def test_web_enabled_serves_the_console_inside_the_running_bot(make_bot):
    port = free_port()
    async with make_bot({"web": {"enabled": True, "listen": f"127.0.0.1:{port}"}}):
        async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            page = await http.get("/login")
            assert page.status_code == 200 and "Log in" in page.text
    with pytest.raises(httpx2.TransportError):  # the bot stopped: so did its console
        httpx2.get(f"http://127.0.0.1:{port}/login", timeout=2)


def test_a_listen_address_without_a_port_is_refused_with_what_to_write(config):
    result = invoke(config, "web", "--listen", "8765")
    assert result.exit_code == 2
    assert "--listen '8765': must be HOST:PORT, e.g. '127.0.0.1:8765'" in result.stderr


def test_with_certfile_and_keyfile_the_console_serves_https_with_secure_cookies(tmp_path, monkeypatch):
    cert, key = tmp_path / "console.crt", tmp_path / "console.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    config = tmp_path / "config.toml"
    config.write_text(
        f'[backend]\ntype = "scripted"\n[storage]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[web]\ncertfile = "{cert}"\nkeyfile = "{key}"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("BOTKIT_WEB_PASSWORD", PASSWORD)
    assert invoke(config, "web", "user", "add", "alice", "--role", "admin").exit_code == 0
    trusted = ssl.create_default_context(cafile=str(cert))
    server, base = serve_on_a_free_port(config, tls=trusted)
    try:
        assert base.startswith("https://")
        with httpx2.Client(base_url=base, verify=trusted) as http:
            form = http.get("/login")
            assert form.headers["strict-transport-security"].startswith("max-age=")
            logged_in = http.post(
                "/login", data={"csrf": csrf_of(form.text), "name": "alice", "password": PASSWORD, "next": "/"}
            )
            cookie = logged_in.headers["set-cookie"].lower()
            assert cookie.startswith("__host-botkit_session=") and "; secure" in cookie
            assert "Log out" in http.get("/").text
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=30)
    assert server.returncode == 0, stderr
    assert f"botkit web console on {base}/" in stderr
