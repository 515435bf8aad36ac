"""The control socket: a running bot answers ``reload`` and ``status`` requests on a local Unix socket.

``botkit run`` and ``botkit chat`` listen on it (``[bot] control_socket``), so that tools
on the same machine, such as ``botkit finetune deploy``, steer the running process
without restarting it. One JSON object per line each way:

- ``{"command": "reload"}``: ``bot.reload_settings()``; answers ``{"ok": true, "notes":
  [...]}``, or ``{"ok": false, "error": "..."}`` when the config is invalid (nothing applied);
- ``{"command": "status"}``: ``{"ok": true, "pid": ..., "config": ..., "backends": {name:
  {"type", "model", "adapter", "adapters", "context_window", "generating", "waiting",
  "concurrency", "queue_limit", "engine"}}, "database": {"url", "key"}, "readiness": {"ready",
  "checks": {name: {"ok", "detail"}}}, "metrics": url or null, "uptime_s": seconds}`` (``BackendSlot.summary()``;
  ``Database.key``, by which ``botkit db upgrade`` knows a bot on its database; ``botkit.health``; keys are
  only added);
- ``{"command": "metrics"}``: ``{"ok": true, "metrics": "..."}``, the Prometheus text of
  ``/metrics`` (``botkit status --metrics``), or ``ok: false`` when ``[metrics]`` is off;
- ``{"command": "probe", "messages": [{"text", "user", "channel"}, ...]}`` (``botkit redteam
  --live``, ``botkit/control_probe.py``): each message, in order, through the whole pipeline
  as if a user had sent it, on the platform ``redteam`` (``botkit.types.REDTEAM_PLATFORM``),
  which no adapter uses, so a probe never joins a real user's conversation; answers ``{"ok": true, "replies": [{"text", "status",
  "notices"}], "plugins": [names on], "backend": summary}`` (``status`` is null when the model
  was not asked: a gate or a command answered). Probes do not wait for a reload to finish.
- ``{"command": "canary", "action": "status"}``: ``{"ok": true, "report": [lines]}`` (``bot.canary_report()``);
  ``"action": "start", "backend", "lora", "share"``, ``"promote"`` or ``"rollback"`` (``"backend"``,
  ``"reason"``): ``{"ok": true, "notes": [...]}``, or ``ok: false`` saying why not (``botkit/canary.py``).
- ``{"command": "forget", "platform", "user"}`` (``botkit privacy forget``): the bot forgets the user as
  ``/forgetme`` does, its caches included (``botkit.storage.forget_user``): ``{"ok": true, "deleted": {...}}``.

Who may ask is who may open the socket file: it is made 0600, in a folder only the
bot's user enters, so the same user (or root) only.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import socket
import stat
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botkit.canary import PROMOTED, ROLLED_BACK
from botkit.control_probe import answer_probe
from botkit.errors import BotkitError, ConfigError, ControlError, NoRunningBot
from botkit.health import as_json, readiness
from botkit.settings import Settings, env_name
from botkit.storage.privacy import PUT_OFF, forget_user

if TYPE_CHECKING:
    from botkit.bot import Bot

log = logging.getLogger("botkit.control")

KEY = "[bot] control_socket"
# sun_path holds 108 bytes on Linux and 104 on macOS and the BSDs, its closing NUL included.
MAX_PATH_BYTES = (108 if sys.platform.startswith("linux") else 104) - 1
REQUEST_LIMIT = 64 * 1024  # bytes in one request line
ANSWER_LIMIT = 1024 * 1024  # bytes in one answer line (a status with many adapters)
CLAIM_TIMEOUT = 5.0  # seconds a bot found at the path has to answer before it counts as alive
ENDINGS = {"promote": PROMOTED, "rollback": ROLLED_BACK}  # the canary actions that end one, and their outcome
READS = {"status", "metrics"}  # commands that change nothing: logged at DEBUG, not INFO


def unix_sockets_available() -> bool:
    return hasattr(socket, "AF_UNIX")


def control_socket_path(settings: Settings) -> Path | None:
    """Where the bot of ``settings`` listens, or ``None`` when its control socket is off.

    ``auto``: ``$XDG_RUNTIME_DIR/botkit/<hash>.sock``, else ``<tempdir>/botkit-<uid>/<hash>.sock``,
    the hash being of the resolved config file (of the current directory without one), so
    every config has its own socket and ``botkit finetune deploy --config X`` finds the bot
    started with ``--config X``. Raises ``ConfigError`` for a path too long for a Unix socket,
    or an explicit path where the platform has no Unix sockets.
    """
    value = settings.bot.control_socket
    if value == "off":
        return None
    if not unix_sockets_available():
        if value == "auto":
            log.debug("no control socket: this platform has no Unix sockets")
            return None
        raise ConfigError(
            f'{settings.source_name}: {KEY}: this platform has no Unix sockets; set it to "off"'
        )
    if value == "auto":
        key = settings.source_path.resolve() if settings.source_path else Path.cwd().resolve()
        digest = hashlib.sha256(os.fsencode(key)).hexdigest()[:16]
        path = auto_folder() / f"{digest}.sock"
    else:
        path = Path(os.path.abspath(Path(value).expanduser()))
    size = len(os.fsencode(path))
    if size > MAX_PATH_BYTES:
        derived = " (derived from $XDG_RUNTIME_DIR or the temporary folder)" if value == "auto" else ""
        raise ConfigError(
            f"{settings.source_name}: {KEY}: {path}{derived} is {size} bytes long; a Unix socket path "
            f'may have at most {MAX_PATH_BYTES}: set a shorter path (or "off")'
        )
    return path


def auto_folder() -> Path:
    """The folder of ``auto`` sockets: the user's runtime folder, else a private one in the temp folder."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "botkit"
    return Path(tempfile.gettempdir()) / f"botkit-{os.getuid()}"


