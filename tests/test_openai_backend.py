"""The OpenAI-compatible HTTP backend: against llama-cpp-python's real server, and a scripted stub."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import threading
from collections.abc import Iterator

import pytest
from openai_server import CUT, DROP, Failure, LlamaCppServer, StubServer
from servers import free_port
from test_console_model import chat
from test_llamacpp import until_streaming

from botkit import Prompt, Reply, ReplyStatus, Role, Turn, hookimpl
from botkit.backends import openai_http
from botkit.backends.llamacpp import embedded_model_path
from botkit.backends.openai_http import OpenAIBackend, OpenAISettings, backoff_delay, retry_after_seconds
from botkit.errors import ConfigError, ModelLoadError
from botkit.pipeline import FAILED_REPLY
from botkit.plugin_discovery import BUILTIN_PLUGINS
from botkit.prompts import chat_messages
from botkit.settings import settings_from_mapping, validate_table
from botkit.testing import WAIT_TIMEOUT, eventually

FRANCE = "What is the capital of France?"
STORY = "Write a long story about a dragon."
SECRET = "sk-test-very-secret-0123456789"
# Until the backend is a built-in plugin, the tests load it as an extra one.
PLUGINS = {} if "openai" in BUILTIN_PLUGINS else {"openai": openai_http}


def openai_bot(base_url: str, **backend: object) -> dict:
    settings = {
        "type": "openai",
        "base_url": base_url,
        "model": "smollm2",
        "temperature": 0,
        "max_tokens": 32,
    }
    return {"backend": {**settings, **backend}}


def fast_retries(base_url: str, **backend: object) -> dict:
    quick = {"retries": 2, "retry_backoff": 0.05, "connect_timeout": 2, "read_timeout": 5}
    return openai_bot(base_url, **{**quick, **backend})


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Iterator[LlamaCppServer]:
    """``python -m llama_cpp.server`` on the embedded SmolLM2, for the whole module."""
    server = LlamaCppServer(embedded_model_path(), tmp_path_factory.mktemp("llama-server") / "server.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """The backend's waits before retries, recorded instead of waited (so no test sleeps)."""
    recorded: list[float] = []

    async def pause(self, seconds: float, cancel: threading.Event) -> bool:
        recorded.append(seconds)
        return not cancel.is_set()

    monkeypatch.setattr(OpenAIBackend, "pause", pause)
    return recorded


