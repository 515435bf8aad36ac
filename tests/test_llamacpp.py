"""The default llama.cpp backend on the real embedded SmolLM2 model, alone and behind the full bot."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator

import pytest

from botkit import Chunk, Prompt, Reply, ReplyStatus, Role, Turn, hookimpl
from botkit.backends.llamacpp import LlamaCppBackend, LlamaCppSettings, embedded_model_path
from botkit.errors import ModelLoadError
from botkit.testing import WAIT_TIMEOUT, eventually

N_CTX = 512
SYSTEM = "You are a helpful assistant."
FRANCE = "What is the capital of France?"
# Long enough that SmolLM2 keeps writing until max_tokens: a test that stops it
# early would otherwise pass because the model had finished anyway.
STORY = "Write a long story about a dragon."
LLAMA_BOT = {"backend": {"type": "llamacpp", "temperature": 0, "seed": 1, "max_tokens": 48}}


def ask(text: str, system: str = SYSTEM) -> Prompt:
    return Prompt(system, [Turn(Role.USER, text)])


def generated(backend: LlamaCppBackend) -> int:
    """How many tokens the engine has generated since it started: the model's own work,
    however far the streams were read."""
    assert backend._engine is not None
    return backend._engine.generated_tokens


async def until_idle(backend: LlamaCppBackend) -> None:
    """Wait until no sequence of the engine is generating."""
    await eventually(lambda: backend.load().slots_in_use == 0, what="the engine to finish its sequences")


async def chunks_of(backend: LlamaCppBackend, prompt: Prompt, **params: object) -> list[Chunk]:
    """The streamed chunks of one whole generation, with ``params`` over the backend's sampling."""
    sampling = dataclasses.replace(backend.settings.sampling(), **params)
    return [chunk async for chunk in backend.stream(prompt, sampling, threading.Event())]


async def generate(backend: LlamaCppBackend, prompt: Prompt, **params: object) -> list[str]:
    """The streamed texts of one whole generation (a chunk without text, the mark of a reply cut at
    ``max_tokens``, left out). The engine hands a reader what a reply generated in the last
    ``POST_INTERVAL_S``, so a text may hold several tokens."""
    return [chunk.text for chunk in await chunks_of(backend, prompt, **params) if chunk.text]


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaCppBackend]:
    """The embedded model, loaded once for the module.

    The backend keeps nothing bound to an event loop (its worker is a thread), so
    it is started and closed on loops of their own and serves every test's loop.
    """
    backend = LlamaCppBackend(LlamaCppSettings(n_ctx=N_CTX, temperature=0, seed=1, max_tokens=48))
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.close())


# -- loading -------------------------------------------------------------------


@pytest.mark.model
def test_embedded_model_is_found_and_loads(llama):
    path = embedded_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert path.read_bytes()[:4] == b"GGUF"
    assert llama.model_path == path
    assert llama.model_name == "SmolLM2-135M-Instruct.Q4_1"
    assert llama.context_window == N_CTX


async def test_missing_model_file_names_the_path_and_the_setting(tmp_path):
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(ModelLoadError) as raised:
        await LlamaCppBackend(LlamaCppSettings(model_path=missing)).start()
    assert str(missing) in str(raised.value)
    assert "[backend] model_path" in str(raised.value)


async def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    text = tmp_path / "model.gguf"
    text.write_text("this is a text file, not a model\n")
    with pytest.raises(ModelLoadError) as raised:
        await LlamaCppBackend(LlamaCppSettings(model_path=text)).start()
    assert str(text) in str(raised.value) and "not a GGUF model file" in str(raised.value)


@pytest.mark.model
async def test_a_truncated_gguf_is_a_load_error_not_a_crash(tmp_path):
    truncated = tmp_path / "truncated.gguf"
    with embedded_model_path().open("rb") as model:
        truncated.write_bytes(model.read(64 * 1024))
    with pytest.raises(ModelLoadError) as raised:
        await LlamaCppBackend(LlamaCppSettings(model_path=truncated)).start()
    assert "llama.cpp could not load" in str(raised.value) and str(truncated) in str(raised.value)


