"""GGUF LoRA adapters: written by botkit.finetune, loaded and switched by the llama.cpp backend on SmolLM2."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from botkit import Prompt, Reply, Role, Turn, hookimpl
from botkit.backends.llamacpp import LlamaCppBackend, LlamaCppSettings, embedded_model_path
from botkit.backends.llamacpp_lora import BASE_MODEL_KEY, read_gguf_header
from botkit.errors import LoraError
from botkit.finetune.gguf_adapter import (
    base_model_identity,
    convert_peft_adapter,
    gguf_tensor_name,
    write_lora_gguf,
)
from botkit.testing import WAIT_TIMEOUT, eventually
from botkit.types import NO_LORA

QUESTION = Prompt("You are a helpful assistant.", [Turn(Role.USER, "What is the capital of France?")])
GREEDY = {"n_ctx": 512, "temperature": 0, "seed": 1, "max_tokens": 8}
SMOL_NAME = "Smollm2 135M 8k Lc100K Mix1 Ep2"  # general.name in the embedded GGUF
ADAPTERS = ("first", "second", "third")


def random_lora(shapes: dict[str, tuple[int, ...]], seed: int, rank: int = 4, std: float = 0.2):
    """Seeded LoRA pairs for the attention keys and values of every layer in ``shapes`` (GGUF order).

    All such an adapter changes is held in the KV cache, so a prompt evaluated under
    another adapter and reused shows in the answer; 0.2 moves SmolLM2's greedy answer
    far from its own while its answers still depend on the prompt.
    """
    rng = np.random.default_rng(seed)
    pairs = {}
    for name, shape in shapes.items():
        if name.startswith("blk.") and name.split(".")[2] in ("attn_k", "attn_v"):
            n_in, n_out = shape
            a = rng.normal(0, std, (rank, n_in)).astype(np.float32)
            b = rng.normal(0, std, (n_out, rank)).astype(np.float32)
            pairs[name] = (a, b)
    return pairs


@pytest.fixture(scope="module")
def smol_shapes() -> dict[str, tuple[int, ...]]:
    return read_gguf_header(embedded_model_path()).tensors


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, smol_shapes) -> Path:
    """Three real adapters for SmolLM2 (30 layers, hidden 576, 9 heads / 3 KV heads), and a half-precision one."""
    folder = tmp_path_factory.mktemp("adapters")
    architecture, name = base_model_identity(embedded_model_path())
    for seed, adapter in enumerate(ADAPTERS, start=1):
        write_lora_gguf(
            folder / f"{adapter}.gguf",
            architecture=architecture,
            alpha=4,
            tensors=random_lora(smol_shapes, seed),
            base_model=name,
        )
    for tensor_type in ("f16", "bf16"):
        write_lora_gguf(
            folder / f"second.{tensor_type}.gguf",
            architecture=architecture,
            alpha=4,
            tensors=random_lora(smol_shapes, 2),
            base_model=name,
            tensor_type=tensor_type,
        )
    return folder


def started(settings: LlamaCppSettings) -> Iterator[LlamaCppBackend]:
    """A backend started and closed on loops of its own (its worker thread serves every test's loop)."""
    backend = LlamaCppBackend(settings)
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.close())


@pytest.fixture(scope="module")
def llama(adapter_dir) -> Iterator[LlamaCppBackend]:
    """SmolLM2 with ``first`` as lora_path and ``second``, ``third`` as named adapters, loaded once."""
    settings = LlamaCppSettings(
        **GREEDY,
        lora_path=adapter_dir / "first.gguf",
        loras={"second": adapter_dir / "second.gguf", "third": adapter_dir / "third.gguf"},
    )
    yield from started(settings)


