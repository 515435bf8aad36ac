"""Lines logged for every message, built for less than ``logger.log`` builds them.

- ``log_event``: ``logger.log(level, msg, *args, extra=fields)``, with the record copied from
  its call site's first one rather than made anew.
- ``EventLine``: one such line, declared once (logger, level, event, message) and logged with
  the caller's values; ``ANSWERED``, the pipeline's line for every message answered. When botkit's JSON handler is the only thing its records would meet,
  no record is made at all: the handler queues the time and the values, and its writer
  builds the line (``StderrHandler.queue_event``).

A record made and formatted for the ``answered`` line of every message cost ~2.5% of a
message's time in the pipeline benchmark; queueing its values costs a few tenths of a point
(bench/README.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from botkit.logs import EVENT_FIELD, JsonLineFormatter, StderrHandler, message_context

if TYPE_CHECKING:
    from botkit.types import ConversationScope, Message

# Reports an EventLine whose fields could not be built where its record is made, as a handler
# reports a line it cannot format (with logging.raiseExceptions: the traceback on stderr).
_REPORTER = logging.NullHandler()

# The caller's values of an EventLine, as the arguments of its message and its fields.
Describe = Callable[..., tuple[tuple[Any, ...], dict[str, Any]]]


# What the record factory filled in for a log_event call site: the next records there copy it
# and take only their time and arguments anew, when made in the same thread and process.
# LogRecord.__init__ reads the clock, splits the caller's path and asks for the thread's and
# process's names: in a busy bot that is ~1% of a message's time on its own (bench/README.md).
# A site is known by its code's file, name and first line and the call's place in the bytecode:
# a code object's hash is computed anew each time (over its whole bytecode), and a frame's line
# number too (by reading the line table from the start). The value: the thread and process the
# record was made in, and the record's attributes less those stamped per record.
_EVENT_RECORDS: dict[tuple[Any, ...], tuple[int, int, dict[str, Any]]] = {}
_STAMPED = frozenset({"args", "created", "msecs", "relativeCreated", "taskName"})
_MOST_EVENT_SITES = 256
_thread_id = threading.get_ident
# os.getpid() is a system call each time: the process id is read once, and again after a fork.
_process: list[int] = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _process.__setitem__(0, os.getpid()))


def log_event(
    logger: logging.Logger,
    level: int,
    msg: str,
    args: tuple[Any, ...],
    fields: dict[str, Any],
    event: str | None = None,
    stacklevel: int = 1,
) -> None:
    """``logger.log(level, msg, *args, extra=fields)`` for a line written once per message.

    ``event``: a short name for what happened (``answered``), the event of a JSON line in
    place of the message; the fields say the rest. The record carries it as ``EVENT_FIELD``.

    The same record, built for less: the caller's file and line are read from its own
    frame, not found by walking the stack, and ``fields`` (context names of
    ``CONTEXT_FIELDS``, which no record attribute has) are set without the checks
    ``extra`` gets. The first record of a call site comes from the record factory; the next
    ones (in the same thread and process) copy it and stamp their own time and arguments as
    ``LogRecord`` does. A custom record factory is called for every record. The record goes
    through the logger's filters and handlers as usual. ``stacklevel``: as logging's, the
    caller that counts as the site (1: the one calling ``log_event``).
    """
    if not logger.isEnabledFor(level):
        return
    caller = sys._getframe(stacklevel)
    code = caller.f_code
    key = (code.co_filename, code.co_firstlineno, code.co_name, caller.f_lasti, level, msg, event, logger.name)
    made = _EVENT_RECORDS.get(key)
    if (
        made is not None
        and made[0] == _thread_id()
        and made[1] == _process[0]
        and logging.getLogRecordFactory() is logging.LogRecord
    ):
        # One dict copied, stamped and given the fields, then made the record's: a dict filled
        # key by key grows (and is copied) several times on the way to some thirty attributes.
        values = made[2].copy()
        _stamp(values, args)
        values.update(fields)
        record = logging.LogRecord.__new__(logging.LogRecord)
        record.__dict__ = values
    else:
        factory = logging.getLogRecordFactory()
        record = factory(logger.name, level, code.co_filename, caller.f_lineno, msg, args, None, code.co_name)
        if event is not None:
            record.__dict__[EVENT_FIELD] = event
        if factory is logging.LogRecord and (made is not None or len(_EVENT_RECORDS) < _MOST_EVENT_SITES):
            template = {k: v for k, v in record.__dict__.items() if k not in _STAMPED}
            _EVENT_RECORDS[key] = (_thread_id(), _process[0], template)
        record.__dict__.update(fields)
    if logger.filters:
        logger.handle(record)
    elif not logger.disabled:
        logger.callHandlers(record)  # what handle() comes to for a logger without filters


def _stamp_seconds(values: dict[str, Any], args: tuple[Any, ...]) -> None:
    """A record's arguments and time (in ``values``, its dict), as ``LogRecord.__init__`` sets them up to Python 3.12."""
    values["args"] = args[0] if args and len(args) == 1 and isinstance(args[0], Mapping) and args[0] else args
    now = time.time()
    values["created"] = now
    values["msecs"] = int((now - int(now)) * 1000) + 0.0
    values["relativeCreated"] = (now - logging._startTime) * 1000  # type: ignore[attr-defined]


def _stamp_nanoseconds(values: dict[str, Any], args: tuple[Any, ...]) -> None:
    """A record's arguments and time (in ``values``), as ``LogRecord.__init__`` sets them from Python 3.13."""
    values["args"] = args[0] if args and len(args) == 1 and isinstance(args[0], Mapping) and args[0] else args
    ns = time.time_ns()
    created = values["created"] = ns / 1e9
    msecs = (ns % 1_000_000_000) // 1_000_000 + 0.0
    if msecs == 999.0 and int(created) != ns // 1_000_000_000:
        msecs = 0.0
    values["msecs"] = msecs
    values["relativeCreated"] = (ns - logging._startTime) / 1e6  # type: ignore[attr-defined]


