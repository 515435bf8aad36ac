"""Lines logged for every message: ``log_event``'s records, and ``EventLine``'s lines built without one."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from botkit import log_events
from botkit.log_events import EventLine, log_event, sole_json_handler
from botkit.logs import EVENT_FIELD, JsonLineFormatter, TextGuard, TextLineFormatter


@contextmanager
def kept_records(logger: logging.Logger) -> Iterator[list[logging.LogRecord]]:
    """The records ``logger`` hands its handlers at INFO and above while inside."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep()
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(keep)
        logger.setLevel(logging.NOTSET)


def test_log_event_makes_the_record_logger_log_would():
    logger = logging.getLogger("botkit.test.log_event")
    with kept_records(logger) as records:
        fields = {"platform": "console", "message_id": "m1", "latency_s": 0.25}
        logger.info("answered %s in %.2f s", "m1", 0.25, extra=fields)
        for number in (1, 2):  # the second copies what the first left for its call site
            log_event(logger, logging.INFO, "answered %s in %.2f s", (f"m{number}", 0.25), fields)
        log_event(logger, logging.DEBUG, "not written at INFO", (), fields)
    assert len(records) == 3
    stdlib, first, second = records
    assert second is not first
    stamped = {"args", "msg", "created", "msecs", "relativeCreated", "lineno", "message"}
    for ours in (first, second):
        assert set(ours.__dict__) == set(stdlib.__dict__)
        for attribute in set(stdlib.__dict__) - stamped:
            assert getattr(ours, attribute) == getattr(stdlib, attribute), attribute
        assert ours.lineno == stdlib.lineno + 2
    assert stdlib.created <= first.created <= second.created
    assert stdlib.getMessage() == first.getMessage() == "answered m1 in 0.25 s"
    assert second.getMessage() == "answered m2 in 0.25 s" and first.args == ("m1", 0.25)


def test_an_event_name_is_the_json_lines_event_and_the_text_line_keeps_the_message():
    logger = logging.getLogger("botkit.test.event_name")
    with kept_records(logger) as records:
        for number in (1, 2):  # the second record is copied from what the first left
            log_event(logger, logging.INFO, "answered %s", (f"m{number}",), {"message_id": f"m{number}"}, "answered")
        log_event(logger, logging.INFO, "answered %s", ("m3",), {"message_id": "m3"})  # no name: the message
    assert [record.__dict__.get(EVENT_FIELD) for record in records] == ["answered", "answered", None]
    as_json = [json.loads(JsonLineFormatter(TextGuard(False)).format(record)) for record in records]
    assert [(line["event"], line["message_id"]) for line in as_json] == [
        ("answered", "m1"),
        ("answered", "m2"),
        ("answered m3", "m3"),
    ]
    text = TextLineFormatter(TextGuard(False))
    assert [text.format(record).split(": ", 1)[1] for record in records] == ["answered m1", "answered m2", "answered m3"]


def test_log_event_makes_each_record_anew_under_a_custom_record_factory(monkeypatch):
    made: list[str] = []
    stdlib_factory = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        made.append(args[4])
        return stdlib_factory(*args, **kwargs)

    monkeypatch.setattr(logging, "_logRecordFactory", factory)
    logger = logging.getLogger("botkit.test.log_event_factory")
    logger.setLevel(logging.INFO)
    try:
        for _ in range(2):
            log_event(logger, logging.INFO, "custom %s", ("x",), {})
    finally:
        logger.setLevel(logging.NOTSET)
    assert made == ["custom %s", "custom %s"]


@pytest.mark.parametrize(
    "moment_ns", [1_700_000_000_123_456_789, 1_700_000_000_999_999_900, 1_700_000_001_000_000_000]
)
def test_log_event_stamps_the_time_and_arguments_as_log_records_do(monkeypatch, moment_ns):
    monkeypatch.setattr(time, "time_ns", lambda: moment_ns)
    monkeypatch.setattr(time, "time", lambda: moment_ns / 1e9)
    for args in (({"a": 1},), ("a", 1), ()):
        stdlib = logging.LogRecord("botkit.test", logging.INFO, __file__, 1, "event", args, None)
        ours: dict = {}
        log_events._stamp(ours, args)
        for attribute in ("created", "msecs", "relativeCreated", "args"):
            assert ours[attribute] == getattr(stdlib, attribute), attribute


def test_log_event_records_carry_their_own_call_sites_line_and_function():
    logger = logging.getLogger("botkit.test.log_event_sites")

    # Two functions of the same name and body: the same place in the same bytecode, other lines.
    def site() -> None:
        log_event(logger, logging.INFO, "event", (), {})

    first = site

    def site() -> None:  # noqa: F811
        log_event(logger, logging.INFO, "event", (), {})

    with kept_records(logger) as records:
        for call in (first, site, first, site):
            call()
    first_line = first.__code__.co_firstlineno + 1
    second_line = site.__code__.co_firstlineno + 1
    assert [(record.lineno, record.funcName) for record in records] == [
        (first_line, "site"),
        (second_line, "site"),
        (first_line, "site"),
        (second_line, "site"),
    ]


