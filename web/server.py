"""Serving the console with uvicorn: on its own (``botkit web``) or beside the bot in ``botkit run``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Iterator

import uvicorn

from botkit import BotAPI, ConfigError

from .app import create_app
from .settings import WebSettings


def exposure_warning(settings: WebSettings) -> str | None:
    """What to tell an operator who serves the console beyond this machine without HTTPS, or None."""
    if settings.is_loopback() or settings.https:
        return None
    return (
        f"[web] listen = {settings.listen!r} is reachable from other machines without HTTPS: passwords and "
        "session cookies cross the network in clear text. Put a reverse proxy with HTTPS in front and set "
        "[web] https = true, or set certfile and keyfile (docs/web.md)"
    )


class ConsoleServer(uvicorn.Server):
    """uvicorn's server, leaving signals to botkit: ``botkit run`` stops it with the bot, ``botkit web`` on
    SIGINT and SIGTERM itself (uvicorn's own handling would end the process by the signal, not exit 0)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def stop_on_signals(self) -> None:
        """Stop gracefully on SIGINT and SIGTERM (``botkit web``: the server is the process's only work)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.request_stop)

    def request_stop(self) -> None:
        self.should_exit = True


def console_server(bot: BotAPI, settings: WebSettings, live: bool) -> ConsoleServer:
    """A server of the console of ``bot`` (database connected, schema current); ``await .serve()`` runs it.

    ``live``: served by the running bot (``botkit run``); otherwise by ``botkit web``.
    """
    config = uvicorn.Config(
        create_app(bot, settings, live),
        host=settings.host,
        port=settings.port,
        ssl_certfile=settings.certfile,
        ssl_keyfile=settings.keyfile,
        # botkit's logging setup handles uvicorn's loggers; no access log: a search's URL holds the
        # text searched for, which is users' message text.
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=5,  # a browser's open connection does not hold up the bot's stop
        lifespan="off",
        # X-Forwarded-For / -Proto from a reverse proxy on this machine (uvicorn's default trust:
        # 127.0.0.1, or $FORWARDED_ALLOW_IPS): the login limit then counts the browser's address.
        proxy_headers=True,
    )
    return ConsoleServer(config)


def bind(settings: WebSettings) -> socket.socket:
    """The listening socket of ``[web] listen``; ``ConfigError`` saying why when it cannot be had.

    Bound here rather than by uvicorn, which exits the whole process when the port is taken.
    """
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    try:
        return socket.create_server((settings.host, settings.port), family=family, reuse_port=False)
    except OSError as error:
        raise ConfigError(f"[web] listen = {settings.listen!r}: cannot listen there: {error.strerror or error}") from None