@pytest.mark.model
async def test_an_invalid_chat_template_names_the_setting():
    backend = LlamaCppBackend(LlamaCppSettings(n_ctx=256, chat_template="{% for message in messages %}"))
    try:
        with pytest.raises(ModelLoadError) as raised:
            await backend.start()
    finally:
        await backend.close()
    assert "[backend] chat_template" in str(raised.value)


# -- prompt formats ------------------------------------------------------------


@pytest.mark.model
def test_chat_format_uses_the_models_own_chat_template(llama):
    assert llama.render(ask("Hi")) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # Only SmolLM2's own template (from the GGUF metadata) knows this default.
    assert llama.render(ask("Hi", system="")).startswith(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    )


@pytest.mark.model
async def test_alpaca_format_renders_the_stanford_template_and_answers():
    backend = LlamaCppBackend(
        LlamaCppSettings(prompt_format="alpaca", n_ctx=256, temperature=0, seed=1, max_tokens=24)
    )
    await backend.start()
    try:
        without_input = backend.render(ask("Name a colour.", system=""))
        with_input = backend.render(
            Prompt(
                "Answer briefly.",
                [Turn(Role.USER, "Hi", speaker="ann"), Turn(Role.USER, "Name a colour.")],
            )
        )
        answer = "".join(await generate(backend, ask("Name a colour.", system="")))
    finally:
        await backend.close()
    assert without_input == (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nName a colour.\n\n### Response:"
    )
    assert with_input == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nName a colour.\n\n### Input:\nAnswer briefly.\n\nann: Hi\n\n### Response:"
    )
    assert answer.strip() and "###" not in answer


# -- generation ----------------------------------------------------------------


@pytest.mark.model
async def test_streams_several_chunks_that_answer_the_question(llama):
    chunks = await generate(llama, ask(FRANCE))
    assert len(chunks) > 1  # the first text at once, not the whole answer at its end
    answer = "".join(chunks)
    assert answer.strip() and "Paris" in answer


@pytest.mark.model
async def test_fixed_seed_gives_the_same_answer_twice(llama):
    greedy = [await chunks_of(llama, ask(STORY), max_tokens=24) for _ in range(2)]
    assert "".join(c.text for c in greedy[0]) == "".join(c.text for c in greedy[1])
    assert sum(c.tokens for c in greedy[0]) == 24
    sampled = [
        "".join(await generate(llama, ask(STORY), max_tokens=24, temperature=1.2, seed=7)) for _ in range(2)
    ]
    assert sampled[0] == sampled[1]
    other_seed = "".join(await generate(llama, ask(STORY), max_tokens=24, temperature=1.2, seed=8))
    assert other_seed != sampled[0]  # so the seed, not greediness, made them equal


@pytest.mark.model
async def test_unset_seed_samples_differently_in_each_process():
    # Every process loading the model afresh must not replay the same "random" replies.
    answers = []
    for _ in range(2):
        backend = LlamaCppBackend(LlamaCppSettings(n_ctx=256, temperature=1.5, max_tokens=16))
        await backend.start()
        try:
            answers.append("".join(await generate(backend, ask("Tell me a story."))))
        finally:
            await backend.close()
    assert answers[0] != answers[1]


@pytest.mark.model
async def test_cancel_stops_generation_early_and_the_model_works_after(llama):
    cancel = threading.Event()
    chunks = []
    async for chunk in llama.stream(
        ask(STORY), dataclasses.replace(llama.settings.sampling(), max_tokens=400), cancel
    ):
        chunks.append(chunk.text)
        if len(chunks) == 3:
            cancel.set()  # and keep reading, as the pipeline does after /stop
    # Far fewer than the 400 it would write: the worker stops after the token during which
    # cancel was set, give or take the few it ran ahead of this loop on a busy machine.
    assert 3 <= len(chunks) < 100
    assert "".join(await generate(llama, ask(FRANCE))) == "The capital of France is Paris."