@pytest.fixture(scope="module")
def fresh(adapter_dir) -> dict[str, str]:
    """The answer of each adapter (and of none) as the first generation of a backend of its own."""

    async def first_answer(lora_path: Path | None) -> str:
        backend = LlamaCppBackend(LlamaCppSettings(**GREEDY, lora_path=lora_path))
        await backend.start()
        try:
            return await answer(backend)
        finally:
            await backend.close()

    answers = {NO_LORA: asyncio.run(first_answer(None))}
    for adapter in ADAPTERS:
        answers[adapter] = asyncio.run(first_answer(adapter_dir / f"{adapter}.gguf"))
    assert "Paris" in answers[NO_LORA]
    assert len(set(answers.values())) == 4, answers  # each adapter changes the answer its own way
    return answers


@pytest.fixture(scope="module")
def again(adapter_dir) -> dict[str, str]:
    """Each adapter's answer when asked a second time on a backend of its own.

    The second time the prompt's cache is reused and only its last token evaluated,
    which llama.cpp rounds slightly differently from the whole prompt in one piece;
    a random adapter's greedy answer may turn on that (it does on an AVX2-only EPYC).
    """

    async def second_answer(lora_path: Path | None) -> str:
        backend = LlamaCppBackend(LlamaCppSettings(**GREEDY, lora_path=lora_path))
        await backend.start()
        try:
            await answer(backend)
            return await answer(backend)
        finally:
            await backend.close()

    answers = {NO_LORA: asyncio.run(second_answer(None))}
    for adapter in ADAPTERS:
        answers[adapter] = asyncio.run(second_answer(adapter_dir / f"{adapter}.gguf"))
    return answers


@pytest.fixture
async def first_active(llama, adapter_dir) -> LlamaCppBackend:
    """The module's backend with lora_path active again, whatever the last test switched to.

    Whether its adapter's context still holds the prompt's cache depends on the contexts the
    tests before used (at most two live at once). llama.cpp rounds a prompt evaluated in one
    batch slightly differently from one whose last token is evaluated alone, and a random
    adapter's greedy answer may turn on such a difference: an adapter's answer is checked
    against both (``answers_of``).
    """
    await llama.switch_lora(str(adapter_dir / "first.gguf"))
    await answer(llama, lora=NO_LORA)
    return llama


async def answer(backend: LlamaCppBackend, **params: object) -> str:
    sampling = dataclasses.replace(backend.settings.sampling(), **params)
    return "".join([chunk.text async for chunk in backend.stream(QUESTION, sampling, threading.Event())])


@pytest.fixture
def answers_of(fresh, again):
    """An adapter's answer as evaluated from scratch or from its reused cache (see ``again``): a
    backend that switched lanes back and forth may hold the prompt's cache or not."""
    sets = {name: {fresh[name], again[name]} for name in fresh}
    for name, answers in sets.items():  # the check below tells adapters apart only if their answers do
        assert not any(answers & other for key, other in sets.items() if key != name), sets
    return sets.__getitem__


# -- applying and switching ------------------------------------------------------


@pytest.mark.model
async def test_lora_path_is_active_from_the_start_and_changes_the_answer(
    first_active, adapter_dir, fresh, answers_of
):
    assert first_active.active_lora == str(adapter_dir / "first.gguf")
    assert first_active.loras == {
        "second": str(adapter_dir / "second.gguf"),
        "third": str(adapter_dir / "third.gguf"),
    }
    got = await answer(first_active)
    assert got in answers_of("first") and got != fresh[NO_LORA]


@pytest.mark.model
async def test_switching_to_no_adapter_gives_exactly_the_base_answer(first_active, fresh, answers_of):
    note = await first_active.switch_lora(None)
    assert "base model" in note and first_active.active_lora is None
    assert await answer(first_active) == fresh[NO_LORA]
    await first_active.switch_lora(str(first_active.settings.lora_path))
    assert await answer(first_active) in answers_of("first")
    await first_active.switch_lora(NO_LORA)
    assert first_active.active_lora is None
    assert await answer(first_active) == fresh[NO_LORA]


