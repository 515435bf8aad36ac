"""[logging]: JSON lines, other libraries kept at WARNING, and no chat text in any line unless asked for."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from fake_slack import FakeSlack, start_slack
from test_cli import clean_env

from botkit.logs import TextGuard

USER_TEXTS = ["tell me about PLUMTREE-4471", "and what of QUINCE-9083"]
REPLY_TEXT = "ZEPHYR-5527 is the answer"
CANARIES = ["PLUMTREE-4471", "QUINCE-9083", "ZEPHYR-5527"]


def chat(tmp_path: Path, logging_table: str) -> subprocess.CompletedProcess:
    """``botkit chat`` with the scripted backend, the user's lines piped in; stderr is the log."""
    config, data = tmp_path / "config.toml", tmp_path / "data"
    config.write_text(
        textwrap.dedent(
            f"""
            [backend]
            type = "scripted"
            default_reply = "{REPLY_TEXT}"
            [storage]
            data_dir = "{data}"
            [logging]
            """
        )
        + textwrap.dedent(logging_table),
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "botkit", "chat", "--config", str(config)],
        input="".join(f"{text}\n" for text in USER_TEXTS),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"botkit> {REPLY_TEXT}"] * len(USER_TEXTS)
    return result


def json_lines(stderr: str) -> list[dict]:
    """Every line of the log as JSON: a line that does not parse fails the test."""
    return [json.loads(line) for line in stderr.splitlines()]


def test_json_lines_at_debug_carry_the_fields_and_no_chat_text(tmp_path):
    result = chat(tmp_path, 'level = "DEBUG"\nformat = "json"\n')
    lines = json_lines(result.stderr)
    assert lines
    for line in lines:
        assert {"time", "level", "logger", "event"} <= set(line), line
        assert line["time"].endswith("Z") and "T" in line["time"]
    answered = [line for line in lines if line["event"] == "answered"]
    assert len(answered) == len(USER_TEXTS)
    ids = set()
    for line in answered:
        assert line["level"] == "INFO" and line["logger"] == "botkit.pipeline"
        assert (line["platform"], line["conversation"], line["status"]) == (
            "console",
            "console:general",
            "completed",
        )
        assert line["latency_s"] >= 0 and line["prompt_tokens"] > 0 and line["completion_tokens"] > 0
        ids.add(line["message_id"])
    assert len(ids) == len(USER_TEXTS)
    for canary in CANARIES:
        assert canary not in result.stderr
    # Other libraries stay at WARNING: aiosqlite alone would write hundreds of lines here.
    assert [line for line in lines if not line["logger"].startswith("botkit")] == []


@pytest.mark.parametrize("include_text", [False, True])
def test_a_library_asked_for_at_debug_logs_and_its_chat_text_is_withheld_unless_included(
    tmp_path, include_text
):
    result = chat(
        tmp_path,
        f"""
        level = "INFO"
        format = "json"
        include_text = {str(include_text).lower()}
        loggers = {{ aiosqlite = "debug" }}
        """,
    )
    lines = json_lines(result.stderr)
    assert [line for line in lines if line["logger"] == "aiosqlite" and line["level"] == "DEBUG"]
    assert not [line for line in lines if line["logger"] == "botkit.pipeline" and line["level"] == "DEBUG"]
    for canary in CANARIES:
        # aiosqlite logs each statement with its parameters: the messages and replies stored.
        assert (canary in result.stderr) is include_text


def test_text_format_is_time_level_logger_message(tmp_path):
    result = chat(tmp_path, 'level = "INFO"\n')
    answered = [line for line in result.stderr.splitlines() if " INFO botkit.pipeline: answered " in line]
    assert len(answered) == len(USER_TEXTS)
    assert "completed in" in answered[0] and "prompt +" in answered[0]
    for canary in CANARIES:
        assert canary not in result.stderr


@pytest.mark.parametrize(
    "table, told",
    [
        ('format = "xml"', "[logging] format: Input should be 'text' or 'json' (got 'xml')"),
        (
            'level = "LOUD"',
            "[logging] level: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR' (got 'LOUD')",
        ),
        (
            'loggers = { aiosqlite = "chatty" }',
            "[logging.loggers] aiosqlite: Input should be 'DEBUG', 'INFO'",
        ),
        ('loggers = { "no such logger" = "DEBUG" }', "'no such logger' is not a logger name"),
        ("include_text = 1", "[logging] include_text: Value error, must be true or false (got 1)"),
        ('colour = "yes"', "[logging] colour"),
    ],
)
def test_a_bad_logging_value_is_named(tmp_path, table, told):
    config = tmp_path / "config.toml"
    config.write_text(f"[logging]\n{table}\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "botkit", "config", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        timeout=60,
    )
    assert result.returncode == 2
    assert told in result.stderr, result.stderr