Answer = dict[str, Any]


class ControlServer:
    """The control socket of one bot: ``open`` claims the path, ``start_serving`` answers, ``close`` ends.

    Requests are handled one at a time: a reload changes the bot, and two must not interleave.
    With ``[bot] control_socket = "off"`` every method does nothing.
    """

    def __init__(self, bot: Bot, exclusive: bool = True, adapters: Sequence[str] = ()) -> None:
        self.bot = bot
        self.adapters = tuple(adapters)  # the adapters the bot runs, for its readiness
        # exclusive (``botkit run``): a second bot on the same config would answer every platform
        # message twice, so it refuses to start. Otherwise (``botkit chat``) it runs without a socket.
        self.exclusive = exclusive
        self.path = control_socket_path(bot.settings)
        self._server: asyncio.Server | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of the socket file bound here
        self._lock = asyncio.Lock()
        self._closing = False
        self._connections: set[asyncio.StreamWriter] = set()
        self._commands: dict[str, Callable[[Mapping[str, Any]], Awaitable[Answer]]] = {
            "reload": self._reload,
            "status": self._status,
            "metrics": self._metrics,
            "probe": self._probe,
            "canary": self._canary,
            "forget": self._forget,
        }

    async def open(self) -> None:
        """Take the socket path and listen; requests wait until ``start_serving``.

        Called before the bot starts, so that a second bot on the same config stops before
        loading its model. A socket left by a bot that is gone is replaced; one that answers
        raises ``ControlError``.
        """
        if self.path is None:
            return
        try:
            await claim(self.path, private=self.bot.settings.bot.control_socket == "auto")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(os.fspath(self.path))
            except OSError as error:
                sock.close()
                if error.errno == errno.EADDRINUSE:  # another bot bound it since claim() looked
                    raise already_running(self.path, None) from None
                raise ControlError(
                    f"{KEY}: cannot listen on {self.path}: {error.strerror or error}"
                ) from None
        except AlreadyRunning as error:
            if self.exclusive:
                raise
            log.warning(
                "%s holds the control socket %s: this bot runs without one, and deploy and reload "
                "requests go to that bot",
                error.who,
                self.path,
            )
            self.path = None
            return
        try:
            os.chmod(self.path, 0o600)
            info = os.stat(self.path)
            self._identity = (info.st_dev, info.st_ino)
            sock.listen(16)  # from here a client's connection waits in the backlog, not refused
            self._server = await asyncio.start_unix_server(
                self._serve_client, sock=sock, limit=REQUEST_LIMIT, start_serving=False
            )
        except BaseException:
            sock.close()
            self._unlink()
            raise
        log.info("control socket listening at %s", self.path)

    async def start_serving(self) -> None:
        """Answer requests (once the bot has started)."""
        if self._server is not None:
            await self._server.start_serving()

    async def close(self) -> None:
        """Stop listening, let a request in progress finish, remove the socket file."""
        server, self._server = self._server, None
        if server is None:
            return
        self._closing = True
        server.close()
        for writer in list(self._connections):
            writer.close()
        async with self._lock:  # a reload in progress ends before the bot stops
            pass
        await server.wait_closed()
        self._unlink()

    def _unlink(self) -> None:
        """Remove the socket file if it is still the one bound here (not a later bot's)."""
        if self.path is None or self._identity is None:
            return
        with contextlib.suppress(OSError):
            info = os.stat(self.path)
            if (info.st_dev, info.st_ino) == self._identity:
                os.unlink(self.path)
        self._identity = None

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # the line is longer than REQUEST_LIMIT
                    error = f"a request is one line of JSON of at most {REQUEST_LIMIT} bytes"
                    await send(writer, {"ok": False, "error": error})
                    break
                if not line:
                    break
                if line.strip():
                    await send(writer, await self.answer(line))
        except ConnectionError:
            pass  # the client went away; nothing to answer
        finally:
            self._connections.discard(writer)
            writer.close()

    async def answer(self, line: bytes) -> Answer:
        """The answer to one request line (never raises)."""
        try:
            request = json.loads(line)
        except ValueError as error:
            return refusal(f'not JSON ({error}); send one JSON object per line, e.g. {{"command": "status"}}')
        command = request.get("command") if isinstance(request, dict) else None
        if not isinstance(command, str):
            return refusal(f'a request is a JSON object with a "command": {", ".join(self._commands)}')
        return await self.run_command(command, request=request)

    async def run_command(
        self, command: str, via: str = "control socket", request: Mapping[str, Any] | None = None
    ) -> Answer:
        """Run one request (``reload``, ``status``...) as if it had come on the socket; its answer (never raises).

        ``botkit run`` reloads on SIGHUP through here (``via="SIGHUP"``), so that a signal
        and a socket request never interleave. Works with ``[bot] control_socket = "off"`` too.
        ``request`` is the whole request object, for commands that take more than their name.
        """
        handler = self._commands.get(command)
        if handler is None:
            return refusal(f"unknown command {command!r}; known: {', '.join(self._commands)}")
        if command == "probe":
            # A probe is a conversation, as a user's message is: it changes nothing a reload
            # changes, and a generation of a minute must not hold up `status` or a reload.
            return await self._run(handler, command, via, request or {})
        async with self._lock:
            return await self._run(handler, command, via, request or {})

    async def _run(
        self,
        handler: Callable[[Mapping[str, Any]], Awaitable[Answer]],
        command: str,
        via: str,
        request: Mapping[str, Any],
    ) -> Answer:
        if self._closing:
            return refusal("the bot is stopping")
        # Reads come every few seconds from a console or a scraper: only actions are worth a line at INFO.
        log.log(logging.DEBUG if command in READS else logging.INFO, "%s: %s requested", via, command)
        try:
            return {"ok": True, **await handler(request)}
        except BotkitError as error:
            log.info("%s: %s refused: %s", via, command, error)
            return refusal(str(error))
        except Exception as error:
            log.exception("%s: %s failed", via, command)
            return refusal(f"{command} failed: {type(error).__name__}: {error} (the bot's log has more)")

    async def _reload(self, _: Mapping[str, Any]) -> Answer:
        notes = await self.bot.reload_settings()
        for note in notes:
            log.info("reload: %s", note)
        return {"notes": notes}

    async def _status(self, _: Mapping[str, Any]) -> Answer:
        return await status_answer(self.bot, self.adapters)

    async def _metrics(self, _: Mapping[str, Any]) -> Answer:
        try:
            body, _ = self.bot.metrics.exposition()
        except LookupError as error:
            raise ControlError(str(error)) from None
        return {"metrics": body.decode("utf-8")}

    async def _canary(self, request: Mapping[str, Any]) -> Answer:
        action, backend = request.get("action", "status"), str(request.get("backend", "default"))
        if action == "status":
            return {"report": await self.bot.canary_report()}
        if action == "start":
            share, lora = request.get("share"), request.get("lora")
            if not isinstance(share, int | float) or not isinstance(lora, str):
                raise ControlError('canary start takes "lora" (a name from the backend\'s loras) and "share" (percent)')
            return {"notes": [(await self.bot.start_canary(backend, lora, float(share))).describe()]}
        if action in ENDINGS:
            reason = str(request.get("reason") or f"{action} by an operator")
            return {"notes": [await self.bot.end_canary(backend, ENDINGS[action], reason)]}
        raise ControlError(f"canary action {action!r}: status, start, promote or rollback")

    async def _probe(self, request: Mapping[str, Any]) -> Answer:
        return await answer_probe(self.bot, request)

    async def _forget(self, request: Mapping[str, Any]) -> Answer:
        platform, user = request.get("platform"), request.get("user")
        if not isinstance(platform, str) or not isinstance(user, str) or not platform or not user:
            raise ControlError('forget takes "platform" and "user" (the platform\'s id of the user)')
        deleted = await forget_user(self.bot, platform, user)
        if deleted is None:
            raise ControlError(f"{PUT_OFF}: nothing was deleted; try again later")
        return {"deleted": asdict(deleted)}