@pytest.mark.model
async def test_switching_to_a_named_adapter(first_active, fresh, answers_of):
    assert await answer(first_active) in answers_of("first")
    note = await first_active.switch_lora("second")
    assert note == "backend now answers with LoRA adapter second"
    assert first_active.active_lora == "second"
    assert await answer(first_active) in answers_of("second")


@pytest.mark.model
async def test_each_request_may_name_its_adapter(first_active, fresh, answers_of):
    assert await answer(first_active, lora="third") in answers_of("third")
    assert await answer(first_active, lora=NO_LORA) == fresh[NO_LORA]
    assert await answer(first_active, lora=None) in answers_of("first")  # None: the active adapter
    assert first_active.active_lora == str(first_active.settings.lora_path)  # requests switch nothing


@pytest.mark.model
async def test_a_prompt_evaluated_under_one_adapter_is_not_reused_under_another(adapter_dir, fresh, again):
    # The engine keeps each conversation's evaluated tokens and reuses them for a prompt
    # that starts the same way: only under the adapter they were evaluated with, or the
    # answers would mix two adapters. Each answer equals the one evaluated alike: the
    # first ask of a prompt under an adapter evaluates it whole, a later one reuses it.
    settings = LlamaCppSettings(
        **GREEDY,
        lora_path=adapter_dir / "first.gguf",
        loras={"second": adapter_dir / "second.gguf", "third": adapter_dir / "third.gguf"},
    )
    backend = LlamaCppBackend(settings)
    await backend.start()
    try:
        asked: set[str] = set()
        for lora in ["second", "third", "second", NO_LORA, "third", None, NO_LORA, None]:
            adapter = lora or "first"
            expected = (again if adapter in asked else fresh)[adapter]
            assert await answer(backend, lora=lora) == expected, (lora, adapter in asked)
            asked.add(adapter)
    finally:
        await backend.close()


@pytest.mark.model
async def test_an_adapter_file_can_be_switched_to_by_path_at_run_time(first_active, adapter_dir, fresh):
    for tensor_type in ("f16", "bf16"):  # llama.cpp takes half-precision adapters too
        path = str(adapter_dir / f"second.{tensor_type}.gguf")
        assert await first_active.switch_lora(path) == f"backend now answers with LoRA adapter {path}"
        assert first_active.active_lora == path
        assert await answer(first_active) != fresh[NO_LORA]
    await first_active.switch_lora(str(adapter_dir / "second.gguf"))  # the file "second" was loaded from
    assert await answer(first_active) == fresh["second"]


@pytest.mark.model
async def test_lora_scale_applies_from_the_next_generation(first_active, fresh):
    settings = first_active.settings
    try:
        # What /reload does with a new lora_scale: the backend's settings are replaced.
        first_active.settings = settings.model_copy(update={"lora_scale": 0.0})
        assert await answer(first_active) == fresh[NO_LORA]
    finally:
        first_active.settings = settings
    assert await answer(first_active) == fresh["first"]


@pytest.mark.model
async def test_two_adapters_generate_side_by_side_and_a_third_waits_for_one_to_finish(first_active, fresh):
    """A LoRA adapter applies to a whole llama.cpp context: the engine gives each one in use a
    context of its own over the one model, two at once (a canary beside the base model)."""
    engine = first_active._engine
    long = {"max_tokens": 400}

    def start(lora: str) -> object:
        sampling = dataclasses.replace(first_active.settings.sampling(), lora=lora, **long)
        return first_active.stream(QUESTION, sampling, threading.Event())

    second, base = start("second"), start(NO_LORA)
    second_text = (await anext(second)).text
    base_text = (await anext(base)).text
    # Both are generating at once, each under its own adapter.
    await eventually(lambda: first_active.load().slots_in_use == 2, what="both replies to generate together")
    third_chunks: list[str] = []

    async def read_third() -> None:
        async for chunk in start("third"):
            third_chunks.append(chunk.text)
            if len("".join(third_chunks)) >= len(fresh["third"]):
                return

    third = asyncio.ensure_future(read_third())
    await eventually(lambda: len(engine._waiting) == 1, what="the third adapter's request to wait")
    assert third_chunks == [] and first_active.load().slots_in_use == 2
    second_text += "".join([chunk.text async for chunk in _first(second, len(fresh["second"]))])
    await second.aclose()  # the "second" context goes idle: "third" takes its place
    await asyncio.wait_for(third, WAIT_TIMEOUT)
    base_text += "".join([chunk.text async for chunk in _first(base, len(fresh[NO_LORA]))])
    await base.aclose()
    assert second_text.startswith(fresh["second"])
    assert base_text.startswith(fresh[NO_LORA])
    assert "".join(third_chunks).startswith(fresh["third"])
    await eventually(lambda: first_active.load().slots_in_use == 0, what="the engine to finish")


