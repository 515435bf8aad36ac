"""Logging from ``[logging]``: text or JSON lines on stderr, other libraries kept quiet, no chat text.

``configure_logging`` installs one handler on the root logger (replacing the one it installed
before), so that third-party loggers go through the same rules as botkit's own:

- ``LevelPolicy`` decides by logger name: botkit's loggers (and any library not listed) follow
  ``level``; the chatty libraries of ``QUIET_LOGGERS`` stay at WARNING; ``[logging] loggers``
  names any logger's level, a name covering its children (the longest name wins). The handler
  applies it to every record, not logger levels alone, because some libraries set their loggers'
  levels themselves (slack_bolt copies the root logger's level into each of its loggers).
- ``TextGuard``: botkit's own log calls never interpolate message or reply text; the
  libraries of ``PAYLOAD_LOGGERS`` log request and event bodies below WARNING (slack_bolt
  logs the whole body of a request with a bad signature at INFO), so their lines are
  written with those parts withheld unless ``include_text`` is on.
- ``StderrHandler`` writes lines below WARNING a batch at a time from a writer thread (at most
  ``FLUSH_INTERVAL_S`` late), and a WARNING or worse at once, after what was queued before it.
  Besides records it queues the values of ``EventLine``s (``botkit/log_events.py``) whose
  records nothing else would see; its writer builds their lines.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import re
import sys
import threading
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from botkit.log_events import EventLine
    from botkit.settings import LoggingSettings
    from botkit.types import Message

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WITHHELD = "[withheld: include_text is off]"
# A line below WARNING reaches stderr at most this long after it was logged (StderrHandler),
# or as soon as MAX_BATCH lines wait: a burst never holds more than that in memory.
FLUSH_INTERVAL_S = 0.2
MAX_BATCH = 1000

# Libraries whose INFO and DEBUG lines are noise for a bot's operator (aiosqlite alone writes
# ~300 lines for one question at DEBUG): WARNING unless `[logging] loggers` asks for more.
QUIET_LOGGERS = (
    "aiohttp",
    "aiosqlite",
    "alembic",
    "asyncio",
    "asyncpg",
    "charset_normalizer",
    "discord",
    "filelock",
    "fsspec",
    "hpack",
    "httpcore",
    "httpcore2",
    "httpx",
    "httpx2",
    "huggingface_hub",
    "markdown_it",
    "multipart",
    "peft",
    "PIL",
    "redis",
    "slack_bolt",
    "slack_sdk",
    "sqlalchemy",
    "torch",
    "transformers",
    "urllib3",
    "websockets",
)

# Libraries known to log chat text below WARNING: request and response bodies (slack_sdk,
# slack_bolt, discord.http), gateway and socket events (discord.gateway, slack_sdk.socket_mode,
# websockets' frames), SQL parameters (aiosqlite's operations).
PAYLOAD_LOGGERS = ("aiosqlite", "discord", "slack_bolt", "slack_sdk", "websockets")

# Lines of those libraries whose harmless part is worth keeping: (logger, pattern, replacement).
KEPT_PARTS = (
    # slack_bolt, INFO: "Invalid request signature detected (signature: ..., timestamp: ..., body: ...)"
    (
        "slack_bolt",
        re.compile(r"(?s)^(Invalid request signature detected \(.*?, timestamp: [^,]*, body: ).*$"),
        rf"\1{WITHHELD})",
    ),
    # slack_sdk, DEBUG: "Sending a request - url: POST https://slack.com/api/chat.postMessage, params: ..."
    ("slack_sdk", re.compile(r"(?s)^(Sending a request - url: [^,]*, ).*$"), rf"\1{WITHHELD}"),
    # slack_sdk, DEBUG: "Received the following response - status: 200, headers: ..., body: ..."
    (
        "slack_sdk",
        re.compile(r"(?s)^(Received the following response - status: [^,]*, ).*$"),
        rf"\1{WITHHELD}",
    ),
)

# Context botkit's log calls pass with ``extra=``: written as fields of a JSON line.
CONTEXT_FIELDS = (
    "platform",
    "conversation",
    "message_id",
    "user",
    "backend",
    "status",
    "latency_s",
    "first_token_s",
    "prompt_tokens",
    "completion_tokens",
)


# The record attribute of an event's name (log_event): a JSON line's event, in place of the message.
EVENT_FIELD = "botkit_event"

# Each field of a JSON line as it begins: the separator and the key.
_KEYS = tuple(f", {json.dumps(field)}: " for field in CONTEXT_FIELDS)
# A time's milliseconds as a JSON line writes them, with the "Z" of UTC.
_MILLISECONDS = tuple(f".{number:03d}Z" for number in range(1000))
# A string as JSON writes it with ensure_ascii=False: quoted, with quotes, backslashes and
# control characters escaped.
_quote = json.encoder.encode_basestring
MAX_HEADS = 1024  # line beginnings a JSON formatter keeps: (level, logger, event name)


def message_context(message: Message, conversation: str) -> dict[str, Any]:
    """The ``extra=`` of a log line about ``message``: where it came from, never what it says."""
    return {
        "platform": message.platform,
        "conversation": conversation,
        "message_id": message.message_id,
        "user": message.user_key,
    }


def _covers(name: str, logger: str) -> bool:
    return name == logger or name.startswith(logger + ".")


def _longest_match(name: str, names: Any) -> str | None:
    matches = [logger for logger in names if _covers(name, logger)]
    return max(matches, key=len) if matches else None


@functools.lru_cache(maxsize=1024)
def _payload_library(name: str) -> str | None:
    """The payload-logging library (``PAYLOAD_LOGGERS``) whose logger ``name`` is, if any."""
    return _longest_match(name, PAYLOAD_LOGGERS)


class LevelPolicy(logging.Filter):
    """Lets a record through when its level reaches its logger's: the longest configured name covering it."""

    def __init__(self, level: int, levels: dict[str, int]) -> None:
        super().__init__()
        self.level = level
        self.levels = levels
        self.thresholds: dict[str, int] = {}  # what threshold() said, by logger name: a process has a few hundred

    def threshold(self, name: str) -> int:
        known = self.thresholds.get(name)
        if known is None:
            logger = _longest_match(name, self.levels)
            known = self.thresholds[name] = self.level if logger is None else self.levels[logger]
        return known

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.threshold(record.name)