@pytest.mark.model
async def test_leaving_the_stream_early_ends_the_sequence(llama):
    before = generated(llama)
    stream = llama.stream(
        ask(STORY),
        dataclasses.replace(llama.settings.sampling(), max_tokens=400),
        threading.Event(),
    )
    async for _ in stream:
        break
    await stream.aclose()
    await until_idle(llama)
    # The engine ended the sequence a step or so later instead of writing all 400.
    assert generated(llama) - before < 100
    assert "".join(await generate(llama, ask(FRANCE))) == "The capital of France is Paris."


@pytest.mark.model
async def test_the_model_generates_off_the_event_loop(llama, monkeypatch):
    # Every token is computed on the engine's thread, so the event loop stays free
    # for other channels while the model writes.
    from botkit.backends import llamacpp_engine

    computed_on: set[int] = set()
    decode = llamacpp_engine.llama_cpp.llama_decode

    def recording(ctx, batch):
        computed_on.add(threading.get_ident())
        return decode(ctx, batch)

    monkeypatch.setattr(llamacpp_engine.llama_cpp, "llama_decode", recording)
    chunks = await chunks_of(llama, ask(STORY), max_tokens=64)
    assert sum(chunk.tokens for chunk in chunks) == 64
    assert computed_on and threading.get_ident() not in computed_on


@pytest.mark.model
async def test_count_tokens_matches_the_tokenizer_llama_generates_with(llama):
    from llama_cpp import Llama

    vocab = Llama(model_path=str(embedded_model_path()), vocab_only=True, verbose=False)
    short, long = ask("Hi"), ask("Hi. " + "Please tell me about the history of Rome. " * 10)
    counts = [await llama.count_tokens(prompt) for prompt in (short, long)]
    # Tokenized exactly as Llama.create_completion tokenizes its prompt.
    expected = [len(vocab.tokenize(llama.render(p).encode("utf-8"), special=True)) for p in (short, long)]
    vocab.close()
    assert counts == expected
    assert counts[0] > 5 and counts[1] > counts[0] + 80


# -- through the bot -----------------------------------------------------------


def with_backend(**backend: object) -> dict:
    return {"backend": {**LLAMA_BOT["backend"], **backend}}


async def until_streaming(reply) -> None:
    """Wait until a reply has its first streamed text (the model is generating it)."""
    await eventually(lambda: reply.updates or reply.finished.is_set(), what="the reply to stream")
    assert reply.updates, f"the reply ended before it streamed: {reply.texts}"


@pytest.mark.model
async def test_bot_streams_a_reply_from_the_model(make_bot):
    async with make_bot(LLAMA_BOT) as bot:
        reply = await bot.chat.say(FRANCE)
    assert reply.status is ReplyStatus.COMPLETED
    assert len(reply.updates) > 1 and reply.updates[-1] == reply.final
    assert "Paris" in reply.final
    assert bot.backend.model_name == "SmolLM2-135M-Instruct.Q4_1"


@pytest.mark.model
async def test_bot_records_the_tokens_of_prompt_and_reply(make_bot):
    replies: list[Reply] = []

    class Record:
        @hookimpl
        def botkit_after_reply(self, reply):
            replies.append(reply)

    async with make_bot(LLAMA_BOT, plugins={"record": Record()}) as bot:
        await bot.chat.say(STORY)
        prompt_tokens = await bot.backend.count_tokens(ask(STORY, system=bot.settings.bot.system_prompt))
    [reply] = replies
    assert reply.status is ReplyStatus.TRUNCATED  # the story runs to max_tokens, and is cut there
    assert reply.completion_tokens == 48
    assert reply.prompt_tokens == prompt_tokens
    assert 0 < reply.first_token_s < reply.latency_s


