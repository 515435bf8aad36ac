"""deploy/grafana/botkit.json asks only for metrics, and labels, that a running bot exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fake_slack import FakeSlack, start_slack
from openai_server import Failure, StubServer
from prometheus_client.parser import text_string_to_metric_families
from test_metrics import ON, get, serving
from test_openai_backend import PLUGINS, fast_retries

from botkit.backend import EngineLoad

DASHBOARD_PATH = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "botkit.json"

# PromQL's words that are not metric names. Anything else followed by "(" must be a function named here.
PROMQL_FUNCTIONS = {
    "abs",
    "absent",
    "absent_over_time",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count_over_time",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_quantile",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log2",
    "log10",
    "max_over_time",
    "min_over_time",
    "predict_linear",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sort",
    "sort_desc",
    "sqrt",
    "sum_over_time",
    "time",
    "timestamp",
    "vector",
}
AGGREGATIONS = {
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
}
KEYWORDS = {"bool", "and", "or", "unless", "offset", "inf", "nan"}
# Clauses whose parenthesised list names labels, not series.
LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*\"(?:[^\"\\]|\\.)*\"")


def references(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """The series an expression reads, each with the labels its selector matches on, and its grouping labels.

    ``sum by (backend, le) (rate(botkit_queue_wait_seconds_bucket{backend="x"}[5m]))`` gives
    ``({"botkit_queue_wait_seconds_bucket": {"backend"}}, {"backend", "le"})``.
    """
    series: dict[str, set[str]] = {}
    grouping: set[str] = set()

    def label_list(match: re.Match[str]) -> str:
        grouping.update(name.strip() for name in match.group(2).split(",") if name.strip())
        return " "

    def selector(match: re.Match[str]) -> str:
        matched = {name for name, _ in MATCHER.findall(match.group(2))}
        leftover = MATCHER.sub("", match.group(2)).replace(",", "").strip()
        assert not leftover, f"{expr!r}: cannot read the label matchers {match.group(2)!r}"
        name, before = match.group(1), " "
        if name is None or name.lower() in KEYWORDS:  # {__name__="..."}: the name is a matcher
            before = f" {name or ''} "
            name = re.search(r'__name__\s*=\s*"([^"]+)"', match.group(2)).group(1)  # type: ignore[union-attr]
        series.setdefault(name, set()).update(matched - {"__name__"})
        return before

    text = re.sub(r"\[[^\]]*\]", " ", expr)  # range and subquery durations ([5m], [$__rate_interval])
    text = LABEL_LISTS.sub(label_list, text)
    text = SELECTOR.sub(selector, text)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', " ", text)  # strings left: label_replace's arguments
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables outside ranges
    text = re.sub(r"\b\d+(\.\d+)?([eE][-+]?\d+)?\b", " ", text)  # numbers
    for match in IDENTIFIER.finditer(text):
        word = match.group(0)
        called = text[match.end() :].lstrip().startswith("(")
        if called:
            assert word in PROMQL_FUNCTIONS | AGGREGATIONS, f"{expr!r}: {word}() is not a PromQL function"
        elif word.lower() not in KEYWORDS and word not in AGGREGATIONS:
            series.setdefault(word, set())
    return series, grouping


def test_references_reads_names_labels_and_grouping():
    expr = (
        'histogram_quantile(0.95, sum by (backend, le) (rate(botkit_queue_wait_seconds_bucket{backend!="x"}[5m])))'
        " / on (backend) sum(rate(botkit_tokens_generated_total[$__rate_interval])) without (platform)"
        ' > bool 0 or {__name__="botkit_uptime_seconds", job=~"bot.*"}'
    )
    assert references(expr) == (
        {
            "botkit_queue_wait_seconds_bucket": {"backend"},
            "botkit_tokens_generated_total": set(),
            "botkit_uptime_seconds": {"job"},
        },
        {"backend", "le", "platform"},
    )
    with pytest.raises(AssertionError, match=r"sun\(\) is not a PromQL function"):
        references("sun(rate(botkit_uptime_seconds[5m]))")


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of every panel, rows' panels included."""
    dashboard = json.loads(DASHBOARD_PATH.read_text(encoding="utf-8"))
    queries = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                queries.append((panel["title"], target["expr"]))

    walk(dashboard["panels"])
    return queries