def _stamp_with_task(values: dict[str, Any], args: tuple[Any, ...]) -> None:
    """As ``_stamp_time``, and the asyncio task's name, as Python 3.12 on sets it."""
    _stamp_time(values, args)
    values["taskName"] = None
    asyncio = sys.modules.get("asyncio") if logging.logAsyncioTasks else None  # type: ignore[attr-defined]
    if asyncio is not None:
        # As LogRecord does: outside a running loop or a task the name stays None.
        with contextlib.suppress(Exception):
            values["taskName"] = asyncio.current_task().get_name()


# logging's start time is in nanoseconds from Python 3.13 (and so is a record's clock).
_stamp_time = _stamp_nanoseconds if isinstance(logging._startTime, int) else _stamp_seconds  # type: ignore[attr-defined]
_stamp = _stamp_with_task if sys.version_info >= (3, 12) else _stamp_time


class EventLine:
    """One line logged for (nearly) every message: a logger, level, event and message, the rest from the caller's values.

    ``log(*values)`` writes what ``log_event(logger, level, msg, args, fields, event=event)``
    writes, ``args`` and ``fields`` being ``describe(*values)``. Where botkit's JSON handler is
    all a record of the logger would meet (``sole_json_handler``), no record is made: the
    handler queues the values with the time, and its writer calls ``describe`` and writes the
    line ``JsonLineFormatter`` writes for the record. So what the fields take to build (a
    conversation's key, roundings) leaves the event loop too. Anything else that could see the
    record (a filter, another handler such as pytest's ``caplog``, a record factory, the text
    format) gets the record, made by ``log_event``.

    ``describe`` may run in the handler's writer thread, after ``log`` returned: the values must
    not change meanwhile (strings, numbers, frozen messages).
    """

    __slots__ = ("describe", "event", "level", "logger", "msg")

    def __init__(self, logger: logging.Logger, level: int, event: str, msg: str, describe: Describe) -> None:
        self.logger = logger
        self.level = level
        self.event = event
        self.msg = msg
        self.describe = describe

    def log(self, *values: Any) -> None:
        logger, level = self.logger, self.level
        if not logger.isEnabledFor(level):
            return
        handler = sole_json_handler(logger, level)
        if handler is not None:
            handler.queue_event(self, time.time(), values)
        else:
            try:
                args, fields = self.describe(*values)
            except Exception:  # as a handler does with a line it cannot format: reported, never raised
                _REPORTER.handleError(StderrHandler.failed_event(self, time.time()))
                return
            log_event(logger, level, self.msg, args, fields, event=self.event, stacklevel=2)

    def record(self, created: float, values: tuple[Any, ...]) -> logging.LogRecord:
        """The record ``log`` would have made at ``created`` (less the caller's place): for a handler whose formatter changed since."""
        args, fields = self.describe(*values)
        record = logging.getLogRecordFactory()(self.logger.name, self.level, "", 0, self.msg, args, None)
        record.created = created
        record.msecs = int((created - int(created)) * 1000) + 0.0
        record.relativeCreated = (created - _start_s()) * 1000
        record.__dict__[EVENT_FIELD] = self.event
        record.__dict__.update(fields)
        return record


def _start_s() -> float:
    """When logging was imported, in seconds (nanoseconds from Python 3.13 on)."""
    start = logging._startTime  # type: ignore[attr-defined]
    return start / 1e9 if isinstance(start, int) else start


def sole_json_handler(logger: logging.Logger, level: int) -> StderrHandler | None:
    """botkit's JSON handler, where a record of ``logger`` at ``level`` would meet nothing else.

    That is: the default record factory; no filter on the logger, which is not disabled (as in
    ``Logger.handle``, a logger's parents' filters do not apply); and of the handlers on the way to
    the root (``Logger.callHandlers``), botkit's alone takes the level, with the JSON formatter
    and no filter. A handler for worse levels only (metrics' count of errors) sees nothing of it.
    """
    if logger.filters or logger.disabled or logging.getLogRecordFactory() is not logging.LogRecord:
        return None
    sole = None
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if level >= handler.level:
                if sole is not None or handler.__class__ is not StderrHandler:
                    return None
                sole = handler
        current = current.parent if current.propagate else None
    if sole is None or sole.filters or sole.formatter.__class__ is not JsonLineFormatter:
        return None
    return sole


def _answered(
    message: Message,
    scope: ConversationScope,
    backend: str,
    status: str,
    latency_s: float,
    first_token_s: float | None,
    prompt_tokens: int,
    completion_tokens: int,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The ``answered`` line's message arguments and fields (it may be built in the log's writer thread)."""
    args = (message.message_id, status, latency_s, prompt_tokens, completion_tokens, backend)
    fields = {
        **message_context(message, message.conversation_key(scope)),
        "backend": backend,
        "status": status,
        "latency_s": round(latency_s, 3),
        "first_token_s": None if first_token_s is None else round(first_token_s, 3),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
    }
    return args, fields


# The pipeline's line for every message answered, at INFO: its JSON event is "answered"; the fields say the rest.
ANSWERED = EventLine(
    logging.getLogger("botkit.pipeline"),
    logging.INFO,
    "answered",
    "answered %s: %s in %.2f s, %d prompt + %d reply tokens, backend %r",
    _answered,
)


__all__ = ["ANSWERED", "Describe", "EventLine", "log_event", "sole_json_handler"]