class RecordReplies:
    """A plugin keeping every finished ``Reply``: its token counts are what memory stores."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []

    @hookimpl
    def botkit_after_reply(self, reply):
        self.replies.append(reply)


def estimated_prompt_tokens(body: dict) -> int:
    """botkit's estimate for a chat request: four characters a token, plus each message's overhead."""
    messages = body["messages"]
    text = sum(len(message["content"]) for message in messages)
    return text // 4 + openai_http.MESSAGE_OVERHEAD_TOKENS * len(messages) + 1


# -- a real engine ---------------------------------------------------------------


@pytest.mark.model
async def test_bot_streams_a_chat_reply_from_a_real_server(make_bot, engine):
    async with make_bot(openai_bot(engine.base_url), plugins=PLUGINS) as bot:
        reply = await bot.chat.say(FRANCE)
        assert bot.backend.model_name == "smollm2"
    assert reply.status is ReplyStatus.COMPLETED
    assert len(reply.updates) > 1 and reply.updates[-1] == reply.final
    assert "Paris" in reply.final


@pytest.mark.model
async def test_bot_streams_from_the_completions_endpoint_with_alpaca(make_bot, engine):
    config = openai_bot(engine.base_url, endpoint="completions", prompt_format="alpaca")
    async with make_bot(config, plugins=PLUGINS) as bot:
        reply = await bot.chat.say(FRANCE)
    assert reply.status is ReplyStatus.COMPLETED
    assert len(reply.updates) > 1 and reply.final.strip()
    assert "### Instruction" not in reply.final  # the Alpaca stop strings were sent


@pytest.mark.model
async def test_stop_cancels_a_streaming_reply_and_the_next_one_works(make_bot, engine):
    async with make_bot(openai_bot(engine.base_url, max_tokens=400), plugins=PLUGINS) as bot:
        task, story = bot.chat.say_nowait(STORY, user="alice", channel="one")
        await until_streaming(story)
        stop = await asyncio.wait_for(bot.chat.say("/stop", user="alice", channel="one"), WAIT_TIMEOUT)
        await asyncio.wait_for(task, WAIT_TIMEOUT)
        after = await bot.chat.say(FRANCE, user="alice", channel="one")
    assert stop.texts == ["Stopped."]
    assert story.status is ReplyStatus.STOPPED and story.final.endswith("[stopped]")
    # Well short of the 400 tokens asked for; tokens made while /stop was on its way still show.
    assert len(story.updates) < 200
    assert after.status is ReplyStatus.COMPLETED and after.final.strip()


@pytest.mark.model
def test_botkit_chat_answers_through_the_server_by_config_alone(engine, tmp_path):
    (tmp_path / "config.toml").write_text(
        f'[backend]\ntype = "openai"\nbase_url = "{engine.base_url}"\nmodel = "smollm2"\n'
        "temperature = 0\nmax_tokens = 16\n",
        encoding="utf-8",
    )
    requests_before = engine.log.read_text(errors="replace").count("POST /v1/chat/completions")
    result = chat(tmp_path, f"{FRANCE}\n")
    assert result.returncode == 0, result.stderr
    # The answer came from the server, not from an in-process model.
    assert engine.log.read_text(errors="replace").count("POST /v1/chat/completions") == requests_before + 1
    replies = [line for line in result.stdout.splitlines() if line.startswith("botkit> ")]
    assert len(replies) == 1 and replies[0].removeprefix("botkit> ").strip(), result.stdout


async def test_the_backend_alone_streams_from_the_real_server(engine):
    backend = OpenAIBackend(OpenAISettings(base_url=engine.base_url, model="smollm2"))
    await backend.start()
    try:
        prompt = Prompt("Be brief.", [Turn(Role.USER, FRANCE)])
        params = dataclasses.replace(backend.settings.sampling(), max_tokens=8)
        chunks = [chunk.text async for chunk in backend.stream(prompt, params, threading.Event())]
    finally:
        await backend.close()
    assert len(chunks) > 1 and "".join(chunks).strip()


# -- a scripted stub: keys, retries, rate limits, failures ------------------------


async def test_the_api_key_from_the_environment_is_sent_as_bearer(make_bot, stub, monkeypatch):
    monkeypatch.setenv("BOTKIT_BACKEND__API_KEY", SECRET)
    async with make_bot(openai_bot(stub.base_url), plugins=PLUGINS) as bot:
        reply = await bot.chat.say("hi")
    assert reply.status is ReplyStatus.COMPLETED and reply.final == "Hello from the stub."
    [request] = stub.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["Authorization"] == f"Bearer {SECRET}"
    body = request.body
    assert body["stream"] is True and body["model"] == "smollm2" and body["max_tokens"] == 32
    assert body["messages"][-1] == {"role": "user", "content": "hi"}
    assert body["messages"][0]["role"] == "system"


async def test_no_key_sends_no_authorization_header(make_bot, stub):
    async with make_bot(
        openai_bot(stub.base_url, endpoint="completions", prompt_format="alpaca"), plugins=PLUGINS
    ) as bot:
        reply = await bot.chat.say("hi")
    assert reply.final == "Hello from the stub."
    [request] = stub.requests
    assert request.path == "/v1/completions" and "Authorization" not in request.headers
    assert "### Instruction:\nhi" in request.body["prompt"]
    assert "### Instruction:" in request.body["stop"]


async def test_completions_render_the_configured_chat_template(make_bot, stub):
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    config = openai_bot(stub.base_url, endpoint="completions", chat_template=template)
    async with make_bot({**config, "bot": {"system_prompt": "Be kind."}}, plugins=PLUGINS) as bot:
        reply = await bot.chat.say("hi")
    assert reply.final == "Hello from the stub."
    [request] = stub.requests
    assert request.body["prompt"] == "<system>Be kind.<user>hi<assistant>"
    assert "stop" not in request.body


async def test_503_twice_then_ok_is_retried_after_jittered_waits(make_bot, stub, waits):
    stub.script.extend([Failure(503), Failure(503)])
    async with make_bot(fast_retries(stub.base_url, retry_backoff=2.0), plugins=PLUGINS) as bot:
        bot.backend.jitter = random.Random(15)
        reply = await bot.chat.say("hi")
    assert reply.status is ReplyStatus.COMPLETED and reply.final == "Hello from the stub."
    assert len(stub.requests) == 3
    # Full jitter: each wait is drawn from [0, backoff * 2**attempt] with the backend's random source.
    seeded = random.Random(15)
    assert waits == [seeded.uniform(0, 2.0), seeded.uniform(0, 4.0)]
    assert 0 <= waits[0] <= 2.0 and 0 <= waits[1] <= 4.0


def test_backoff_delays_vary_within_their_doubling_bounds():
    draw = random.Random(2024)
    for attempt, bound in enumerate([0.5, 1.0, 2.0, 4.0]):
        delays = [backoff_delay(attempt, 0.5, draw) for _ in range(200)]
        assert all(0 <= delay <= bound for delay in delays)
        # Spread over the whole range, not one fixed wait: replicas do not retry in step.
        assert len(set(delays)) == 200
        assert min(delays) < bound * 0.1 and max(delays) > bound * 0.9
    assert backoff_delay(3, 0.0, draw) == 0.0


async def test_429_waits_out_retry_after_without_jitter(make_bot, stub, waits):
    stub.script.append(Failure(429, {"Retry-After": "1"}))
    async with make_bot(fast_retries(stub.base_url), plugins=PLUGINS) as bot:
        reply = await bot.chat.say("hi")
    assert reply.status is ReplyStatus.COMPLETED and reply.final == "Hello from the stub."
    assert len(stub.requests) == 2
    assert waits == [1.0]  # the server's Retry-After, as given


async def test_stop_ends_the_wait_for_a_retry(make_bot, stub, caplog):
    stub.script.append(Failure(429, {"Retry-After": "20"}))
    async with make_bot(fast_retries(stub.base_url), plugins=PLUGINS) as bot:
        task, waiting = bot.chat.say_nowait("hi", user="alice", channel="one")
        await eventually(lambda: "retrying in 20.0 s" in caplog.text, what="the wait for the retry")
        await bot.chat.say("/stop", user="alice", channel="one")
        await asyncio.wait_for(task, WAIT_TIMEOUT)
    # Stopped during the 20 s wait: no second request was made.
    assert waiting.status is ReplyStatus.STOPPED and len(stub.requests) == 1


async def test_429_longer_than_the_limit_fails_at_once(make_bot, stub):
    stub.script.append(Failure(429, {"Retry-After": "3600"}))
    async with make_bot(fast_retries(stub.base_url), plugins=PLUGINS) as bot:
        reply = await asyncio.wait_for(bot.chat.say("hi"), WAIT_TIMEOUT)  # not after 3600 s
    assert reply.status is ReplyStatus.FAILED and reply.final == FAILED_REPLY
    assert len(stub.requests) == 1


async def test_a_server_that_always_fails_gives_the_apology_then_recovers(
    make_bot, stub, monkeypatch, caplog
):
    stub.always = Failure(500, message="engine exploded")
    monkeypatch.setenv("BOTKIT_BACKEND__API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    async with make_bot(fast_retries(stub.base_url), plugins=PLUGINS) as bot:
        failed = await bot.chat.say("hi")
        stub.always = None
        after = await bot.chat.say("hi again")
    assert failed.status is ReplyStatus.FAILED and failed.final == FAILED_REPLY
    assert len(stub.requests) == 4  # three attempts, then the next message
    assert after.status is ReplyStatus.COMPLETED and after.final == "Hello from the stub."
    assert "HTTP 500: engine exploded" in caplog.text
    assert SECRET not in caplog.text


async def test_4xx_is_not_retried(make_bot, stub, caplog):
    stub.always = Failure(400, message="prompt too long")
    async with make_bot(fast_retries(stub.base_url), plugins=PLUGINS) as bot:
        reply = await bot.chat.say("hi")
        stub.always = None
        after = await bot.chat.say("hi again")
    assert reply.status is ReplyStatus.FAILED and "HTTP 400: prompt too long" in caplog.text
    # Asked once more without stream_options (a 400 may refuse the option), then given up.
    first, second, third = stub.requests
    assert "stream_options" in first.body and "stream_options" not in second.body
    # The request was at fault, not the option: the next one still asks for usage.
    assert after.status is ReplyStatus.COMPLETED and "stream_options" in third.body
    assert "refused stream_options" not in caplog.text


async def test_a_dropped_connection_is_retried(make_bot, stub):
    stub.script.append(DROP)
    async with make_bot(fast_retries(stub.base_url), plugins=PLUGINS) as bot:
        reply = await bot.chat.say("hi")
    assert reply.status is ReplyStatus.COMPLETED and reply.final == "Hello from the stub."
    assert len(stub.requests) == 2


async def test_a_stream_cut_short_is_not_passed_off_as_a_complete_reply(make_bot, stub, caplog):
    stub.script.append(("Half", " an", CUT))
    async with make_bot(fast_retries(stub.base_url), plugins=PLUGINS) as bot:
        reply = await bot.chat.say("hi")
    assert reply.status is ReplyStatus.FAILED
    assert reply.final.startswith("Half an") and FAILED_REPLY in reply.final
    assert "the stream ended before the reply was complete" in caplog.text
    assert len(stub.requests) == 1  # text had reached the user: a retry would repeat it


async def test_a_server_that_keeps_hanging_up_gives_the_apology(make_bot, stub):
    async with make_bot(fast_retries(stub.base_url), plugins=PLUGINS) as bot:
        stub.always = DROP
        failed = await bot.chat.say("hi")
    assert failed.status is ReplyStatus.FAILED and failed.final == FAILED_REPLY
    assert len(stub.requests) == 3


async def test_unreachable_server_at_start_names_the_config_key():
    url = f"http://127.0.0.1:{free_port()}/v1"
    backend = OpenAIBackend(OpenAISettings(base_url=url, api_key=SECRET, connect_timeout=1))
    with pytest.raises(ModelLoadError) as raised:
        await backend.start()
    message = str(raised.value)
    assert "[backend] base_url" in message and url in message
    assert SECRET not in message


async def test_cancel_stops_the_stream(stub):
    stub.default_reply = tuple(f"w{i} " for i in range(50))
    backend = OpenAIBackend(OpenAISettings(base_url=stub.base_url))
    await backend.start()
    cancel = threading.Event()
    got = []
    try:
        async for chunk in backend.stream(
            Prompt("", [Turn(Role.USER, "hi")]), backend.settings.sampling(), cancel
        ):
            got.append(chunk.text)
            if len(got) == 3:
                cancel.set()
    finally:
        await backend.close()
    assert got == ["w0 ", "w1 ", "w2 "]


async def test_cancel_is_noticed_while_the_server_holds_the_first_token(stub):
    stub.first_token.clear()
    backend = OpenAIBackend(OpenAISettings(base_url=stub.base_url))
    await backend.start()
    cancel = threading.Event()

    async def read() -> list:
        prompt = Prompt("", [Turn(Role.USER, "hi")])
        return [c async for c in backend.stream(prompt, backend.settings.sampling(), cancel)]

    try:
        reading = asyncio.ensure_future(read())
        assert await asyncio.to_thread(stub.holding.wait, WAIT_TIMEOUT), "the request never reached the stub"
        cancel.set()
        # The stream ends although the server still holds its first token.
        chunks = await asyncio.wait_for(reading, WAIT_TIMEOUT)
    finally:
        stub.first_token.set()
        await backend.close()
    assert chunks == []


async def test_stop_ends_a_reply_still_waiting_for_its_first_token(make_bot, stub):
    stub.first_token.clear()
    async with make_bot(openai_bot(stub.base_url), plugins=PLUGINS) as bot:
        task, waiting = bot.chat.say_nowait("hi", user="alice", channel="one")
        try:
            assert await asyncio.to_thread(stub.holding.wait, WAIT_TIMEOUT), "the request never reached the stub"
            stop = await bot.chat.say("/stop", user="alice", channel="one")
            await asyncio.wait_for(task, WAIT_TIMEOUT)  # while the server still holds the first token
        finally:
            stub.first_token.set()
    assert stop.texts == ["Stopped."]
    assert waiting.status is ReplyStatus.STOPPED


def test_an_api_key_in_the_config_file_is_refused():
    settings = settings_from_mapping({"backend": {"type": "openai", "api_key": SECRET}})
    with pytest.raises(ConfigError) as raised:
        validate_table(OpenAISettings, settings.backend, settings, ("backend",))
    assert "BOTKIT_BACKEND__API_KEY" in str(raised.value) and SECRET not in str(raised.value)


async def test_an_api_key_in_the_config_file_stops_the_bot(make_bot):
    with pytest.raises(ConfigError, match="BOTKIT_BACKEND__API_KEY"):
        async with make_bot({"backend": {"type": "openai", "api_key": SECRET}}, plugins=PLUGINS):
            pass


def test_the_endpoint_must_fit_the_prompt_format():
    with pytest.raises(ValueError, match="prompt_format = 'alpaca'"):
        OpenAISettings(endpoint="completions")
    with pytest.raises(ValueError, match="endpoint = 'completions'"):
        OpenAISettings(prompt_format="alpaca")
    assert OpenAISettings(endpoint="completions", chat_template="{{ messages }}").chat_template


def test_retry_after_reads_seconds_and_dates():
    assert retry_after_seconds("2") == 2.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


async def test_token_counts_are_an_estimate_from_the_messages():
    backend = OpenAIBackend(OpenAISettings())
    prompt = Prompt("x" * 40, [Turn(Role.USER, "y" * 80)])
    assert len(chat_messages(prompt)) == 2
    assert await backend.count_tokens(prompt) == 120 // 4 + 2 * openai_http.MESSAGE_OVERHEAD_TOKENS + 1
    assert await backend.count_text("z" * 40) == 11


# -- token usage -------------------------------------------------------------------


async def test_the_servers_token_usage_becomes_the_replys_counts(make_bot, stub):
    stub.usage = (123, 7)
    record = RecordReplies()
    async with make_bot(openai_bot(stub.base_url), plugins={**PLUGINS, "record": record}) as bot:
        reply = await bot.chat.say("hi")
    assert reply.final == "Hello from the stub."
    [request] = stub.requests
    assert request.body["stream_options"] == {"include_usage": True}
    [recorded] = record.replies
    assert (recorded.prompt_tokens, recorded.completion_tokens) == (123, 7)


async def test_usage_from_the_completions_endpoint_is_recorded_too(make_bot, stub):
    stub.usage = (40, 3)
    record = RecordReplies()
    config = openai_bot(stub.base_url, endpoint="completions", prompt_format="alpaca")
    async with make_bot(config, plugins={**PLUGINS, "record": record}) as bot:
        reply = await bot.chat.say("hi")
    assert reply.final == "Hello from the stub."
    [recorded] = record.replies
    assert (recorded.prompt_tokens, recorded.completion_tokens) == (40, 3)


async def test_a_server_without_usage_leaves_the_estimate(make_bot, stub):
    stub.reports_usage = False  # an older server: ignores stream_options, reports nothing
    record = RecordReplies()
    async with make_bot(openai_bot(stub.base_url), plugins={**PLUGINS, "record": record}) as bot:
        reply = await bot.chat.say("hi")
    assert reply.status is ReplyStatus.COMPLETED and reply.final == "Hello from the stub."
    [request] = stub.requests
    [recorded] = record.replies
    assert recorded.completion_tokens == 4  # one token per streamed delta
    assert recorded.prompt_tokens == estimated_prompt_tokens(request.body)


async def test_a_server_refusing_stream_options_is_asked_without_them_from_then_on(make_bot, stub, caplog):
    stub.refuses_stream_options = True
    record = RecordReplies()
    async with make_bot(fast_retries(stub.base_url), plugins={**PLUGINS, "record": record}) as bot:
        first = await bot.chat.say("hi")
        second = await bot.chat.say("hi again")
    assert first.status is second.status is ReplyStatus.COMPLETED
    assert first.final == second.final == "Hello from the stub."
    refused, retried, later = stub.requests
    assert "stream_options" in refused.body
    assert "stream_options" not in retried.body and "stream_options" not in later.body
    assert caplog.text.count("refused stream_options (HTTP 400)") == 1
    assert [reply.completion_tokens for reply in record.replies] == [4, 4]
    assert record.replies[1].prompt_tokens == estimated_prompt_tokens(later.body)
