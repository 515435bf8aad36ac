"""The batching engine of the llama.cpp backend, on the real embedded SmolLM2 model.

What a user of a busy bot relies on: a reply does not depend on who else is being
answered, one conversation's trouble stays its own, a long prompt does not freeze
the others, and a conversation's next turn is not evaluated from scratch.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import functools
import itertools
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from botkit import Prompt, Role, Turn
from botkit.backends import llamacpp_engine
from botkit.backends.llamacpp import LlamaCppBackend, LlamaCppSettings
from botkit.backends.llamacpp_lanes import EngineError
from botkit.backends.llamacpp_model import LlamaModel
from botkit.testing import WAIT_TIMEOUT, eventually

SYSTEM = "You are a helpful assistant."
GREEDY = {"temperature": 0, "seed": 1}
TOPICS = [
    "the moon", "tea", "rivers", "chess", "bread", "owls", "glass", "rain", "maps", "salt",
    "bridges", "bees", "clocks", "paper", "snow", "copper", "violins", "deserts", "kites", "ink",
]  # fmt: skip
STORY = "Write a long story about a dragon."


def ask(text: str) -> Prompt:
    return Prompt(SYSTEM, [Turn(Role.USER, text)])


def params(backend: LlamaCppBackend, **changes: object):
    return dataclasses.replace(backend.settings.sampling(), **changes)


async def reply(backend: LlamaCppBackend, prompt: Prompt, **changes: object) -> str:
    stream = backend.stream(prompt, params(backend, **changes), threading.Event())
    return "".join([chunk.text async for chunk in stream])


def started(**settings: object) -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend(LlamaCppSettings(**{**GREEDY, **settings}))
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.close())


@pytest.fixture(scope="module")
def twenty() -> Iterator[LlamaCppBackend]:
    """Twenty sequences of 1,024 tokens, and no room to save caches (every reply starts alike)."""
    yield from started(parallel=20, n_ctx=1024, max_tokens=24, kv_cache_mb=0)


@pytest.fixture(scope="module")
def one() -> Iterator[LlamaCppBackend]:
    """One sequence, with room to save the caches of the conversations it sets aside."""
    yield from started(parallel=1, n_ctx=1024, max_tokens=24)


async def until_idle(backend: LlamaCppBackend) -> None:
    await eventually(lambda: backend.load().slots_in_use == 0, what="the engine to finish its sequences")


# -- batching --------------------------------------------------------------------


@pytest.mark.model
async def test_greedy_replies_are_the_same_alone_and_in_a_batch_of_twenty(twenty):
    prompts = [ask(f"Tell me one fact about {topic}.") for topic in TOPICS]
    alone = [await reply(twenty, prompt) for prompt in prompts]
    together = await asyncio.gather(*(reply(twenty, prompt) for prompt in prompts))
    assert len(set(alone)) > 10  # twenty different questions, mostly different answers
    assert list(together) == alone


@pytest.mark.model
async def test_greedy_picks_the_tokens_llama_cpps_penalty_and_greedy_samplers_pick(twenty, monkeypatch):
    """The engine reads a greedy reply's logits itself; llama.cpp's sampler chain must agree."""
    prompts = [ask(f"Write a list of things made of {topic}.") for topic in ("glass", "paper", "copper")]
    fast = [await reply(twenty, prompt, repeat_penalty=1.3, max_tokens=40) for prompt in prompts]
    plain = [await reply(twenty, prompt, repeat_penalty=1.0, max_tokens=40) for prompt in prompts]
    assert fast != plain  # the penalty changed something, so the comparison below covers it
    llama_cpp = llamacpp_engine.llama_cpp

    def llama_cpps_chain(engine, job):
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        window, penalty = llamacpp_engine.PENALTY_WINDOW, job.sampling.repeat_penalty
        penalties = llama_cpp.llama_sampler_init_penalties(engine.model.n_vocab, window, penalty, 0.0, 0.0)
        llama_cpp.llama_sampler_chain_add(chain, penalties)
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain

    monkeypatch.setattr(llamacpp_engine.Engine, "_sampler", llama_cpps_chain)
    assert [await reply(twenty, prompt, repeat_penalty=1.3, max_tokens=40) for prompt in prompts] == fast


@pytest.mark.model
async def test_all_twenty_sequences_generate_at_once(twenty):
    streams = [twenty.stream(ask(STORY), params(twenty, max_tokens=400), threading.Event()) for _ in TOPICS]
    firsts = await asyncio.gather(*(anext(stream) for stream in streams))
    # Every stream has its first text while all of them are still generating.
    assert all(chunk.text for chunk in firsts)
    assert twenty.load().slots_in_use == 20
    for stream in streams:
        await stream.aclose()
    await until_idle(twenty)


@pytest.mark.model
async def test_stopping_one_sequence_leaves_the_others_as_they_would_be_alone(twenty):
    alone = await reply(twenty, ask("Tell me one fact about owls."))
    stopped = threading.Event()
    long = twenty.stream(ask(STORY), params(twenty, max_tokens=400), stopped)
    await anext(long)
    other = asyncio.ensure_future(reply(twenty, ask("Tell me one fact about owls.")))
    stopped.set()
    rest = [chunk async for chunk in long]
    assert len(rest) < 100  # ended soon after /stop, not at its 400 tokens
    assert await asyncio.wait_for(other, WAIT_TIMEOUT) == alone


@pytest.mark.model
async def test_a_long_prompt_is_evaluated_in_pieces_between_the_steps_of_a_running_reply(twenty):
    piece = twenty._engine.piece
    long_prompt = ask("Summarise this. " + "The quick brown fox jumps over the lazy dog. " * 80)
    assert await twenty.count_tokens(long_prompt) > 3 * piece
    running = twenty.stream(ask(STORY), params(twenty, max_tokens=300), threading.Event())
    await anext(running)
    received: list[str] = []
    long_started = asyncio.Event()

    async def read_running() -> None:
        async for chunk in running:
            received.append(chunk.text)
            if long_started.is_set():
                return

    async def read_long() -> str:
        chunks = twenty.stream(long_prompt, params(twenty, max_tokens=4), threading.Event())
        first = await anext(chunks)
        seen = len(received)
        long_started.set()
        rest = [chunk.text async for chunk in chunks]
        return seen, first.text + "".join(rest)

    reader = asyncio.ensure_future(read_running())
    seen, _ = await asyncio.wait_for(read_long(), 4 * WAIT_TIMEOUT)
    await asyncio.wait_for(reader, WAIT_TIMEOUT)
    await running.aclose()
    # The running reply got a token in each step that evaluated a piece of the long prompt.
    assert seen >= 3
    await until_idle(twenty)


def record_pieces(monkeypatch) -> list[tuple[int, int, int]]:
    """Each llama_decode's (sequence, first position, tokens) for every sequence in its batch."""
    pieces: list[tuple[int, int, int]] = []
    decode = llamacpp_engine.llama_cpp.llama_decode

    def recording(ctx, batch):
        seen: dict[int, list[int]] = {}
        for i in range(batch.n_tokens):
            seen.setdefault(batch.seq_id[i][0], []).append(batch.pos[i])
        pieces.extend((seq, positions[0], len(positions)) for seq, positions in seen.items())
        return decode(ctx, batch)

    monkeypatch.setattr(llamacpp_engine.llama_cpp, "llama_decode", recording)
    return pieces


