"""The metrics listener of ``botkit run``: ``/metrics``, ``/healthz`` and ``/readyz`` over plain HTTP/1.1.

A few lines of asyncio streams rather than a web framework: Prometheus and container
orchestrators send one small GET each, and botkit's core has no HTTP server of its own
to lean on. Each connection gets one answer and is closed.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from botkit.errors import ConfigError
from botkit.health import as_json, readiness

if TYPE_CHECKING:
    from botkit.bot import Bot

log = logging.getLogger("botkit.metrics")

KEY = "[metrics] listen"
HEAD_LIMIT = 16 * 1024  # bytes of a request's line and headers
READ_TIMEOUT = 10.0  # seconds a client has to send its request

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}
PATHS = "/metrics, /healthz, /readyz"


class MetricsServer:
    """Serves one bot's metrics and health on ``[metrics] listen``; ``start`` before the bot starts."""

    def __init__(self, bot: Bot, adapters: Sequence[str]) -> None:
        self.bot = bot
        self.adapters = tuple(adapters)
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None  # where it listens, the port bound when 0 was asked

    async def start(self) -> None:
        """Listen (``ConfigError`` naming the key when the address is taken or cannot be used)."""
        settings = self.bot.settings.metrics
        host, port = settings.address
        try:
            self._server = await asyncio.start_server(self._serve_client, host, port, limit=HEAD_LIMIT)
        except OSError as error:
            where = f"{self.bot.settings.source_name}: {KEY}"
            if error.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"{where}: {settings.listen} is in use (another bot or program listens there): "
                    "stop it, or set another port"
                ) from None
            raise ConfigError(
                f"{where}: cannot listen on {settings.listen}: {error.strerror or error}"
            ) from None
        bound = self._server.sockets[0].getsockname()
        self.address = (bound[0], bound[1])
        self.bot.metrics.url = f"http://{self.url_host}/metrics"
        log.info("metrics and health checks on %s (and /healthz, /readyz)", self.bot.metrics.url)

    @property
    def url_host(self) -> str:
        assert self.address is not None
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
            self.bot.metrics.url = None

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError):
                await respond(writer, 400, b"a request line and headers, at most 16 KiB\n", "text/plain")
                return
            status, body, content_type = await self.answer(head)
            method = head.split(b" ", 1)[0]
            await respond(writer, status, b"" if method == b"HEAD" else body, content_type, len(body))
        except ConnectionError:
            pass  # the scraper went away
        except Exception:
            log.exception("metrics listener: a request failed")
        finally:
            writer.close()

    async def answer(self, head: bytes) -> tuple[int, bytes, str]:
        """The status, body and content type for one request's head."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, b"not an HTTP request\n", "text/plain"
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            return 405, f"{method} is not served here; GET {PATHS}\n".encode(), "text/plain"
        path = target.split("?", 1)[0]
        if path == "/metrics":
            accept = next(
                (line.split(":", 1)[1] for line in lines[1:] if line.lower().startswith("accept:")), ""
            )
            try:
                body, content_type = self.bot.metrics.exposition(accept)
            except LookupError as error:  # metrics off: a listener is never started so, but say it plainly
                return 404, f"{error}\n".encode(), "text/plain"
            return 200, body, content_type
        if path == "/healthz":
            return 200, b'{"alive": true}\n', "application/json"
        if path == "/readyz":
            report = as_json(await readiness(self.bot, self.adapters))
            body = json.dumps(report).encode() + b"\n"
            return (200 if report["ready"] else 503), body, "application/json"
        return 404, f"nothing at {path}; served here: {PATHS}\n".encode(), "text/plain"


async def respond(
    writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str, length: int | None = None
) -> None:
    head = (
        f"HTTP/1.1 {status} {REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(head.encode("latin-1") + body)
    await writer.drain()
