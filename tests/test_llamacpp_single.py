"""``engine = "single"``: llama-cpp-python's Llama, one conversation at a time, still a full backend."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator

import pytest

from botkit import Prompt, Role, Turn
from botkit.backends.llamacpp import LlamaCppBackend, LlamaCppSettings, create_backend
from botkit.backends.llamacpp_single import SingleLlamaCppBackend
from botkit.bot import Bot
from botkit.settings import settings_from_mapping

pytestmark = pytest.mark.model

N_CTX = 512
SYSTEM = "You are a helpful assistant."
FRANCE = "What is the capital of France?"
STORY = "Write a long story about a dragon."


def ask(text: str) -> Prompt:
    return Prompt(SYSTEM, [Turn(Role.USER, text)])


def settings(**values: object) -> LlamaCppSettings:
    base: dict[str, object] = {"n_ctx": N_CTX, "temperature": 0, "seed": 1, "max_tokens": 32}
    return LlamaCppSettings(**(base | values))


async def generate(backend, prompt: Prompt, cancel: threading.Event | None = None, **params: object) -> list[str]:
    sampling = dataclasses.replace(backend.settings.sampling(), **params)
    return [chunk.text async for chunk in backend.stream(prompt, sampling, cancel or threading.Event())]


@pytest.fixture(scope="module")
def single() -> Iterator[SingleLlamaCppBackend]:
    backend = create_backend(settings(engine="single"))
    assert isinstance(backend, SingleLlamaCppBackend)
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.close())


@pytest.fixture(scope="module")
def batched() -> Iterator[LlamaCppBackend]:
    backend = create_backend(settings(parallel=1, n_batch=64))
    assert isinstance(backend, LlamaCppBackend)
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.close())


def test_the_engine_key_chooses_the_backend_from_the_config():
    bot = Bot.load(settings_from_mapping({"backend": {"type": "llamacpp", "engine": "single"}}))
    assert bot.backend_settings.engine == "single"
    assert isinstance(bot.backend, SingleLlamaCppBackend)
    assert isinstance(Bot.load(settings_from_mapping({})).backend, LlamaCppBackend)
    assert isinstance(create_backend(settings()), LlamaCppBackend)


def test_single_runs_one_generation_at_a_time_and_reports_no_engine_load(single):
    assert single.concurrency == 1
    assert single.load() is None
    assert single.context_window == N_CTX


async def test_single_answers_the_question(single):
    text = "".join(await generate(single, ask(FRANCE)))
    assert "Paris" in text


def test_single_takes_flash_attention_and_the_cache_type_as_the_batched_engine_does(single):
    import llama_cpp

    context = single._llama.context_params
    bf16 = 30  # ggml.h's GGML_TYPE_BF16: the default with flash attention
    assert (context.type_k, context.type_v) == (bf16, bf16)
    assert context.flash_attn_type != llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED


async def test_single_and_batched_count_the_same_tokens(single, batched):
    prompt = Prompt(SYSTEM, [Turn(Role.USER, "Hi"), Turn(Role.ASSISTANT, "Hello!"), Turn(Role.USER, FRANCE)])
    assert single.render(prompt) == batched.render(prompt)
    assert await single.count_tokens(prompt) == await batched.count_tokens(prompt)
    assert single.tokenize(single.render(prompt)) == batched.tokenize(batched.render(prompt))


async def test_single_stops_at_a_stop_string(single):
    free = "".join(await generate(single, ask(STORY)))
    # Stop at a word the free reply uses: the stopped reply ends right before it.
    word = free.split()[3]
    stopped = "".join(await generate(single, ask(STORY), stop=[word]))
    assert word not in stopped
    assert free.startswith(stopped)


async def test_single_stops_when_cancelled(single):
    cancel = threading.Event()
    chunks: list[str] = []
    async for chunk in single.stream(ask(STORY), dataclasses.replace(single.settings.sampling(), max_tokens=200), cancel):
        chunks.append(chunk.text)
        if len(chunks) == 3:
            cancel.set()
    assert 3 <= len(chunks) < 200