async def answer_long_prompt(monkeypatch, prompt: Prompt, beside_a_story: bool):
    """``prompt``'s greedy reply from a fresh engine, alone or while another reply streams, and the
    pieces its prompt was evaluated in, as (first position, tokens)."""
    backend = LlamaCppBackend(LlamaCppSettings(**GREEDY, parallel=2, n_ctx=1024, max_tokens=16, kv_cache_mb=0))
    await backend.start()
    try:
        pieces = record_pieces(monkeypatch)
        story = None
        if beside_a_story:
            # Another system prompt: the two share 3 tokens, too few to copy, so both start at 0.
            told_to = Prompt("Storyteller.", [Turn(Role.USER, STORY)])
            story = backend.stream(told_to, params(backend, max_tokens=400), threading.Event())
            await anext(story)
        (story_seq,) = {seq for seq, _, _ in pieces} or {None}
        size = await backend.count_tokens(prompt)
        if story is None:
            answer = await reply(backend, prompt)
        else:

            async def keep_reading() -> list[str]:
                return [chunk.text async for chunk in story]

            reading = asyncio.ensure_future(keep_reading())
            answer = await reply(backend, prompt)
            assert not reading.done()  # the story was still being told when the answer ended
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
            await story.aclose()
        cuts = [(start, n) for seq, start, n in pieces if seq != story_seq and start < size]
        return answer, cuts, size, functools.partial(backend._engine.model.prompt_piece, backend._engine.piece)
    finally:
        await backend.close()