# --- EventLine -------------------------------------------------------------------------------

MOMENT = 1_733_520_000.25  # the time every line below is logged at


def describe(message_id: str, latency_s: float, tokens: int, conversation: object = None):
    """An event's message arguments and fields, as pipeline's ``answered`` line gives them."""
    fields = {"message_id": message_id, "latency_s": round(latency_s, 3), "completion_tokens": tokens}
    if conversation is not None:
        fields["conversation"] = conversation
    return (message_id, latency_s, tokens), fields


def event_line(name: str) -> EventLine:
    return EventLine(logging.getLogger(name), logging.INFO, "answered", "answered %s in %.2f s, %d tokens", describe)


@pytest.fixture
def frozen_time(monkeypatch):
    monkeypatch.setattr(time, "time", lambda: MOMENT)
    monkeypatch.setattr(time, "time_ns", lambda: int(MOMENT * 1e9))


@contextmanager
def alone(handler: logging.Handler) -> Iterator[None]:
    """``handler`` the root logger's only one, as in a service (pytest adds its own for each test)."""
    root = logging.getLogger()
    others = [h for h in root.handlers if h is not handler]
    for other in others:
        root.removeHandler(other)
    try:
        yield
    finally:
        for other in others:
            root.addHandler(other)


def written(handler: logging.Handler, capsys) -> list[str]:
    handler.flush()
    return capsys.readouterr().err.splitlines()


def test_an_event_line_without_a_record_is_the_line_its_record_makes(configured_logging, capsys, frozen_time):
    handler = configured_logging(level="INFO", format="json")
    line = event_line("botkit.test.events")
    logger = line.logger
    values = [("m1", 0.123456, 7), ("m\"2\n", 2.0, 0, "console:général"), ("m3", float("nan"), 10**30, ["a"])]
    with alone(handler):
        assert sole_json_handler(logger, logging.INFO) is handler
        for value in values:
            line.log(*value)
        # A filter that lets everything through: the record is made and formatted as any other.
        logger.addFilter(lambda record: True)
        try:
            assert sole_json_handler(logger, logging.INFO) is None
            for value in values:
                line.log(*value)
        finally:
            logger.filters.clear()
        lines = written(handler, capsys)
    without_record, with_record = lines[:3], lines[3:]
    assert without_record == with_record
    assert json.loads(without_record[1]) == {
        "time": "2024-12-06T21:20:00.250Z",
        "level": "INFO",
        "logger": "botkit.test.events",
        "event": "answered",
        "conversation": "console:général",
        "message_id": 'm"2\n',
        "latency_s": 2.0,
        "completion_tokens": 0,
    }


def test_other_handlers_get_the_event_as_a_record_from_the_callers_line(configured_logging, capsys):
    handler = configured_logging(level="INFO", format="json")
    line = event_line("botkit.test.events_kept")
    with alone(handler), kept_records(line.logger) as records:
        assert sole_json_handler(line.logger, logging.INFO) is None  # the logger has a handler of its own
        line.log("m1", 0.5, 3)
        called_at = sys._getframe().f_lineno - 1
    (record,) = records
    assert (record.funcName, record.lineno, record.pathname) == (
        "test_other_handlers_get_the_event_as_a_record_from_the_callers_line",
        called_at,
        __file__,
    )
    assert record.getMessage() == "answered m1 in 0.50 s, 3 tokens"
    assert (record.__dict__[EVENT_FIELD], record.message_id, record.latency_s) == ("answered", "m1", 0.5)
    # The record went on to botkit's handler too.
    (text,) = written(handler, capsys)
    assert (json.loads(text)["event"], json.loads(text)["message_id"]) == ("answered", "m1")


def test_an_event_line_in_the_text_format_is_its_message(configured_logging, capsys):
    handler = configured_logging(level="INFO", format="text")
    line = event_line("botkit.test.events_text")
    with alone(handler):
        assert sole_json_handler(line.logger, logging.INFO) is None
        line.log("m1", 0.5, 3)
        (text,) = written(handler, capsys)
    assert text.endswith(" INFO botkit.test.events_text: answered m1 in 0.50 s, 3 tokens")


