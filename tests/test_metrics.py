"""Prometheus metrics and health checks as an operator meets them: scraped over HTTP, parsed as Prometheus does."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from botkit.errors import ConfigError
from botkit.metrics_server import MetricsServer
from botkit.settings import settings_from_mapping
from botkit.testing import MemoryChat, TestBot, eventually

ON = {"metrics": {"enabled": True, "listen": "127.0.0.1:0"}}


async def get(url: str, accept: str | None = None) -> tuple[int, str, str]:
    """GET ``url`` as a scraper does: status, content type, body."""

    def fetch() -> tuple[int, str, str]:
        request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.headers["Content-Type"], response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.headers["Content-Type"], error.read().decode()

    return await asyncio.to_thread(fetch)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


@asynccontextmanager
async def serving(bot: TestBot, adapters: tuple[str, ...] = ()) -> AsyncIterator[str]:
    """The bot's metrics listener, as ``botkit run`` starts it; yields its base URL."""
    server = MetricsServer(bot, adapters)
    await server.start()
    try:
        yield f"http://{server.url_host}"
    finally:
        await server.close()


async def scrape(base: str) -> dict:
    status, content_type, body = await get(base + "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    return samples(body)


async def test_counters_and_histograms_move_by_exactly_what_was_sent(make_bot):
    async with make_bot(ON) as bot, serving(bot) as base:
        before = await scrape(base)
        bot.backend.add_reply("one ", "two")  # two chunks of one token each
        bot.backend.say("three")
        await bot.chat.say("hello", user="alice-4711", channel="secret-channel-99")
        await bot.chat.say("again", user="bob-0815", channel="other-channel-42")
        await bot.chat.say("/help")
        await bot.chat.say("x" * (bot.settings.bot.max_message_chars + 1))
        after = await scrape(base)

    assert value(before, "botkit_messages_received_total", platform="test") == 0
    assert value(after, "botkit_messages_received_total", platform="test") == 4
    assert value(after, "botkit_messages_answered_total", platform="test", status="completed") == 2
    assert value(after, "botkit_commands_total", platform="test", command="help") == 1
    assert value(after, "botkit_messages_refused_total", platform="test", reason="too_long") == 1
    for histogram in ("queue_wait", "time_to_first_token", "generation_duration"):
        assert value(after, f"botkit_{histogram}_seconds_count", backend="default") == 2
        assert value(after, f"botkit_{histogram}_seconds_bucket", backend="default", le="+Inf") == 2
    assert value(after, "botkit_tokens_generated_total", backend="default") == 3
    assert (
        value(after, "botkit_backend_info", backend="default", type="scripted", model="scripted", lora="")
        == 1
    )
    assert value(after, "botkit_queue_length", backend="default") == 0
    # Bounded labels: no user or channel ids unless [metrics] per_channel.
    label_values = {v for _, labels in after for _, v in labels}
    assert not {v for v in label_values if "4711" in v or "0815" in v or "channel" in v}


def exposed_like_prometheus_client(operate) -> tuple[dict, dict]:
    """The samples of the same operations on botkit's instruments and on prometheus-client's own."""
    import prometheus_client
    from prometheus_client import generate_latest

    from botkit.metrics import PrometheusMetrics

    ours = PrometheusMetrics("0")
    theirs = prometheus_client.CollectorRegistry()
    made = {
        "counter": lambda name, labels: prometheus_client.Counter(name, "doc", labels, registry=theirs),
        "gauge": lambda name, labels: prometheus_client.Gauge(name, "doc", labels, registry=theirs),
        "histogram": lambda name, labels: prometheus_client.Histogram(
            name, "doc", labels, registry=theirs, buckets=(0.1, 1.0, 10.0)
        ),
    }
    operate(
        lambda kind, name, labels=(): (
            ours.histogram(name, "doc", labels, buckets=(0.1, 1.0, 10.0))
            if kind == "histogram"
            else getattr(ours, kind)(name, "doc", labels)
        ),
    )
    operate(lambda kind, name, labels=(): made[kind](name.removesuffix("_total"), labels))

    def without_created(text: str) -> dict:
        return {key: value for key, value in samples(text).items() if not key[0].endswith("_created")}

    ours_text = ours.exposition()[0].decode()
    assert "botkit_build_info" in ours_text
    ours_samples = {k: v for k, v in without_created(ours_text).items() if not k[0].startswith("botkit_")}
    return ours_samples, without_created(generate_latest(theirs).decode())


def test_instruments_expose_what_prometheus_clients_own_would_for_the_same_updates():
    def operate(make) -> None:
        sent = make("counter", "sent_total", ("platform",))
        sent.labels("slack").inc()
        sent.labels(platform="slack").inc(2.5)
        sent.labels("discord").inc()
        make("counter", "plain_total").inc(3)
        depth = make("gauge", "depth", ("queue",))
        depth.labels("a").set(7)
        depth.labels("a").inc(-2)
        depth.labels("b").inc()
        waiting = [1, 2]
        queued = make("gauge", "queued", ("writer",))
        queued.labels("memory").set(9)
        queued.labels("memory").set_function(lambda: len(waiting))  # read at the scrape, whatever was set
        queued.labels("memory").set(11)
        waiting.append(3)
        make("gauge", "plain_depth").set_function(lambda: 4)
        took = make("histogram", "took_seconds", ("backend",))
        for seconds in (0.05, 0.1, 0.5, 1.0, 3.0, 99.0):
            took.labels("default").observe(seconds)
        make("histogram", "alone_seconds").observe(0.2)

    ours, theirs = exposed_like_prometheus_client(operate)
    assert ours == theirs
    assert ours[("queued", frozenset({("writer", "memory")}))] == 3
    assert ours[("took_seconds_bucket", frozenset({("backend", "default"), ("le", "0.1")}))] == 2  # le: <=
    assert ours[("took_seconds_sum", frozenset({("backend", "default")}))] == pytest.approx(103.65)


def test_instruments_refuse_what_prometheus_clients_refuse():
    from botkit.metrics import PrometheusMetrics

    metrics = PrometheusMetrics("0")
    sent = metrics.counter("sent_total", "doc", ("platform",))
    with pytest.raises(ValueError, match="only goes up"):
        sent.labels("slack").inc(-1)
    with pytest.raises(ValueError, match="use .labels"):
        sent.inc()
    with pytest.raises(ValueError, match="2 label values"):
        sent.labels("slack", "extra")
    with pytest.raises(ValueError, match="expected"):
        sent.labels(channel="c1")
    with pytest.raises(ValueError, match="invalid metric name"):
        metrics.gauge("bad-name", "doc")
    with pytest.raises(ValueError, match="invalid label name"):
        metrics.gauge("good", "doc", ("bad-label",))
    with pytest.raises(ValueError, match="already a counter"):
        metrics.gauge("sent_total", "doc", ("platform",))
    assert metrics.counter("sent_total", "doc", ("platform",)) is sent  # asked again: the same
    with pytest.raises(AttributeError, match="only a gauge"):
        sent.labels("slack").set_function(lambda: 1)
    with pytest.raises(AttributeError, match="observes values"):
        metrics.histogram("took_seconds", "doc").set_function(lambda: 1)

async def test_per_channel_labels_the_message_metrics_with_the_channel(make_bot):
    config = {"metrics": {**ON["metrics"], "per_channel": True}}
    async with make_bot(config) as bot, serving(bot) as base:
        await bot.chat.say("hello", channel="c1")
        await bot.chat.say("hello", channel="c1")
        await bot.chat.say("hello", channel="c2")
        scraped = await scrape(base)
    assert value(scraped, "botkit_messages_received_total", platform="test", channel="c1") == 2
    assert value(scraped, "botkit_messages_received_total", platform="test", channel="c2") == 1
    assert (
        value(scraped, "botkit_messages_answered_total", platform="test", channel="c2", status="completed")
        == 1
    )


async def test_a_refusal_is_counted_by_the_gate_plugin_that_refused(make_bot):
    config = {**ON, "plugins": {"ratelimit": {"per_user": "1/minute"}}}
    async with make_bot(config) as bot, serving(bot) as base:
        await bot.chat.say("first")
        refused = await bot.chat.say("second")
        scraped = await scrape(base)
    assert refused.final is None  # not answered
    assert value(scraped, "botkit_messages_refused_total", platform="test", reason="ratelimit") == 1
    assert value(scraped, "botkit_messages_answered_total", platform="test", status="completed") == 1


async def test_errors_are_counted_by_logger_and_type(make_bot):
    async with make_bot(ON) as bot, serving(bot) as base:
        bot.backend.add_reply(RuntimeError("the model broke"))
        reply = await bot.chat.say("hello")
        scraped = await scrape(base)
    assert value(scraped, "botkit_messages_answered_total", platform="test", status="failed") == 1
    assert value(scraped, "botkit_errors_total", logger="botkit.pipeline", type="RuntimeError") == 1
    assert reply.status is not None


async def test_openmetrics_when_the_scraper_asks_for_it(make_bot):
    async with make_bot(ON) as bot, serving(bot) as base:
        await bot.chat.say("hello")
        status, content_type, body = await get(base + "/metrics", accept="application/openmetrics-text")
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")
    assert "botkit_messages_received_total" in body


async def test_healthz_and_unknown_paths(make_bot):
    async with make_bot(ON) as bot, serving(bot) as base:
        assert (await get(base + "/healthz"))[:2] == (200, "application/json")
        status, _, body = await get(base + "/nope")
    assert status == 404 and "/metrics, /healthz, /readyz" in body


@contextmanager
def sqlite_locked(path: Path):
    """Another process holds the write lock: the bot cannot write."""
    blocker = sqlite3.connect(path, timeout=0, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


async def readyz(base: str) -> tuple[int, dict]:
    status, content_type, body = await get(base + "/readyz")
    assert content_type == "application/json"
    return status, json.loads(body)


async def test_readyz_is_503_until_the_model_is_loaded_and_while_the_database_is_unreachable(tmp_path):
    settings = settings_from_mapping(
        {**ON, "backend": {"type": "scripted"}, "storage": {"data_dir": str(tmp_path), "busy_timeout": 0.1}}
    )
    bot = TestBot.load(settings)
    bot.chat = MemoryChat(bot)
    async with serving(bot) as base:
        status, report = await readyz(base)
        assert status == 503 and report["ready"] is False
        assert report["checks"]["model"] == {"ok": False, "detail": "not loaded yet"}
        await bot.start()
        try:
            status, report = await readyz(base)
            assert status == 200 and report == {
                "ready": True,
                "checks": {
                    "model": {"ok": True, "detail": "loaded"},
                    "database": {"ok": True, "detail": "reachable"},
                },
            }
            assert bot.db.sqlite_path is not None
            with sqlite_locked(bot.db.sqlite_path):
                status, report = await readyz(base)
            assert status == 503 and report["checks"]["database"]["ok"] is False
            assert "locked" in report["checks"]["database"]["detail"]
            assert (await readyz(base))[0] == 200
        finally:
            await bot.stop()


async def test_readyz_waits_for_each_adapter_to_connect(make_bot):
    async with make_bot(ON) as bot, serving(bot, adapters=("console",)) as base:
        status, report = await readyz(base)
        assert status == 503
        assert report["checks"]["adapter:console"] == {"ok": False, "detail": "not started yet"}
        bot.make_adapter("console")
        status, report = await readyz(base)
    assert status == 200 and report["checks"]["adapter:console"]["ok"] is True


async def test_a_port_in_use_is_a_start_up_error_naming_the_key(make_bot):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with make_bot({"metrics": {"enabled": True, "listen": f"127.0.0.1:{port}"}}) as bot:
            with pytest.raises(ConfigError, match=rf"\[metrics\] listen: 127.0.0.1:{port} is in use"):
                await MetricsServer(bot, ()).start()


@pytest.mark.parametrize("listen", ["9464", "localhost", "host:port", ":9464", "127.0.0.1:70000"])
def test_a_listen_address_that_is_not_host_and_port_is_refused(listen):
    with pytest.raises(ConfigError, match=r"\[metrics\] listen: .*expected host:port"):
        settings_from_mapping({"metrics": {"listen": listen}})


def test_metrics_off_import_nothing_of_prometheus_client(tmp_path):
    code = textwrap.dedent(
        f"""
        import asyncio, sys
        from botkit.bot import Bot
        from botkit.settings import settings_from_mapping
        settings = settings_from_mapping({{"backend": {{"type": "scripted"}}, "storage": {{"data_dir": {str(tmp_path)!r}}}}})
        bot = Bot.load(settings)
        async def main():
            await bot.start()
            await bot.stop()
        asyncio.run(main())
        assert bot.metrics.enabled is False
        print(sorted(name for name in sys.modules if name.startswith("prometheus_client")))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def botkit(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "botkit", *args], capture_output=True, text=True, timeout=timeout
    )


async def test_botkit_run_serves_metrics_and_botkit_status_reads_them(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(
        textwrap.dedent(
            """
            [bot]
            control_socket = "c.sock"
            [backend]
            type = "scripted"
            default_reply = "scripted answer"
            [storage]
            data_dir = "data"
            [metrics]
            enabled = true
            listen = "127.0.0.1:0"
            """
        ),
        encoding="utf-8",
    )
    bot = subprocess.Popen(
        [sys.executable, "-m", "botkit", "--config", str(config), "run"],  # the console adapter alone
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert bot.stdin is not None and bot.stdout is not None
    try:
        # `botkit status` exits 0 once the bot answers and is ready.
        await eventually(
            lambda: asyncio.to_thread(lambda: botkit("--config", str(config), "status").returncode == 0),
            timeout=60,
            what="botkit status says ready",
        )
        shown = botkit("--config", str(config), "status").stdout
        assert (
            "ready" in shown and "model: ok (loaded)" in shown and "adapter:console: ok (connected)" in shown
        )
        url = next(line.split("metrics: ", 1)[1] for line in shown.splitlines() if "metrics: http" in line)
        bot.stdin.write("hello\n")
        bot.stdin.flush()
        assert "scripted answer" in await asyncio.to_thread(bot.stdout.readline)
        status, _, body = await get(url)
        assert status == 200
        assert value(samples(body), "botkit_messages_received_total", platform="console") == 1
        assert (await get(url.removesuffix("/metrics") + "/readyz"))[0] == 200
        printed = botkit("--config", str(config), "status", "--metrics")
        assert printed.returncode == 0, printed.stderr
        assert (
            value(
                samples(printed.stdout),
                "botkit_messages_answered_total",
                platform="console",
                status="completed",
            )
            == 1
        )
    finally:
        bot.stdin.close()
        code = bot.wait(timeout=60)
    assert code == 0, bot.stderr.read() if bot.stderr else ""


async def test_status_metrics_of_a_bot_with_metrics_off_says_how_to_turn_them_on(tmp_path):
    from botkit.bot import Bot
    from botkit.control import ControlServer
    from botkit.settings import load_settings

    config = tmp_path / "config.toml"
    config.write_text(
        '[bot]\ncontrol_socket = "c.sock"\n[backend]\ntype = "scripted"\n[storage]\ndata_dir = "d"\n'
    )
    bot = Bot.load(load_settings(config))
    control = ControlServer(bot)
    await control.open()
    await bot.start()
    await control.start_serving()
    try:
        result = await asyncio.to_thread(botkit, "--config", str(config), "status", "--metrics")
    finally:
        await control.close()
        await bot.stop()
    assert result.returncode == 1
    assert "metrics are off: set [metrics] enabled = true" in result.stderr


async def test_moderation_decisions_are_counted_by_direction_category_and_action(make_bot):
    config = {**ON, "plugins": {"moderation": {"blocklist": ["forbidden"]}}}
    async with make_bot(config) as bot, serving(bot) as base:
        bot.backend.say("write to me at someone@example.com")
        await bot.chat.say("my address is alice@example.com, or ali@example.org")
        blocked = await bot.chat.say("a forbidden word")
        scraped = await scrape(base)
    assert blocked.final is None
    decisions = "botkit_moderation_decisions_total"
    assert value(scraped, decisions, direction="in", category="email", action="redact") == 2
    assert value(scraped, decisions, direction="in", category="blocklist", action="block") == 1
    assert value(scraped, decisions, direction="out", category="email", action="redact") == 1
    assert value(scraped, "botkit_messages_refused_total", platform="test", reason="moderation") == 1


async def test_rate_limit_refusals_are_counted_by_scope(make_bot):
    config = {**ON, "plugins": {"ratelimit": {"per_channel": "2/minute", "per_user": "10/minute"}}}
    async with make_bot(config) as bot, serving(bot) as base:
        for user in ("ann", "ben", "cat"):
            await bot.chat.say("hello", user=user, channel="busy")
        scraped = await scrape(base)
    assert value(scraped, "botkit_ratelimit_refusals_total", scope="channel") == 1
    assert value(scraped, "botkit_ratelimit_refusals_total", scope="user") == 0


async def test_database_writes_are_timed_and_an_outage_shows_in_the_spool_and_retries(make_bot, tmp_path):
    from botkit.plugins.memory import STORE

    config = {**ON, "storage": {"data_dir": str(tmp_path), "busy_timeout": 0.1}}
    async with make_bot(config) as bot, serving(bot) as base:
        store = bot.state.require(STORE)
        await bot.chat.say("hello")
        assert await store.writer.flush(30)
        scraped = await scrape(base)
        assert value(scraped, "botkit_database_write_seconds_count", writer="memory") >= 1
        assert value(scraped, "botkit_spool_records", writer="memory") == 0
        assert bot.db.sqlite_path is not None
        with sqlite_locked(bot.db.sqlite_path):
            await bot.chat.say("during the outage")
            await eventually(lambda: store.writer.outage, what="the writer meets the outage")
            scraped = await scrape(base)
        assert value(scraped, "botkit_spool_records", writer="memory") >= 1
        assert value(scraped, "botkit_write_queue_length", writer="memory") >= 1
        assert value(scraped, "botkit_database_write_retries_total", writer="memory") >= 1
        assert await store.writer.flush(30)
        scraped = await scrape(base)
    assert value(scraped, "botkit_spool_records", writer="memory") == 0
    assert value(scraped, "botkit_write_queue_length", writer="memory") == 0