@pytest.mark.model
async def test_a_long_prompt_is_cut_by_depth_alike_alone_and_beside_a_reply_and_answered_the_same(monkeypatch):
    prompt = ask("Summarise these notes. " + " ".join(f"Note {i}: the {TOPICS[i % 20]} matter is open." for i in range(60)))
    alone, alone_pieces, size, piece_at = await answer_long_prompt(monkeypatch, prompt, beside_a_story=False)
    beside, beside_pieces, _, _ = await answer_long_prompt(monkeypatch, prompt, beside_a_story=True)
    assert size > 600  # past 512 cached tokens, where llama.cpp's f16 attention for one token changes kernel
    assert beside_pieces == alone_pieces
    assert beside == alone and alone.strip()
    # The whole prompt, each piece where the last ended, as many tokens as its depth allows: 64 at
    # the start (prefill_chunk), fewer deeper in.
    assert alone_pieces[0] == (0, 64) and sum(n for _, n in alone_pieces) == size
    for (start, n), (following, _) in itertools.pairwise(alone_pieces):
        assert following == start + n and n == piece_at(start)
    assert alone_pieces[-2][1] < 64 * 2 // 3


def test_prompt_pieces_halve_where_attention_costs_what_the_weights_do():
    model = SimpleNamespace(doubling_depth=778)  # SmolLM2-135M's (LlamaModel.doubling_depth)
    piece_at = functools.partial(LlamaModel.prompt_piece, model, 64)
    assert [piece_at(position) for position in (0, 100, 778, 2 * 778, 100_000)] == [64, 56, 32, 21, 1]


@pytest.mark.model
async def test_a_reader_behind_the_engine_gets_what_queued_as_one_chunk_and_loses_nothing(one, monkeypatch):
    # A busy event loop reads a stream late: the tokens that queued meanwhile come as one chunk,
    # so the pipeline's work per chunk is not paid once per token.
    monkeypatch.setattr(llamacpp_engine, "POST_INTERVAL_S", 0)  # the engine hands over every token
    prompt = ask("Name three colours and say why you like them.")
    promptly = [chunk async for chunk in one.stream(prompt, params(one), threading.Event())]
    assert len(promptly) > 2
    stream = one.stream(prompt, params(one), threading.Event())
    first = await anext(stream)
    await until_idle(one)  # the rest of the reply, and its end, are queued now
    late = [chunk async for chunk in stream]
    assert len(late) == 1
    assert first.text + late[0].text == "".join(chunk.text for chunk in promptly)
    assert first.tokens + late[0].tokens == sum(chunk.tokens for chunk in promptly)
    assert late[0].truncated == promptly[-1].truncated


# -- faults stay with their sequence -----------------------------------------------