def test_an_event_line_under_a_custom_record_factory_is_made_by_it(configured_logging, capsys, monkeypatch):
    handler = configured_logging(level="INFO", format="json")
    made: list[str] = []
    stdlib_factory = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = stdlib_factory(*args, **kwargs)
        made.append(record.getMessage())
        return record

    monkeypatch.setattr(logging, "_logRecordFactory", factory)
    with alone(handler):
        event_line("botkit.test.events_factory").log("m1", 0.5, 3)
        lines = written(handler, capsys)
    assert made == ["answered m1 in 0.50 s, 3 tokens"]
    assert [json.loads(text)["event"] for text in lines] == ["answered"]


def test_the_level_policy_holds_for_an_event_line_without_a_record(configured_logging, capsys):
    handler = configured_logging(level="INFO", format="json", loggers={"botkit.test.quiet": "WARNING"})
    with alone(handler):
        event_line("botkit.test.quiet.events").log("m1", 0.5, 3)
        event_line("botkit.test.loud").log("m2", 0.5, 3)
        lines = written(handler, capsys)
    assert [json.loads(text)["message_id"] for text in lines] == ["m2"]


def test_a_warning_after_event_lines_is_written_after_them_at_once(configured_logging, capsys):
    handler = configured_logging(level="INFO", format="json")
    line = event_line("botkit.test.events_order")
    with alone(handler):
        line.log("m1", 0.5, 3)
        line.log("m2", 0.5, 3)
        line.logger.warning("the model is slow")
        # Nobody flushed: the warning wrote what was queued before it, in order.
        lines = [json.loads(text) for text in capsys.readouterr().err.splitlines()]
    assert [(item["event"], item.get("message_id")) for item in lines] == [
        ("answered", "m1"),
        ("answered", "m2"),
        ("the model is slow", None),
    ]


def test_an_event_line_queued_before_the_formatter_changed_is_written_by_the_new_one(
    configured_logging, capsys, frozen_time
):
    handler = configured_logging(level="INFO", format="json")
    with alone(handler):
        event_line("botkit.test.events_swap").log("m1", 0.5, 3)
        handler.setFormatter(TextLineFormatter(TextGuard(False)))
        (text,) = written(handler, capsys)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(MOMENT))
    assert text == f"{stamp},250 INFO botkit.test.events_swap: answered m1 in 0.50 s, 3 tokens"


def broken(message_id: str):
    raise KeyError(message_id)


@pytest.mark.parametrize("fields_built_by", ["the writer", "the caller"])
def test_an_event_line_that_cannot_be_built_is_reported_and_the_others_written(
    configured_logging, capsys, fields_built_by
):
    handler = configured_logging(level="INFO", format="json")
    failing = EventLine(logging.getLogger("botkit.test.broken"), logging.INFO, "answered", "answered %s", broken)
    with alone(handler):
        if fields_built_by == "the caller":  # a handler of its own: its record is made where it is logged
            failing.logger.addHandler(logging.NullHandler())
        try:
            failing.log("m1")  # never raises into the caller
        finally:
            failing.logger.handlers.clear()
        event_line("botkit.test.events_after").log("m2", 0.5, 3)
        handler.flush()
        err = capsys.readouterr().err
    assert "--- Logging error ---" in err and "KeyError: 'm1'" in err
    assert "Message: 'answered %s'" in err
    assert [json.loads(text)["message_id"] for text in err.splitlines() if text.startswith("{")] == ["m2"]


@pytest.mark.parametrize(
    "change",
    ["logger disabled", "no propagation", "a parent's handler", "a handler filter", "handler level", "two handlers"],
)
def test_an_event_line_goes_as_a_record_wherever_anything_else_could_see_it(configured_logging, change, request):
    handler = configured_logging(level="INFO", format="json")
    root = logging.getLogger()
    parent, logger = logging.getLogger("botkit.test.routes"), logging.getLogger("botkit.test.routes.events")
    other, errors_only = logging.NullHandler(), logging.NullHandler(logging.ERROR)
    parent.addHandler(errors_only)  # as metrics' count of errors: it sees nothing at INFO
    request.addfinalizer(lambda: parent.removeHandler(errors_only))
    switch = {
        "logger disabled": lambda on: setattr(logger, "disabled", on),
        "no propagation": lambda on: setattr(parent, "propagate", not on),
        "a parent's handler": lambda on: (parent.addHandler if on else parent.removeHandler)(other),
        "a handler filter": lambda on: (handler.addFilter if on else handler.removeFilter)(other),
        "handler level": lambda on: handler.setLevel(logging.WARNING if on else logging.NOTSET),
        "two handlers": lambda on: (root.addHandler if on else root.removeHandler)(other),
    }[change]
    with alone(handler):
        assert sole_json_handler(logger, logging.INFO) is handler
        switch(True)
        try:
            assert sole_json_handler(logger, logging.INFO) is None
        finally:
            switch(False)
        assert sole_json_handler(logger, logging.INFO) is handler