@pytest.mark.parametrize("include_text", [False, True])
async def test_slack_bolt_does_not_log_the_body_of_a_forged_request(
    make_bot, monkeypatch, capsys, configured_logging, include_text
):
    handler = configured_logging(
        level="INFO", format="json", include_text=include_text, loggers={"slack_bolt": "INFO"}
    )
    async with FakeSlack() as slack:
        monkeypatch.setenv("BOTKIT_ADAPTERS__SLACK__BOT_TOKEN", slack.bot_token)
        monkeypatch.setenv("BOTKIT_ADAPTERS__SLACK__SIGNING_SECRET", slack.signing_secret)
        async with start_slack(make_bot, slack, mode="http", host="127.0.0.1", port=0) as (_, adapter):
            forged = slack.mention("C1", USER_TEXTS[0])
            url = f"http://127.0.0.1:{adapter.http_port}/slack/events"
            status, _ = await slack.post_event(url, forged, secret="not-the-signing-secret")
            assert status == 401
    handler.flush()  # lines below WARNING are written a batch at a time
    lines = json_lines(capsys.readouterr().err)
    refused = [line for line in lines if "Invalid request signature detected" in line["event"]]
    assert len(refused) == 1 and refused[0]["logger"].startswith("slack_bolt"), lines
    assert "timestamp: " in refused[0]["event"]
    assert (CANARIES[0] in refused[0]["event"]) is include_text
    if not include_text:
        assert not [line for line in lines if CANARIES[0] in json.dumps(line)]


def record(name: str, level: int, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args or None, None)


def test_payload_arguments_are_withheld_and_numbers_kept():
    guard = TextGuard(include_text=False)
    # discord.py's HTTP client logs each request's JSON payload at DEBUG, so.
    line = record(
        "discord.http",
        logging.DEBUG,
        "%s %s with %s has returned %s",
        "POST",
        "/channels/1/messages",
        {"content": CANARIES[2]},
        200,
    )
    told = guard.message(line)
    assert CANARIES[2] not in told and told.endswith("has returned 200")
    gateway = record(
        "discord.gateway", logging.DEBUG, "For Shard ID %s: WebSocket Event: %s", 0, {"d": CANARIES[0]}
    )
    assert guard.message(gateway) == "For Shard ID 0: WebSocket Event: [withheld: include_text is off]"
    # A warning is a problem to see, and botkit's own lines carry no text to withhold.
    assert guard.message(record("discord.gateway", logging.WARNING, "Shard ID %s heartbeat blocked", 0)) == (
        "Shard ID 0 heartbeat blocked"
    )
    assert guard.message(record("botkit.pipeline", logging.DEBUG, "message %s", "abc")) == "message abc"
    assert TextGuard(include_text=True).message(gateway).endswith(str({"d": CANARIES[0]}))


def test_a_payload_line_built_without_arguments_is_withheld_whole():
    guard = TextGuard(include_text=False)
    sent = record(
        "slack_sdk.web.async_base_client",
        logging.DEBUG,
        f"Sending a request - url: POST https://slack.com/api/chat.postMessage, json: {{'text': '{CANARIES[2]}'}}",
    )
    assert guard.message(sent) == (
        "Sending a request - url: POST https://slack.com/api/chat.postMessage, [withheld: include_text is off]"
    )
    body = record("slack_bolt.AsyncApp", logging.INFO, f"request body: {{'text': '{CANARIES[0]}'}}")
    assert CANARIES[0] not in guard.message(body)


def test_an_exception_is_a_field_of_its_json_line(configured_logging, capsys):
    configured_logging(level="ERROR", format="json")
    try:
        raise RuntimeError("the database went away")
    except RuntimeError:
        logging.getLogger("botkit.test").exception("could not store %d rows", 3)
    (line,) = json_lines(capsys.readouterr().err)
    assert (line["level"], line["logger"], line["event"]) == (
        "ERROR",
        "botkit.test",
        "could not store 3 rows",
    )
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert line["exception"].endswith("RuntimeError: the database went away")


def test_lines_below_warning_are_written_by_the_writer_thread_and_a_warning_at_once(configured_logging, capsys):
    configured_logging(level="INFO", format="json")
    log = logging.getLogger("botkit.test")
    log.info("first %d", 1)
    # Nobody flushes: the writer thread writes the batch on its own, soon.
    seen: list[dict] = []
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline:
        seen = json_lines(capsys.readouterr().err)
        if not seen:
            threading.Event().wait(0.01)
    assert [line["event"] for line in seen] == ["first 1"]
    # A warning is written by the thread that logs it, before log.warning returns, after
    # the lines queued before it and in their order.
    log.info("second")
    log.info("third")
    log.warning("fourth")
    assert [line["event"] for line in json_lines(capsys.readouterr().err)] == ["second", "third", "fourth"]