@pytest.mark.model
@pytest.mark.parametrize("sampling", [{"temperature": 0.8}, {}], ids=["sampler-chain", "greedy"])
async def test_a_sampling_failure_ends_that_reply_and_no_other(twenty, monkeypatch, sampling):
    alone = await reply(twenty, ask("Tell me one fact about rain."))
    doomed: set[int] = set()
    make_sampler = llamacpp_engine.Engine._sampler
    greedy = llamacpp_engine.Engine._greedy
    sample = llamacpp_engine.llama_cpp.llama_sampler_sample

    def marking(engine, job):
        chain = make_sampler(engine, job)
        if chain is not None and job.sampling.max_tokens == 23:  # the request this test dooms
            doomed.add(ctypes.cast(chain, ctypes.c_void_p).value)
        return chain

    def failing(chain, ctx, index):
        if ctypes.cast(chain, ctypes.c_void_p).value in doomed:
            raise RuntimeError("bad sampler value")
        return sample(chain, ctx, index)

    def failing_greedy(engine, job, found):
        if job.sampling.max_tokens == 23:
            raise RuntimeError("bad logits")
        return greedy(engine, job, found)

    monkeypatch.setattr(llamacpp_engine.Engine, "_sampler", marking)
    monkeypatch.setattr(llamacpp_engine.llama_cpp, "llama_sampler_sample", failing)
    monkeypatch.setattr(llamacpp_engine.Engine, "_greedy", failing_greedy)
    healthy = asyncio.ensure_future(reply(twenty, ask("Tell me one fact about rain.")))
    with pytest.raises(EngineError, match="sampling failed"):
        await reply(twenty, ask("Tell me one fact about salt."), max_tokens=23, **sampling)
    assert await asyncio.wait_for(healthy, WAIT_TIMEOUT) == alone
    monkeypatch.undo()
    assert await reply(twenty, ask("Tell me one fact about rain.")) == alone  # and the engine works after


@pytest.mark.model
async def test_a_decode_failure_ends_that_reply_and_the_others_go_on(twenty, monkeypatch):
    alone = await reply(twenty, ask("Tell me one fact about maps."))
    decode = llamacpp_engine.llama_cpp.llama_decode
    doomed: set[int] = set()

    def failing(ctx, batch):
        sequences = {batch.seq_id[index][0] for index in range(batch.n_tokens)}
        if sequences & doomed:
            return -1
        return decode(ctx, batch)

    healthy = asyncio.ensure_future(reply(twenty, ask("Tell me one fact about maps.")))
    long = twenty.stream(ask(STORY), params(twenty, max_tokens=400), threading.Event())
    await anext(long)
    (slot,) = [slot for lane in twenty._engine._lanes.values() for slot in lane.slots if slot.job is not None
               and slot.job.sampling.max_tokens == 400]  # fmt: skip
    doomed.add(slot.seq)
    monkeypatch.setattr(llamacpp_engine.llama_cpp, "llama_decode", failing)
    with pytest.raises(EngineError, match="llama_decode returned -1"):
        async for _ in long:
            pass
    assert await asyncio.wait_for(healthy, WAIT_TIMEOUT) == alone
    monkeypatch.undo()
    assert await reply(twenty, ask("Tell me one fact about maps.")) == alone


# -- a conversation keeps its cache ------------------------------------------------


def conversation(*turns: str) -> Prompt:
    roles = [Role.USER, Role.ASSISTANT] * len(turns)
    return Prompt(SYSTEM, [Turn(role, text) for role, text in zip(roles, turns, strict=False)])


@pytest.mark.model
async def test_the_next_turn_evaluates_only_what_follows_the_cached_tokens(one):
    first = conversation("Name a fruit.")
    answer = await reply(one, first)
    before = one.load()
    second = conversation("Name a fruit.", answer, "And a vegetable?")
    await reply(one, second)
    after = one.load()
    whole = await one.count_tokens(second)
    evaluated = after.evaluated_tokens - before.evaluated_tokens
    reused = after.reused_tokens - before.reused_tokens
    assert reused + evaluated == whole
    assert evaluated < 20 < await one.count_tokens(first) <= reused