def test_the_dashboard_imports_anywhere():
    dashboard = json.loads(DASHBOARD_PATH.read_text(encoding="utf-8"))
    assert dashboard["schemaVersion"] >= 39 and dashboard["uid"] == "botkit"
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    source = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == source, panel["title"]
            assert all(target["datasource"] == source for target in panel["targets"]), panel["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert len(dashboard_queries()) >= 20


async def exported(make_bot) -> dict[str, set[str]]:
    """Every family and sample name a bot's /metrics serves, with the labels seen on it.

    The bot answers (during a canary), refuses (too long, rate limit, moderation), runs a command,
    fails once and writes to its database, and its backend reports an engine, so that every
    labelled series the dashboard reads has samples.
    """
    config = {
        **ON,
        # Two adapters the backend can apply per request: a canary runs, and its replies carry their arm.
        "backend": {"type": "scripted", "loras": {"v1": "adapters/v1.gguf", "v2": "adapters/v2.gguf"}},
        "plugins": {
            "ratelimit": {"per_user": "4/minute"},
            "moderation": {"blocklist": ["forbidden"]},
        },
    }
    async with make_bot(config) as bot, serving(bot) as base:
        from botkit.plugins.memory import STORE

        engine = EngineLoad(
            slots=4,
            slots_in_use=1,
            kv_cache_mb=1.5,
            kv_cache_limit_mb=64,
            kv_saved=1,
            evictions=0,
            reused_tokens=0,
            evaluated_tokens=0,
        )
        bot.backend.load = lambda: engine  # the scripted backend reports no engine of its own
        await bot.start_canary("default", "v2", 50)
        bot.backend.say("write to me at someone@example.com")
        await bot.chat.say("my address is alice@example.com")
        bot.backend.add_reply(RuntimeError("the model broke"))
        await bot.chat.say("hello")
        await bot.chat.say("/help")
        await bot.chat.say("a forbidden word")
        await bot.chat.say("x" * (bot.settings.bot.max_message_chars + 1))
        await bot.chat.say("one too many")
        assert await bot.state.require(STORE).writer.flush(30)
        status, _, body = await get(base + "/metrics")
    assert status == 200
    return names_in(body)


async def exported_retries(make_bot, monkeypatch) -> dict[str, set[str]]:
    """What a bot on Slack and an openai backend exports once each has retried a request."""
    async with FakeSlack() as slack:
        monkeypatch.setenv("BOTKIT_ADAPTERS__SLACK__BOT_TOKEN", slack.bot_token)
        monkeypatch.setenv("BOTKIT_ADAPTERS__SLACK__APP_TOKEN", slack.app_token)
        return await retried_on(make_bot, slack)


async def retried_on(make_bot, slack: FakeSlack) -> dict[str, set[str]]:
    with StubServer() as stub:
        stub.script.append(Failure(429, {"Retry-After": "0"}))
        async with start_slack(
            make_bot, slack, config={**ON, **fast_retries(stub.base_url)}, plugins=PLUGINS
        ) as (
            bot,
            adapter,
        ):
            slack.fail_next("chat.postMessage", 429, retry_after=0)
            assert (await adapter.client.chat_postMessage(channel="C1", text="hello"))["ok"]
            await bot.chat.say("hi")
            async with serving(bot, ("slack",)) as base:
                status, _, body = await get(base + "/metrics")
    assert status == 200 and len(stub.requests) == 2
    return names_in(body)


def names_in(body: str) -> dict[str, set[str]]:
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(body):
        names.setdefault(family.name, set())  # declared, perhaps without samples yet
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
            names[family.name].update(sample.labels)
    return names


async def test_every_metric_and_label_the_dashboard_reads_is_exported(make_bot, monkeypatch):
    names = await exported(make_bot)
    assert names["botkit_ratelimit_refusals_total"] == {"scope"}  # the traffic above reached every path
    for name, labels in (await exported_retries(make_bot, monkeypatch)).items():
        names.setdefault(name, set()).update(labels)
    assert names["botkit_platform_retries_total"] == {"platform", "reason"}
    assert names["botkit_backend_retries_total"] == {"backend", "reason"}
    problems = []
    for title, expr in dashboard_queries():
        series, grouping = references(expr)
        assert series, f"{title}: {expr!r} reads no series"
        for name, matched in series.items():
            if name not in names:
                problems.append(f"{title}: {name} is not exported")
                continue
            # A grouping label must be on every series of the expression: each panel's
            # expressions aggregate or divide series that share it.
            for label in sorted((matched | grouping) - names[name]):
                problems.append(f"{title}: {name} has no label {label!r} (it has {sorted(names[name])})")
    assert problems == [], "\n".join(problems)