# One request to the running bot, its answer: ``request_sync`` on its control socket, or ``in_process``.
Ask = Callable[[Mapping[str, Any]], Answer]


def in_process(bot: Bot, loop: asyncio.AbstractEventLoop, timeout: float = 30.0) -> Ask:
    """Requests asked of ``bot``, running on ``loop``, from another thread of its process.

    For the web console inside ``botkit run`` with ``[bot] control_socket = "off"``: it deploys
    an adapter from a worker thread, as ``botkit finetune deploy`` does, and asks this bot what
    the CLI would ask over the socket. Answered by ``ControlServer.run_command``, as a socket
    request or SIGHUP is: the same answers, refusals and log lines.
    """
    server = ControlServer(bot, exclusive=False, adapters=sorted(bot.adapters))

    def ask(request: Mapping[str, Any]) -> Answer:
        command = str(request.get("command"))
        future = asyncio.run_coroutine_threadsafe(server.run_command(command, "web console", request), loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise ControlError(f"the bot did not answer {command!r} within {timeout:g} s") from None

    return ask


async def status_answer(bot: Bot, adapters: Sequence[str]) -> Answer:
    """The ``status`` request's answer, less ``ok``, of ``bot`` running ``adapters``. The web console
    inside the bot (``botkit.overview``) reads it in-process, so both ways report the same."""
    return {
        "pid": os.getpid(),
        "config": bot.settings.source_name,
        "backends": {slot.name: slot.summary() for slot in bot.backends.values()},
        "database": {"url": bot.db.display_url, "key": bot.db.key},
        "readiness": as_json(await readiness(bot, adapters)),
        "metrics": bot.metrics.url,
        "uptime_s": bot.status().uptime_s,
    }


def refusal(error: str) -> Answer:
    return {"ok": False, "error": error}


async def send(writer: asyncio.StreamWriter, answer: Answer) -> None:
    writer.write(json.dumps(answer, ensure_ascii=False).encode("utf-8") + b"\n")
    await writer.drain()


async def claim(path: Path, private: bool) -> None:
    """Make ``path`` free to bind: its folder exists; a stale socket is removed; a live bot there refuses.

    ``private``: the folder is botkit's own (``auto``), created 0700 and refused when another
    user owns it (a shared temporary folder is where someone could prepare one).
    """
    folder = path.parent
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if private:
            info = folder.stat()
            if info.st_uid != os.getuid():
                raise ControlError(
                    f"{KEY}: {folder} belongs to another user; remove it, or set {KEY} to a path of yours"
                )
            if stat.S_IMODE(info.st_mode) != 0o700:
                os.chmod(folder, 0o700)
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as error:
        raise ControlError(f"{KEY}: cannot prepare {path}: {error.strerror or error}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise ControlError(
            f"{KEY}: {path} exists and is not a socket; remove it, or set {KEY} to another path"
        )
    try:
        answer: Answer | None = await request(path, {"command": "status"}, timeout=CLAIM_TIMEOUT)
    except NoRunningBot:
        log.info("control socket: replacing %s, left by a bot that is gone", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except ControlError:
        answer = None  # something listens there, though it gave no usable answer
    raise already_running(path, answer)


class AlreadyRunning(ControlError):
    """Another bot answers on the control socket this one would take."""

    def __init__(self, message: str, who: str) -> None:
        super().__init__(message)
        self.who = who


def already_running(path: Path, status: Answer | None) -> AlreadyRunning:
    pid = status.get("pid") if status else None
    who = f"another bot (pid {pid})" if isinstance(pid, int) else "another bot"
    stop = f"kill {pid}" if isinstance(pid, int) else "Ctrl-C or SIGTERM"
    variable = env_name(("bot", "control_socket"))
    return AlreadyRunning(
        f"{who} already runs with this config: its control socket {path} answers. Stop it first "
        f'({stop}), or give this bot another {KEY} ("off" for none; or set {variable})',
        who,
    )


async def request(path: Path, payload: Mapping[str, Any], timeout: float = 30.0) -> Answer:
    """Send one request to the bot listening at ``path`` and return its answer (a dict with ``ok``).

    Raises ``NoRunningBot`` when nobody listens there, ``ControlError`` when the bot does
    not answer within ``timeout`` seconds or gives something that is not an answer.
    """
    if not unix_sockets_available():
        raise ControlError("this platform has no Unix sockets: no control socket to reach")
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(os.fspath(path), limit=ANSWER_LIMIT), timeout
        )
    except (FileNotFoundError, ConnectionRefusedError):
        raise NoRunningBot(path) from None
    except TimeoutError:
        raise ControlError(f"the bot at {path} did not take the connection within {timeout:g} s") from None
    except OSError as error:
        raise ControlError(f"cannot connect to {path}: {error.strerror or error}") from None
    try:
        writer.write(json.dumps(dict(payload)).encode("utf-8") + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    except TimeoutError:
        raise ControlError(f"the bot at {path} did not answer within {timeout:g} s") from None
    except (ConnectionError, ValueError) as error:
        raise ControlError(f"the connection to the bot at {path} broke: {error}") from None
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    try:
        answer = json.loads(line)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
        said = "closed the connection without answering" if not line else "gave no botkit answer"
        raise ControlError(f"what listens at {path} {said}")
    return answer


def request_sync(path: Path, payload: Mapping[str, Any], timeout: float = 30.0) -> Answer:
    """``request`` for code without an event loop (the command line)."""
    return asyncio.run(request(path, payload, timeout))