class TextGuard:
    """What may be written of a record: its message, or the message with chat text withheld."""

    def __init__(self, include_text: bool) -> None:
        self.include_text = include_text

    def message(self, record: logging.LogRecord) -> str:
        if self.include_text or record.levelno >= logging.WARNING:
            return record.getMessage()
        library = _payload_library(record.name)
        if library is None:
            return record.getMessage()
        if record.args:
            # Numbers carry no text; every other argument may be a body or an event.
            try:
                return str(record.msg) % _withheld(record.args)
            except (TypeError, ValueError, KeyError):
                return f"{record.msg} {WITHHELD}"
        text = str(record.msg)
        for logger, pattern, replacement in KEPT_PARTS:
            if _covers(record.name, logger) and pattern.match(text):
                return pattern.sub(replacement, text)
        return f"{WITHHELD} (a {record.levelname} line of {library}, which may log chat text)"

    def safe_record(self, record: logging.LogRecord) -> logging.LogRecord:
        """``record`` as it may be written: a copy when something is withheld, so other handlers see the original."""
        if self.include_text:
            return record
        safe = self.message(record)
        if safe == record.getMessage():
            return record
        record = copy.copy(record)
        record.msg, record.args = safe, None
        return record


def _withheld(args: Any) -> Any:
    def one(value: Any) -> Any:
        return value if isinstance(value, int | float | None) else WITHHELD

    if isinstance(args, dict):
        return {key: one(value) for key, value in args.items()}
    return tuple(one(value) for value in args)