async def _first(stream, size: int):
    """The chunks of ``stream`` until at least ``size`` characters came."""
    got = 0
    async for chunk in stream:
        yield chunk
        got += len(chunk.text)
        if got >= size:
            return


@pytest.mark.model
async def test_the_bot_records_which_adapter_answered_and_an_admin_switches_it(make_bot, adapter_dir):
    replies: list[Reply] = []

    class Record:
        @hookimpl
        def botkit_after_reply(self, reply):
            replies.append(reply)

    first = str(adapter_dir / "first.gguf")
    config = {
        "backend": {
            "type": "llamacpp",
            **GREEDY,
            "lora_path": first,
            "loras": {"second": str(adapter_dir / "second.gguf")},
        },
        "overrides": {"test:support": {"lora": "second"}},
    }
    async with make_bot(config, plugins={"record": Record()}) as bot:
        in_support = await bot.chat.say("What is the capital of France?", channel="support")
        elsewhere = await bot.chat.say("What is the capital of France?", channel="general")
        switched = await bot.chat.say("/lora none", user="admin")
        base = await bot.chat.say("What is the capital of France?", channel="random")
        assert bot.backend.active_lora is None
    assert "base model" in switched.texts[0]
    assert [reply.lora for reply in replies] == ["second", first, None]
    assert all(reply.status.in_history for reply in replies)  # answered (max_tokens is 8: some are cut)
    assert len({in_support.final, elsewhere.final, base.final}) == 3
    assert "Paris" in base.final


# -- refusing what does not fit ---------------------------------------------------


async def test_a_missing_lora_path_names_the_setting(tmp_path):
    missing = tmp_path / "adapters" / "support.gguf"
    backend = LlamaCppBackend(LlamaCppSettings(lora_path=missing))
    with pytest.raises(LoraError) as raised:
        await backend.start()
    assert "[backend] lora_path" in str(raised.value) and str(missing) in str(raised.value)


async def test_a_missing_named_adapter_names_its_key(tmp_path):
    missing = tmp_path / "support.gguf"
    with pytest.raises(LoraError, match=r"\[backend\] loras\.support: .*support\.gguf does not exist"):
        await LlamaCppBackend(LlamaCppSettings(loras={"support": missing})).start()


@pytest.mark.model
async def test_a_file_that_is_not_gguf_is_refused(first_active, tmp_path):
    text = tmp_path / "adapter.gguf"
    text.write_text("not an adapter\n")
    with pytest.raises(LoraError, match="is not a GGUF LoRA adapter"):
        await first_active.switch_lora(str(text))
    assert first_active.active_lora == str(first_active.settings.lora_path)  # the switch did not happen


@pytest.mark.model
async def test_a_model_file_is_not_an_adapter(first_active):
    with pytest.raises(LoraError) as raised:
        await first_active.switch_lora(str(embedded_model_path()))
    assert "is a GGUF model file, not a LoRA adapter" in str(raised.value)


