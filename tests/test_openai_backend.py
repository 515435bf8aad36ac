"""The OpenAI-compatible HTTP backend: against llama-cpp-python's real server, and a scripted stub."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Iterator

import pytest
from openai_server import CUT, DROP, Failure, LlamaCppServer, StubServer
from servers import free_port
from test_console_model import chat
from test_llamacpp import until_streaming

from botkit import Prompt, ReplyStatus, Role, Turn
from botkit.backends import openai_http
from botkit.backends.llamacpp import embedded_model_path
from botkit.backends.openai_http import OpenAIBackend, OpenAISettings, retry_after_seconds
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
    return openai_bot(base_url, retries=2, retry_backoff=0.05, connect_timeout=2, read_timeout=5, **backend)


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


async def test_503_twice_then_ok_is_retried_and_answers(make_bot, stub):
    stub.script.extend([Failure(503), Failure(503)])
    async with make_bot(fast_retries(stub.base_url), plugins=PLUGINS) as bot:
        reply = await bot.chat.say("hi")
    assert reply.status is ReplyStatus.COMPLETED and reply.final == "Hello from the stub."
    assert len(stub.requests) == 3


async def test_429_waits_out_retry_after(make_bot, stub):
    stub.script.append(Failure(429, {"Retry-After": "1"}))
    async with make_bot(fast_retries(stub.base_url), plugins=PLUGINS) as bot:
        reply = await bot.chat.say("hi")
    assert reply.status is ReplyStatus.COMPLETED and reply.final == "Hello from the stub."
    first, second = stub.requests
    assert second.at - first.at >= 0.95


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


async def test_4xx_is_not_retried(make_bot, stub):
    stub.script.append(Failure(400, message="prompt too long"))
    async with make_bot(fast_retries(stub.base_url), plugins=PLUGINS) as bot:
        reply = await bot.chat.say("hi")
    assert reply.status is ReplyStatus.FAILED and len(stub.requests) == 1


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