@pytest.mark.parametrize(
    "created",
    [0.0, 1.9994999, 1.9995, 1.9999996, 1733520000.0005, 1733520000.9999996, 1733529599.999, 4102444800.5],
)
def test_json_time_is_utc_iso_8601_to_the_millisecond_as_datetime_writes_it(created):
    # The formatter reuses the text of the second it last wrote; rounding must still agree.
    from datetime import UTC, datetime

    from botkit.logs import JsonLineFormatter

    formatter = JsonLineFormatter(TextGuard(False))
    record = logging.LogRecord("botkit.test", logging.INFO, __file__, 1, "event", None, None)
    for moment in (created - 1.0, created):  # the second before is cached first
        record.created = moment
        expected = datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert json.loads(formatter.format(record))["time"] == expected


def test_a_line_queued_while_a_batch_is_formatted_is_written_by_the_writer_thread(configured_logging, capsys):
    handler = configured_logging(level="INFO", format="json")
    log = logging.getLogger("botkit.test")
    formatter = handler.formatter
    format_line = formatter.format

    def format_and_log_meanwhile(record: logging.LogRecord) -> str:
        if record.getMessage() == "first":
            log.info("queued while the first was formatted")  # as another thread may
        return format_line(record)

    formatter.format = format_and_log_meanwhile
    log.info("first")
    log.info("second")  # queued with the first, taken in the same batch after the line above
    # Nobody flushes: the writer thread writes all three, the last in a batch of its own.
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while len(seen) < 3 and time.monotonic() < deadline:
        seen += [line["event"] for line in json_lines(capsys.readouterr().err)]
        if len(seen) < 3:
            threading.Event().wait(0.01)
    assert seen == ["first", "second", "queued while the first was formatted"]


def test_a_forked_child_writes_its_lines_with_a_writer_thread_of_its_own(tmp_path):
    script = textwrap.dedent(
        """
        import logging, os, sys, time
        from botkit.logs import configure_logging
        from botkit.settings import LoggingSettings

        handler = configure_logging(LoggingSettings(level="INFO", format="json"))
        log = logging.getLogger("botkit.test")
        log.info("parent")  # starts the parent's writer thread
        handler.flush()
        log.info("queued in the parent")  # the parent's to write, not the child's
        pid = os.fork()
        if pid == 0:
            log.info("child")
            # Nobody flushes: the child's own writer thread writes the line.
            deadline = time.monotonic() + 30
            while handler._queued and time.monotonic() < deadline:
                time.sleep(0.01)
            os._exit(0 if not handler._queued else 3)
        _, status = os.waitpid(pid, 0)
        handler.flush()
        sys.exit(os.waitstatus_to_exitcode(status))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=clean_env(), timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert sorted(line["event"] for line in json_lines(result.stderr)) == ["child", "parent", "queued in the parent"]


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"platform": "slack", "message_id": 'a "quoted"\\ id\n', "latency_s": 0.25, "prompt_tokens": 12},
        {"user": "discord:ünïcødé ☃", "status": "completed", "first_token_s": 1e-07, "completion_tokens": 0},
        {"latency_s": float("nan"), "prompt_tokens": True, "backend": ["a", 1], "conversation": {"k": None}},
        {"latency_s": float("inf"), "completion_tokens": 10**30, "backend": Path("/x")},
        {"platform": 7, "status": "a number before a string", "first_token_s": -0.0},
        {"conversation": "100%s %d %%", "backend": "b", "latency_s": 2.5e-300, "completion_tokens": -3},
        {"prompt_tokens": 4, "completion_tokens": 5.0, "message_id": None, "platform": "console"},
    ],
)
@pytest.mark.parametrize(("logger", "event"), [("botkit.test", None), ("botkit.100%s", "answered %s")])
def test_a_json_line_is_what_json_writes_for_its_fields(fields, logger, event):
    from datetime import UTC, datetime

    from botkit.logs import EVENT_FIELD, JsonLineFormatter

    formatter = JsonLineFormatter(TextGuard(False))
    try:
        raise ValueError("broken\tline")
    except ValueError:
        exc_info = sys.exc_info()
    # Each record twice: the second is written from what the formatter kept of the first's shape.
    for exception in (None, None, exc_info, exc_info):
        record = logging.LogRecord(logger, logging.ERROR, __file__, 1, 'said "%s"', ("x\x00y",), exception)
        record.__dict__.update(fields)
        if event is not None:
            record.__dict__[EVENT_FIELD] = event
        expected = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": "ERROR",
            "logger": logger,
            "event": 'said "x\x00y"' if event is None else event,
            **{name: fields[name] for name in ("platform", "conversation", "message_id", "user", "backend",
                                               "status", "latency_s", "first_token_s", "prompt_tokens",
                                               "completion_tokens") if fields.get(name) is not None},
        }  # fmt: skip
        if exception:
            expected["exception"] = formatter.formatException(exception)
        assert formatter.format(record) == json.dumps(expected, ensure_ascii=False, default=str)