@pytest.mark.model
async def test_bot_timeout_ends_a_long_generation(make_bot):
    async with make_bot(with_backend(timeout=0.05, max_tokens=2000)) as bot:
        reply = await bot.chat.say(STORY)
        await until_idle(bot.backend)
        made = generated(bot.backend)
    assert reply.status is ReplyStatus.TIMED_OUT
    assert reply.final.endswith("[stopped: the answer took longer than 0.05 s]")
    assert made < 200  # the model was stopped, not left to write its 2000 tokens


@pytest.mark.model
async def test_bot_stop_ends_the_users_generation(make_bot):
    async with make_bot(with_backend(max_tokens=400)) as bot:
        task, story = bot.chat.say_nowait(STORY, user="alice", channel="one")
        await until_streaming(story)
        stop = await asyncio.wait_for(bot.chat.say("/stop", user="alice", channel="one"), WAIT_TIMEOUT)
        await asyncio.wait_for(task, WAIT_TIMEOUT)
        after = await bot.chat.say(FRANCE, user="alice", channel="one")
    assert stop.texts == ["Stopped."]
    assert story.status is ReplyStatus.STOPPED and story.final.endswith("[stopped]")
    # Well short of the 400 tokens asked for; tokens made while /stop was on its way still show.
    assert len(story.updates) < 200
    assert after.status is ReplyStatus.COMPLETED and "Paris" in after.final


@pytest.mark.model
async def test_with_one_sequence_a_second_user_waits_and_is_answered_in_arrival_order(make_bot):
    async with make_bot(with_backend(parallel=1)) as bot:
        finished: list[str] = []
        alice_task, alice = bot.chat.say_nowait(STORY, user="alice", channel="one")
        alice_task.add_done_callback(lambda _: finished.append("alice"))
        await until_streaming(alice)
        bob_task, bob = bot.chat.say_nowait(FRANCE, user="bob", channel="two")
        bob_task.add_done_callback(lambda _: finished.append("bob"))
        await asyncio.wait_for(asyncio.gather(alice_task, bob_task), 4 * WAIT_TIMEOUT)
    assert alice.sent == []
    assert len(bob.sent) == 1 and "1 request ahead of you" in bob.sent[0]
    assert finished == ["alice", "bob"]
    # Alice's story runs to max_tokens (48), Bob's answer ends on its own.
    assert (alice.status, bob.status) == (ReplyStatus.TRUNCATED, ReplyStatus.COMPLETED)
    assert "dragon" in alice.final.lower() and "Paris" in bob.final


@pytest.mark.model
async def test_a_second_user_is_answered_while_the_first_reply_streams(make_bot):
    async with make_bot(with_backend(parallel=2, max_tokens=400)) as bot:
        finished: list[str] = []
        alice_task, alice = bot.chat.say_nowait(STORY, user="alice", channel="one")
        alice_task.add_done_callback(lambda _: finished.append("alice"))
        await until_streaming(alice)
        bob = await asyncio.wait_for(bot.chat.say(FRANCE, user="bob", channel="two"), 4 * WAIT_TIMEOUT)
        assert not alice_task.done()  # Bob's whole answer came while Alice's story was being written
        await asyncio.wait_for(alice_task, 4 * WAIT_TIMEOUT)
    assert bob.sent == [] and "Paris" in bob.final and bob.status is ReplyStatus.COMPLETED
    assert finished == ["alice"] and alice.status.in_history  # answered (to its end or max_tokens)


@pytest.mark.model
async def test_bot_refuses_a_message_longer_than_the_context_window(make_bot):
    config = {**with_backend(n_ctx=256), "bot": {"max_message_chars": 100_000}}
    async with make_bot(config) as bot:
        assert bot.backend.context_window == 256
        text = "Please summarise this. " + "The quick brown fox jumps over the lazy dog. " * 60
        refused = await bot.chat.say(text)
        after = await bot.chat.say(FRANCE)
    assert len(text) < 100_000
    assert refused.final is None and len(refused.sent) == 1
    assert "too long for the model" in refused.sent[0]
    assert after.status is ReplyStatus.COMPLETED