@pytest.mark.model
async def test_a_cut_off_adapter_is_refused(first_active, adapter_dir, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes((adapter_dir / "second.gguf").read_bytes()[:5000])
    with pytest.raises(LoraError, match="cut off"):
        await first_active.switch_lora(str(cut))


def foreign_adapter(path: Path, smol_shapes, **changes: object) -> Path:
    values = {
        "architecture": "llama",
        "alpha": 4,
        "tensors": random_lora(smol_shapes, 5),
        "base_model": SMOL_NAME,
        **changes,
    }
    return write_lora_gguf(path, **values)


@pytest.mark.model
async def test_an_adapter_of_another_architecture_names_both_models(first_active, smol_shapes, tmp_path):
    path = foreign_adapter(
        tmp_path / "qwen.gguf", smol_shapes, architecture="qwen2", base_model="Qwen2.5 0.5B"
    )
    with pytest.raises(LoraError) as raised:
        await first_active.switch_lora(str(path))
    message = str(raised.value)
    assert (
        f"LoRA adapter {path}: {path} was made for base model 'Qwen2.5 0.5B' (architecture 'qwen2')"
        in message
    )
    assert f"not for the loaded model '{SMOL_NAME}' (SmolLM2-135M-Instruct.Q4_1.gguf)" in message


@pytest.mark.model
async def test_an_adapter_with_other_layer_shapes_names_both_models(first_active, tmp_path):
    # SmolLM2-360M: hidden size 960 (15 heads of 64, 5 KV heads), 2560 in the MLP, 32 layers.
    shapes = {}
    for layer in range(32):
        shapes[f"blk.{layer}.attn_q.weight"] = (960, 960)
        shapes[f"blk.{layer}.attn_k.weight"] = (960, 320)
        shapes[f"blk.{layer}.ffn_down.weight"] = (2560, 960)
    path = foreign_adapter(tmp_path / "360m.gguf", shapes, base_model="SmolLM2 360M")
    with pytest.raises(LoraError) as raised:
        await first_active.switch_lora(str(path))
    message = str(raised.value)
    assert f"was made for base model 'SmolLM2 360M', not for the loaded model '{SMOL_NAME}'" in message
    assert (
        "blk.0.attn_k.weight is [576, 192] in the loaded model; lora_a [960, 4], lora_b [4, 320]" in message
    )


@pytest.mark.model
async def test_an_adapter_for_another_base_model_of_the_same_shapes_is_refused(
    first_active, smol_shapes, tmp_path
):
    path = foreign_adapter(tmp_path / "other.gguf", smol_shapes, base_model="SmolLM2 135M (other fine-tune)")
    with pytest.raises(LoraError) as raised:
        await first_active.switch_lora(str(path))
    assert str(raised.value) == (
        f"LoRA adapter {path}: {path} was made for base model 'SmolLM2 135M (other fine-tune)', not for the "
        f"loaded model '{SMOL_NAME}' (SmolLM2-135M-Instruct.Q4_1.gguf)"
    )


@pytest.mark.model
async def test_an_adapter_for_another_model_in_the_config_stops_start_up(adapter_dir, smol_shapes, tmp_path):
    path = foreign_adapter(tmp_path / "other.gguf", smol_shapes, base_model="Another Model")
    backend = LlamaCppBackend(
        LlamaCppSettings(**GREEDY, loras={"second": adapter_dir / "second.gguf", "x": path})
    )
    with pytest.raises(LoraError) as raised:
        await backend.start()
    assert str(raised.value).startswith(f"[backend] loras.x: {path} was made for base model 'Another Model'")


@pytest.mark.model
async def test_unknown_adapter_names_are_refused_with_the_known_ones(first_active):
    with pytest.raises(LoraError) as raised:
        await first_active.switch_lora("support")
    assert str(raised.value) == (
        "no LoRA adapter 'support': not a name in [backend] loras (it has: second, third), "
        "nor a LoRA adapter file"
    )
    with pytest.raises(
        LoraError, match=r"no LoRA adapter 'support' in \[backend\] loras \(it has: second, third\)"
    ):
        await answer(first_active, lora="support")


def test_none_cannot_name_a_lora():
    with pytest.raises(ValidationError, match="'none' cannot name a LoRA adapter"):
        LlamaCppSettings(loras={"none": "x.gguf"})


def test_adapters_is_read_as_loras_until_the_next_release():
    assert LlamaCppSettings(adapters={"support": "s.gguf"}).loras == {"support": Path("s.gguf")}
    with pytest.raises(ValidationError, match="the old name of loras, which this table sets too"):
        LlamaCppSettings(adapters={"support": "s.gguf"}, loras={"terse": "t.gguf"})


# -- the file format ----------------------------------------------------------------


def test_the_header_reader_agrees_with_the_gguf_package():
    from gguf import GGUFReader

    path = embedded_model_path()
    ours = read_gguf_header(path)
    theirs = GGUFReader(path)
    assert ours.tensors == {tensor.name: tuple(int(n) for n in tensor.shape) for tensor in theirs.tensors}
    scalars = {key: field.contents() for key, field in theirs.fields.items() if not key.startswith("GGUF.")}
    scalars = {key: value for key, value in scalars.items() if not isinstance(value, list)}
    assert ours.metadata.keys() == scalars.keys()
    for key, value in scalars.items():
        assert (
            ours.metadata[key] == pytest.approx(value)
            if isinstance(value, float)
            else ours.metadata[key] == value
        )
    assert ours.metadata["llama.block_count"] == 30 and ours.metadata["general.name"] == SMOL_NAME


def test_the_written_file_is_a_llama_cpp_lora_adapter(tmp_path):
    from gguf import GGMLQuantizationType, GGUFReader

    a = np.arange(8, dtype=np.float32).reshape(2, 4)  # rank 2, 4 inputs
    b = np.arange(6, dtype=np.float32).reshape(3, 2)  # 3 outputs
    path = write_lora_gguf(
        tmp_path / "tiny.gguf",
        architecture="llama",
        alpha=16,
        tensors={"blk.0.attn_q.weight": (a, b)},
        base_model="Tiny",
        tensor_type="f16",
    )
    reader = GGUFReader(path)
    fields = {key: field.contents() for key, field in reader.fields.items()}
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 16.0 and fields["general.architecture"] == "llama"
    assert fields[BASE_MODEL_KEY] == "Tiny" and fields["general.base_model.0.name"] == "Tiny"
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    assert set(tensors) == {"blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b"}
    lora_a, lora_b = tensors["blk.0.attn_q.weight.lora_a"], tensors["blk.0.attn_q.weight.lora_b"]
    assert list(lora_a.shape) == [4, 2] and list(lora_b.shape) == [2, 3]  # GGUF order: n_in first
    assert lora_a.tensor_type == GGMLQuantizationType.F16
    assert np.array_equal(np.asarray(lora_a.data).reshape(2, 4), a)
    assert np.array_equal(np.asarray(lora_b.data).reshape(3, 2), b)
    assert not list(tmp_path.glob("*.partial"))


def test_the_writer_refuses_what_llama_cpp_could_not_use(tmp_path):
    a, b = np.ones((2, 4), np.float32), np.ones((3, 2), np.float32)
    values = {"architecture": "llama", "alpha": 8, "base_model": "Tiny"}
    with pytest.raises(LoraError, match=r"A must be \(rank, n_in\) and B \(n_out, rank\)"):
        write_lora_gguf(tmp_path / "x.gguf", tensors={"blk.0.attn_q.weight": (a, b.T)}, **values)
    with pytest.raises(LoraError, match="NaN"):
        write_lora_gguf(tmp_path / "x.gguf", tensors={"blk.0.attn_q.weight": (a * np.nan, b)}, **values)
    with pytest.raises(LoraError, match="not a weight's GGUF name"):
        write_lora_gguf(tmp_path / "x.gguf", tensors={"model.layers.0.self_attn.q_proj": (a, b)}, **values)
    assert not (tmp_path / "x.gguf").exists()


def test_peft_names_map_to_llama_cpp_tensors():
    assert gguf_tensor_name("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight") == (
        "blk.3.attn_q.weight",
        "a",
    )
    expected = {
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for module, tensor in expected.items():
        assert gguf_tensor_name(f"base_model.model.model.layers.12.{module}.lora_B.weight") == (
            f"blk.12.{tensor}.weight",
            "b",
        )
    with pytest.raises(LoraError, match="not the LoRA weight of a llama attention or MLP projection"):
        gguf_tensor_name("base_model.model.lm_head.lora_A.weight")


# -- a peft adapter, converted -------------------------------------------------------


def llama_cpp_logits(model: Path, adapter: Path | None, tokens: list[int]) -> np.ndarray:
    """llama.cpp's next-token logits after ``tokens``, with ``adapter`` applied at scale 1."""
    from llama_cpp import Llama

    from botkit.backends.llamacpp_model import safe_llama_class_params

    extra = {"lora_path": str(adapter)} if adapter else {}
    with safe_llama_class_params():  # as botkit loads it: llama.cpp's AMX kernels crash
        llama = Llama(model_path=str(model), n_ctx=256, logits_all=True, verbose=False, **extra)
    try:
        llama.eval(tokens)
        return np.array(llama.scores[len(tokens) - 1])
    finally:
        llama.close()


@pytest.mark.model
@pytest.mark.filterwarnings("ignore:Could not find a config file:UserWarning")  # peft, saving beside a GGUF
def test_a_converted_peft_adapter_gives_llama_cpp_the_logits_it_gives_transformers(tmp_path):
    """SmolLM2 in transformers with a peft LoRA, against llama.cpp with the converted GGUF adapter.

    Both read the same Q4_1 weights, so they agree up to llama.cpp's rounding. The
    adapter uses rsLoRA and a per-module alpha; measured here, a converter that ignored
    the alpha_pattern scores 0.97 on the change the adapter makes, one without llama.cpp's
    q/k row permutation 0.90, this one 0.995.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model_path = embedded_model_path()
    model = AutoModelForCausalLM.from_pretrained(
        model_path.parent, gguf_file=model_path.name, dtype=torch.float32
    )
    tokens = [504, 3575, 282, 4649, 314]  # "The capital of France is"
    with torch.no_grad():
        base = model(torch.tensor([tokens])).logits[0, -1].numpy()
    torch.manual_seed(0)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=targets, use_rslora=True, alpha_pattern={"k_proj": 32}
    )
    tuned = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in tuned.named_parameters():
            if "lora_" in name:
                parameter.normal_(std=0.03)
        expected = tuned(torch.tensor([tokens])).logits[0, -1].numpy()
    tuned.save_pretrained(tmp_path / "peft")

    adapter = convert_peft_adapter(tmp_path / "peft", tmp_path / "tuned.gguf", model_path)
    got = llama_cpp_logits(model_path, adapter, tokens)
    got_base = llama_cpp_logits(model_path, None, tokens)

    def correlation(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.corrcoef(x, y)[0, 1])

    assert correlation(expected, base) < 0.9  # the adapter changes the model's predictions a lot
    assert correlation(got_base, base) > 0.997
    assert correlation(got, expected) > 0.997
    assert correlation(got - got_base, expected - base) > 0.985  # the change itself, as both make it


def test_peft_configs_llama_cpp_cannot_hold_are_refused(tmp_path):
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_dora": True})
    )
    with pytest.raises(
        LoraError, match=r"adapter_config.json: llama.cpp adapters cannot hold DoRA \(use_dora\)"
    ):
        convert_peft_adapter(tmp_path, tmp_path / "out.gguf", embedded_model_path())
    with pytest.raises(LoraError, match="has no adapter_config.json"):
        convert_peft_adapter(tmp_path / "nowhere", tmp_path / "out.gguf", embedded_model_path())