@pytest.mark.model
async def test_a_conversation_set_aside_and_restored_answers_as_if_never_moved(one):
    alice = conversation("Name a colour.")
    alice_answer = await reply(one, alice)
    alice_next = conversation("Name a colour.", alice_answer, "Why do people like it?")
    # The reference: Alice's next turn straight after her first, from the cache in the sequence.
    expected = await reply(one, alice_next)

    await reply(one, alice)  # Alice's first turn again: the sequence holds it
    saved_before = one.load()
    bob = await reply(one, conversation("Name a planet."))  # takes the only sequence: Alice's cache is saved
    assert bob and one.load().kv_saved == saved_before.kv_saved + 1
    restored = one.load()
    assert await reply(one, alice_next) == expected  # her cache copied back, not evaluated again
    after = one.load()
    assert after.reused_tokens - restored.reused_tokens >= await one.count_tokens(alice) - 2
    assert after.evictions == restored.evictions


@pytest.fixture(scope="module")
def two() -> Iterator[LlamaCppBackend]:
    """Two sequences, with room to save the caches of the conversations they set aside."""
    yield from started(parallel=2, n_ctx=1024, max_tokens=24)


async def evaluated_for(backend: LlamaCppBackend, prompt: Prompt) -> int:
    """The prompt tokens the engine evaluated to answer ``prompt`` (the rest came from caches)."""
    before = backend.load()
    await reply(backend, prompt)
    return backend.load().evaluated_tokens - before.evaluated_tokens


async def two_turns(backend: LlamaCppBackend, first: str, second: str) -> list[str]:
    """A conversation of two exchanges, its cache (about 100 tokens) in a sequence: its texts."""
    answer = await reply(backend, conversation(first))
    return [first, answer, second, await reply(backend, conversation(first, answer, second))]


@pytest.mark.model
async def test_a_new_conversation_takes_the_beginning_it_shares_with_another_from_that_ones_cache(two):
    question = "Describe the moon in two sentences for a child who cannot sleep."
    alice = await two_turns(two, question, "What is it made of?")
    # Bob asks Alice's first question in another channel: a new conversation. Alice's sequence
    # stays hers; Bob's gets a copy of the prompt they share, and only its last token is evaluated.
    assert await evaluated_for(two, conversation(question)) == 1
    # Alice's next turn still finds her whole cache in her sequence: her new message is evaluated.
    alice_next = conversation(*alice, "And the sun?")
    assert await evaluated_for(two, alice_next) < 20 < await two.count_tokens(conversation(*alice[:3]))


@pytest.mark.model
async def test_a_new_conversation_takes_a_shared_beginning_from_a_saved_cache_and_leaves_it_saved(one):
    question = "Describe a river in two sentences for a child who cannot sleep."
    alice = await two_turns(one, question, "Where does it go?")
    await reply(one, conversation("Name a planet."))  # takes the only sequence: Alice's cache is saved
    assert (
        await evaluated_for(one, conversation(question)) == 1
    )  # Bob: the shared prompt from her saved cache
    before = one.load()
    await reply(one, conversation(*alice, "And the sea?"))
    after = one.load()
    # Her cache was still saved, and came back whole.
    assert after.reused_tokens - before.reused_tokens >= await one.count_tokens(conversation(*alice[:3]))


@pytest.fixture(scope="module")
def tiny_cache() -> Iterator[LlamaCppBackend]:
    """One sequence, and room for only 10 KB of saved caches: less than any conversation needs."""
    yield from started(parallel=1, n_ctx=1024, max_tokens=8, kv_cache_mb=0.01)


@pytest.mark.model
async def test_a_cache_too_big_for_kv_cache_mb_is_evaluated_again_and_counted_as_evicted(tiny_cache):
    await reply(
        tiny_cache, conversation("Name a colour that you would see in the sky at sunset, and say why.")
    )
    await reply(tiny_cache, conversation("Name a planet."))
    load = tiny_cache.load()
    assert (
        load.kv_saved == 0 and load.evictions == 1 and load.kv_cache_limit_mb == pytest.approx(0.01, abs=1e-4)
    )


# -- settings ------------------------------------------------------------------------


