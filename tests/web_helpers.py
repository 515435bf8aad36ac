"""A web console on a test bot, and logged-in HTTP clients for it (httpx2 over ASGI: no port, no server)."""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from servers import free_port, wait_until_ready

from botkit.web.accounts import add_account, list_accounts
from botkit.web.app import create_app
from botkit.web.settings import WebSettings

PASSWORDS = {"alice": "alice-long-password", "rita": "rita-long-password"}
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def add_test_accounts(bot: Any) -> None:
    if await list_accounts(bot.db):
        return  # a second console on the same bot
    await add_account(bot.db, "alice", "admin", PASSWORDS["alice"])
    await add_account(bot.db, "rita", "reviewer", PASSWORDS["rita"])


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF field on the page"
    return found.group(1)


@asynccontextmanager
async def client_for(app: Any, client: str = "127.0.0.1", https: bool = False) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=app, client=(client, 50000))
    base = "https://console.test" if https else "http://console.test"
    async with httpx2.AsyncClient(transport=transport, base_url=base, follow_redirects=False) as http:
        yield http


async def log_in(http: httpx2.AsyncClient, name: str, password: str | None = None) -> httpx2.Response:
    """Fill in and send the login form as a browser would (its CSRF field and cookie included)."""
    page = await http.get("/login")
    return await http.post(
        "/login",
        data={"csrf": csrf_of(page.text), "name": name, "password": PASSWORDS.get(name, "") if password is None else password, "next": "/"},
    )


@asynccontextmanager
async def console_of(bot: Any, **settings: Any) -> AsyncIterator[Any]:
    await add_test_accounts(bot)
    yield create_app(bot, WebSettings(**settings))


async def page_csrf(http: httpx2.AsyncClient, path: str = "/") -> str:
    """The CSRF token of the logged-in session, as its pages carry it."""
    page = await http.get(path)
    assert page.status_code == 200, page.text
    return csrf_of(page.text)


def start_botkit_web(config: Any, *args: str) -> subprocess.Popen:
    """``botkit -c CONFIG web ARGS...`` in a process of its own (no ``BOTKIT_*`` of the test's environment)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BOTKIT_")}
    return subprocess.Popen(
        [sys.executable, "-m", "botkit", "-c", str(config), "web", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def serve_on_a_free_port(config: Any, tls: ssl.SSLContext | None = None) -> tuple[subprocess.Popen, str]:
    """``botkit web`` on a free loopback port, once its login page answers: the process and its URL.

    ``tls``: the console serves HTTPS (``[web] certfile``); the context trusts its certificate.
    """
    port = free_port()
    server = start_botkit_web(config, "--listen", f"127.0.0.1:{port}")
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    def answers() -> bool:
        assert server.poll() is None, server.stderr.read() if server.stderr else ""
        try:
            return httpx2.get(f"{url}/login", timeout=2, verify=tls or True).status_code == 200
        except httpx2.TransportError:
            return False

    try:
        wait_until_ready(answers, "botkit web")
    except BaseException:
        server.kill()
        server.communicate()
        raise
    return server, url