class TextLineFormatter(logging.Formatter):
    """Today's text lines: ``time LEVEL logger: message``."""

    def __init__(self, guard: TextGuard) -> None:
        super().__init__(TEXT_FORMAT)
        self.guard = guard

    def format(self, record: logging.LogRecord) -> str:
        return super().format(self.guard.safe_record(record))


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, event, the context known, exception.

    The event is the record's message, or the name ``log_event`` gave it (``EVENT_FIELD``).
    """

    def __init__(self, guard: TextGuard) -> None:
        super().__init__()
        self.guard = guard
        self._encode = json.JSONEncoder(ensure_ascii=False, default=str).encode
        # The last second formatted and its text (lines come many a second), set as one tuple:
        # another thread formatting at the same time reads a pair that belongs together.
        self._last_second: tuple[int, str] | None = None
        self._heads: dict[tuple[str, str, str | None], str] = {}

    def _time(self, created: float) -> str:
        """``created`` as datetime.fromtimestamp(...).isoformat(timespec="milliseconds") writes it, in UTC."""
        second = int(created)
        micro = round((created - second) * 1e6)  # rounded to the microsecond first, as datetime does
        if micro >= 1_000_000:
            second, micro = second + 1, micro - 1_000_000
        last = self._last_second
        if last is None or last[0] != second:
            text = datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds").removesuffix("+00:00")
            last = self._last_second = (second, text)
        return last[1] + _MILLISECONDS[micro // 1000]

    def format(self, record: logging.LogRecord) -> str:
        # The line json.JSONEncoder would write for the dict of these keys, in this order, built
        # from its parts: a line per message is worth the few microseconds (bench/README.md).
        values = record.__dict__
        event = values.get(EVENT_FIELD)
        if event.__class__ is str:
            parts = self._begin(record.created, record.levelname, record.name, event)
        else:
            parts = self._begin(record.created, record.levelname, record.name, None)
            parts.append(_quote(self.guard.message(record)))
        self._add_fields(parts, values)
        if record.exc_info:
            parts += (', "exception": ', _quote(self.formatException(record.exc_info)))
        elif record.exc_text:
            parts += (', "exception": ', _quote(record.exc_text))
        if record.stack_info:
            parts += (', "stack": ', _quote(self.formatStack(record.stack_info)))
        parts.append("}")
        return "".join(parts)

    def format_event(self, created: float, level: str, logger: str, event: str, fields: Mapping[str, Any]) -> str:
        """The line ``format`` writes for a record of an event with these fields (no exception): no record needed."""
        parts = self._begin(created, level, logger, event)
        self._add_fields(parts, fields)
        parts.append("}")
        return "".join(parts)

    def _begin(self, created: float, level: str, logger: str, event: str | None) -> list[str]:
        return ['{"time": "', self._time(created), '", ', self._head(level, logger, event)]

    def _add_fields(self, parts: list[str], values: Mapping[str, Any]) -> None:
        for key, value in zip(_KEYS, map(values.get, CONTEXT_FIELDS), strict=True):
            if value is None:
                continue
            kind = value.__class__
            if kind is str:
                parts += (key, _quote(value))
            elif kind is int or (kind is float and math.isfinite(value)):
                parts += (key, repr(value))
            else:
                parts += (key, self._encode(value))

    def _head(self, level: str, logger: str, event: str | None) -> str:
        """``"level": ..., "logger": ..., "event": `` for a level and logger (and the event's name), made once."""
        key = (level, logger, event)
        head = self._heads.get(key)
        if head is None:
            head = f'"level": {_quote(level)}, "logger": {_quote(logger)}, "event": '
            if event is not None:
                head += _quote(event)
            if len(self._heads) < MAX_HEADS:
                self._heads[key] = head
        return head


class StderrHandler(logging.Handler):
    """Writes lines to ``sys.stderr`` (as it is when they are written), a batch at a time.

    The thread that logs (the event loop's, mostly) only queues the record; a writer thread
    formats what has queued and writes it in one call, ``FLUSH_INTERVAL_S`` after the first
    record of the batch. Formatting a batch in one go costs a fraction of formatting each
    line between the pipeline's own work. A record at WARNING or above is written at once,
    after everything queued before it, by the thread that logs it; so is a full batch.
    ``flush()`` (and ``logging.shutdown()`` at exit) writes what is queued.

    ``policy`` decides first which records are written (``LevelPolicy``); then the handler's
    filters, as any handler's. Queueing takes no lock (a deque's ``append`` and ``popleft``
    are safe across threads); batches are formatted and written one at a time, in order,
    under a lock of their own, so that a thread logging never waits for a batch's formatting.
    """

    def __init__(self, policy: LevelPolicy) -> None:
        super().__init__()
        self.policy = policy
        self._queued: deque[logging.LogRecord | tuple[EventLine, float, tuple[Any, ...]]] = deque()
        self._write_lock = threading.Lock()
        self._first_queued = threading.Event()
        self._closing = threading.Event()
        self._writer: threading.Thread | None = None

    def handle(self, record: logging.LogRecord) -> logging.LogRecord | bool:
        # logging.Handler.handle, less the lock that emit() does not need.
        threshold = self.policy.thresholds.get(record.name)
        if threshold is None:
            threshold = self.policy.threshold(record.name)
        if record.levelno < threshold:
            return False
        if self.filters:
            passed = self.filter(record)
            if not passed:
                return False
            if isinstance(passed, logging.LogRecord):  # Python 3.12 on: a filter may hand back a record
                record = passed
        self.emit(record)
        return record

    def queue_event(self, line: EventLine, created: float, values: tuple[Any, ...]) -> None:
        """Queue an ``EventLine``'s values, logged at ``created``: its line is built when the batch is written.

        For ``EventLine.log`` alone, which checked that this handler, with the JSON formatter, is all
        its record would meet (``sole_json_handler``): the level policy is still this handler's.
        """
        threshold = self.policy.thresholds.get(line.logger.name)
        if threshold is None:
            threshold = self.policy.threshold(line.logger.name)
        if line.level >= threshold:
            self._queue((line, created, values), line.level)

    def emit(self, record: logging.LogRecord) -> None:
        self._queue(record, record.levelno)

    def _queue(self, item: logging.LogRecord | tuple[EventLine, float, tuple[Any, ...]], level: int) -> None:
        queued = self._queued
        queued.append(item)
        if level >= logging.WARNING or len(queued) >= MAX_BATCH:
            self.flush()
        elif len(queued) == 1:
            if self._writer is None:
                self._start_writer()
            self._first_queued.set()

    def _start_writer(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_batches, name="botkit-log-writer", daemon=True)
                self._writer.start()

    def flush(self) -> None:
        with self._write_lock:
            queued = self._queued
            lines = []
            # What is queued now, not what other threads add meanwhile: a flush always ends.
            for _ in range(len(queued)):
                record = queued.popleft()
                try:
                    if record.__class__ is tuple:  # queue_event's
                        lines.append(self._event_line(*record))
                    else:
                        lines.append(self.format(record))
                except Exception:
                    if record.__class__ is tuple:
                        record = self.failed_event(*record[:2])
                    self.handleError(record)
            if not lines:
                return
            try:
                stream = sys.stderr
                stream.write("\n".join(lines) + "\n")
                stream.flush()
            except Exception:
                self.handleError(record)

    def _event_line(self, line: EventLine, created: float, values: tuple[Any, ...]) -> str:
        formatter = self.formatter
        if formatter.__class__ is JsonLineFormatter:
            _, fields = line.describe(*values)
            return formatter.format_event(  # type: ignore[union-attr]
                created, logging.getLevelName(line.level), line.logger.name, line.event, fields
            )
        return self.format(line.record(created, values))  # the formatter was replaced since it was queued

    @staticmethod
    def failed_event(line: EventLine, created: float) -> logging.LogRecord:
        """A record to report an event line that could not be built (its values left out: they failed)."""
        record = logging.makeLogRecord({"name": line.logger.name, "msg": line.msg, "args": None, "created": created})
        record.levelno, record.levelname = line.level, logging.getLevelName(line.level)
        return record

    def close(self) -> None:
        self.flush()
        self._closing.set()
        self._first_queued.set()
        super().close()

    def _at_fork_reinit(self) -> None:
        # logging calls this in a forked child: no writer thread runs there, a lock another
        # thread held at the fork would stay held, and what the parent queued is the parent's
        # to write (the child would write it a second time).
        super()._at_fork_reinit()  # type: ignore[misc]
        self._queued = deque()
        self._write_lock = threading.Lock()
        self._first_queued = threading.Event()
        self._writer = None

    def _write_batches(self) -> None:
        while True:
            self._first_queued.wait()
            if self._closing.wait(FLUSH_INTERVAL_S):
                return
            # Cleared before the batch is taken; a record queued while it was taken, and left for
            # later, sets it again here (one queued after this check finds an empty queue and sets it).
            self._first_queued.clear()
            self.flush()
            if self._queued:
                self._first_queued.set()


def configure_logging(settings: LoggingSettings, *, force: bool = False) -> logging.Handler | None:
    """Set up the root logger from ``[logging]``; called again, it replaces what it set up.

    Like ``logging.basicConfig``, it leaves alone a root logger that has handlers of someone
    else's (a program embedding botkit, pytest's capture) and returns None, unless ``force``.
    Returns the handler installed.
    """
    root = logging.getLogger()
    if not force and any(h.get_name() != "botkit" for h in root.handlers):
        return None
    level = logging.getLevelNamesMapping()[settings.level]
    levels = {name: logging.WARNING for name in QUIET_LOGGERS}
    levels.update({name: logging.getLevelNamesMapping()[value] for name, value in settings.loggers.items()})
    guard = TextGuard(settings.include_text)
    policy = LevelPolicy(level, levels)
    handler = StderrHandler(policy)
    handler.setFormatter(JsonLineFormatter(guard) if settings.format == "json" else TextLineFormatter(guard))
    handler.set_name("botkit")
    for old in [h for h in root.handlers if h.get_name() == "botkit"]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    # The root's level lets through what any logger may write; the policy does the rest. Logger
    # levels for the quiet libraries spare them building records nobody writes.
    root.setLevel(min([level, *levels.values()]))
    for name in levels:
        logging.getLogger(name).setLevel(policy.threshold(name))
    return handler


__all__ = [
    "CONTEXT_FIELDS",
    "EVENT_FIELD",
    "PAYLOAD_LOGGERS",
    "QUIET_LOGGERS",
    "JsonLineFormatter",
    "LevelPolicy",
    "TextGuard",
    "TextLineFormatter",
    "configure_logging",
    "message_context",
]