def test_threads_default_to_one_per_physical_core():
    from botkit.backends.llamacpp_model import physical_cores

    hyperthreaded = "".join(
        f"processor\t: {cpu}\nphysical id\t: 0\ncore id\t\t: {cpu // 2}\n\n" for cpu in range(8)
    )
    assert physical_cores(hyperthreaded, allowed=8) == 4
    assert physical_cores(hyperthreaded, allowed=2) == 2  # a container limited to 2 CPUs
    assert physical_cores("", allowed=3) == 3  # no cpuinfo to read: every allowed CPU


def test_a_llama_cpp_built_with_amx_loads_weights_without_extra_buffer_types():
    """llama.cpp 0.3.36's AMX kernels die with SIGILL on some machines: a build that has them never reaches them."""
    import llama_cpp.llama_cpp as bindings

    from botkit.backends.llamacpp_model import model_params, repacking_is_safe, safe_llama_class_params

    sapphire_rapids = "CPU : SSE3 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | REPACK = 1 | "
    assert not repacking_is_safe(sapphire_rapids)
    assert repacking_is_safe("CPU : SSE3 = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | REPACK = 1 | ")
    this_build = repacking_is_safe()
    assert model_params().use_extra_bufts is this_build
    with safe_llama_class_params():  # what llama_cpp.Llama asks for while botkit constructs one
        assert bindings.llama_model_default_params().use_extra_bufts is this_build
    assert bindings.llama_model_default_params().use_extra_bufts is True  # others get llama.cpp's own default


def test_n_batch_must_leave_room_for_prompts():
    with pytest.raises(ValueError, match=r"n_batch \(8\) must be larger than parallel \(8\)"):
        LlamaCppSettings(parallel=8, n_batch=8)


@pytest.mark.model
async def test_flash_attention_and_the_cache_type_follow_the_settings(monkeypatch):
    made: list[tuple[int, int, int]] = []
    init = llamacpp_engine.llama_cpp.llama_init_from_model

    def recording(model, context_params):
        made.append((context_params.flash_attn_type, context_params.type_k, context_params.type_v))
        return init(model, context_params)

    monkeypatch.setattr(llamacpp_engine.llama_cpp, "llama_init_from_model", recording)
    on, off = llamacpp_engine.llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO, llamacpp_engine.llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    bf16, f16, q8_0 = 30, 1, 8  # ggml.h's GGML_TYPE_BF16, _F16, _Q8_0
    for settings, expected in (
        ({}, (on, bf16, bf16)),
        ({"flash_attn": False}, (off, f16, f16)),
        ({"kv_cache_type": "q8_0"}, (on, q8_0, q8_0)),
        ({"flash_attn": False, "kv_cache_type": "bf16"}, (off, bf16, bf16)),
    ):
        made.clear()
        backend = LlamaCppBackend(LlamaCppSettings(**GREEDY, parallel=1, n_ctx=512, max_tokens=8, **settings))
        await backend.start()
        try:
            assert (await reply(backend, ask("Say hello."))).strip()
        finally:
            await backend.close()
        assert made == [expected], settings


def test_a_quantized_cache_without_flash_attention_is_refused_with_the_way_out():
    with pytest.raises(ValueError, match=r'kv_cache_type "q8_0" needs flash_attn = true.*kv_cache_type = "f16"'):
        LlamaCppSettings(flash_attn=False, kv_cache_type="q8_0")


@pytest.mark.model
async def test_a_reply_s_first_text_goes_at_once_and_the_rest_at_most_every_post_interval(one, monkeypatch):
    prompt = ask("Name three colours and say why you like them.")
    usual = [chunk async for chunk in one.stream(prompt, params(one), threading.Event())]
    monkeypatch.setattr(llamacpp_engine, "POST_INTERVAL_S", 3600)  # nothing between the first and the end
    held = [chunk async for chunk in one.stream(prompt, params(one), threading.Event())]
    assert len(held) == 2 and held[0].text and held[0].tokens <= 2
    assert "".join(chunk.text for chunk in held) == "".join(chunk.text for chunk in usual)
    assert sum(chunk.tokens for chunk in held) == sum(chunk.tokens for chunk in usual)
    assert held[-1].truncated == usual[-1].truncated  # the end is said in the last chunk, as before
