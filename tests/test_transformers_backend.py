"""The transformers backend on the CPU: the embedded SmolLM2 GGUF, the same model as a folder, LoRA adapters."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_llamacpp import until_streaming

from botkit import Prompt, Reply, ReplyStatus, Role, Turn, hookimpl
from botkit.backends.llamacpp import LlamaCppBackend, LlamaCppSettings, embedded_model_path
from botkit.backends.transformers import StopStrings, TransformersBackend, TransformersSettings
from botkit.errors import ConfigError, LoraError, ModelLoadError
from botkit.testing import WAIT_TIMEOUT, eventually
from botkit.types import NO_LORA, Chunk

SYSTEM = "You are a helpful assistant."
FRANCE = "What is the capital of France?"
# Long enough that SmolLM2 keeps writing until max_tokens.
STORY = "Write a long story about a dragon."
COLOURS = "List three colours and explain why you like each of them."
GREEDY = {"temperature": 0, "max_tokens": 16}


def ask(text: str, system: str = SYSTEM) -> Prompt:
    return Prompt(system, [Turn(Role.USER, text)])


async def generate(backend: TransformersBackend, prompt: Prompt, **params: object) -> list[Chunk]:
    """The streamed chunks of one whole generation, with ``params`` over the backend's sampling."""
    sampling = dataclasses.replace(backend.settings.sampling(), **params)
    return [chunk async for chunk in backend.stream(prompt, sampling, threading.Event())]


async def answer(backend: TransformersBackend, prompt: Prompt, **params: object) -> str:
    return "".join(chunk.text for chunk in await generate(backend, prompt, **params))


async def arrivals(
    backend: TransformersBackend, name: str, seen: list[str], prompt: Prompt, **params: object
) -> list[Chunk]:
    """Like ``generate``, noting ``name`` in ``seen`` as each chunk arrives: who streamed when."""
    sampling = dataclasses.replace(backend.settings.sampling(), **params)
    chunks = []
    async for chunk in backend.stream(prompt, sampling, threading.Event()):
        seen.append(name)
        chunks.append(chunk)
    return chunks


def first_and_last(seen: list[str], name: str) -> tuple[int, int]:
    """Where ``name``'s first and last chunks came among all arrivals."""
    places = [place for place, who in enumerate(seen) if who == name]
    return places[0], places[-1]


def text_of(chunks: list[Chunk]) -> str:
    return "".join(chunk.text for chunk in chunks)


@pytest.fixture(scope="module")
def smol() -> Iterator[TransformersBackend]:
    """The embedded GGUF, dequantized, loaded once for the module (its worker threads serve any loop)."""
    backend = TransformersBackend(TransformersSettings(**GREEDY))
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.close())


@pytest.fixture(scope="module")
def smol_folder(smol, tmp_path_factory) -> Path:
    """The same model written out as a Hugging Face model folder (safetensors), as a fine-tune leaves one."""
    from safetensors.torch import save_model

    folder = tmp_path_factory.mktemp("models") / "SmolLM2-135M-Instruct"
    config = copy.deepcopy(smol.model.config)
    del config.quantization_config  # the weights were dequantized when the GGUF was read
    config.save_pretrained(folder)
    smol.model.generation_config.save_pretrained(folder)
    save_model(smol.model, str(folder / "model.safetensors"))
    smol.tokenizer.save_pretrained(folder)
    return folder


def make_lora(model, folder: Path, seed: int) -> Path:
    """A real peft LoRA adapter for ``model`` (q_proj, v_proj; r=8), with weights that change its answers."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    tuned = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in tuned.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: an adapter that changes nothing
                parameter.normal_(std=0.05)
    tuned.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def lora_folder(smol_folder, tmp_path_factory) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(smol_folder, dtype=torch.float32)
    return make_lora(base, tmp_path_factory.mktemp("adapters") / "tuned", seed=0)


@pytest.fixture(scope="module")
def foreign_lora(tmp_path_factory) -> Path:
    """An adapter made for another base model: a small random Llama with other layer sizes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    folder = make_lora(LlamaForCausalLM(config), tmp_path_factory.mktemp("adapters") / "foreign", seed=1)
    adapter_config = folder / "adapter_config.json"
    values = json.loads(adapter_config.read_text())
    values["base_model_name_or_path"] = "tiny-random-llama"
    adapter_config.write_text(json.dumps(values))
    return folder


def folder_backend(folder: Path, **settings: object) -> TransformersBackend:
    return TransformersBackend(TransformersSettings(model_path=folder, **{**GREEDY, **settings}))


# -- loading -------------------------------------------------------------------


@pytest.mark.model
def test_embedded_gguf_loads_without_model_path(smol):
    import torch

    assert smol.model_path == embedded_model_path()
    assert smol.model_name == "SmolLM2-135M-Instruct.Q4_1"  # as the llama.cpp backend names it
    assert smol.context_window == 8192  # what SmolLM2 was trained on
    weights = next(smol.model.parameters())
    # device = "auto", dtype = "auto": float32 on the CPU, half precision on a GPU.
    if torch.cuda.is_available():
        assert weights.device.type == "cuda" and weights.dtype in (torch.bfloat16, torch.float16)
    else:
        assert weights.device.type == "cpu" and weights.dtype == torch.float32


@pytest.mark.model
def test_loading_a_gguf_draws_no_progress_bars_when_stderr_is_not_a_terminal(capfd):
    from transformers import modeling_gguf_pytorch_utils
    from transformers.utils import logging as transformers_logging

    from botkit.backends import transformers_engine

    bars, reader = transformers_logging.is_progress_bar_enabled(), modeling_gguf_pytorch_utils.tqdm
    path = embedded_model_path()
    loaded = transformers_engine.load(
        path.parent, path.name, device="cpu", dtype="float32", table="backend", context_window=None,
        chat_template=None,
    )  # fmt: skip
    transformers_engine.release(loaded)
    err = capfd.readouterr().err
    assert "de-quantizing" not in err and "%|" not in err, err[-500:]
    # the switches are as they were once the load is over
    assert transformers_logging.is_progress_bar_enabled() == bars
    assert modeling_gguf_pytorch_utils.tqdm is reader


async def test_missing_model_folder_names_the_setting(tmp_path):
    missing = tmp_path / "nowhere" / "SmolLM2"
    with pytest.raises(ModelLoadError) as raised:
        await TransformersBackend(TransformersSettings(model_path=missing)).start()
    assert "[backend] model_path" in str(raised.value) and str(missing) in str(raised.value)


async def test_what_is_not_a_model_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    messages = []
    for path in (empty, text):
        with pytest.raises(ModelLoadError) as raised:
            await TransformersBackend(TransformersSettings(model_path=path)).start()
        messages.append(str(raised.value))
    assert "not a Hugging Face model folder (no config.json)" in messages[0]
    assert "neither a model folder nor a GGUF file" in messages[1]
    assert all("[backend] model_path" in message for message in messages)


async def test_a_folder_transformers_cannot_load_is_a_load_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(ModelLoadError) as raised:
        await TransformersBackend(TransformersSettings(model_path=tmp_path)).start()
    assert "transformers could not load" in str(raised.value) and str(tmp_path) in str(raised.value)


async def test_unknown_device_is_a_config_error(make_bot):
    with pytest.raises(ConfigError) as raised:
        async with make_bot({"backend": {"type": "transformers", "device": "gpu"}}):
            pass
    assert "[backend] device" in str(raised.value) and "'cuda:N'" in str(raised.value)


async def test_a_gpu_that_is_not_there_is_a_load_error():
    with pytest.raises(ModelLoadError) as raised:
        await TransformersBackend(TransformersSettings(device="cuda:99")).start()
    assert "[backend] device = 'cuda:99'" in str(raised.value)


def test_the_plugin_loads_without_torch_and_says_what_to_install():
    script = textwrap.dedent(
        """
        import asyncio, sys
        sys.modules["torch"] = None  # as if torch were not installed
        from botkit.backends.transformers import TransformersBackend, TransformersSettings
        from botkit.errors import ModelLoadError
        from botkit.plugin_host import PluginHost
        from botkit.settings import settings_from_mapping

        host = PluginHost(settings_from_mapping({}))
        host.load()
        assert "transformers" in host.registry.backends
        try:
            asyncio.run(TransformersBackend(TransformersSettings()).start())
        except ModelLoadError as error:
            print(error)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "torch is not installed" in result.stdout and "pip install 'botkit[gpu]'" in result.stdout


# -- prompts and tokens ----------------------------------------------------------


@pytest.mark.model
async def test_prompts_and_token_counts_match_the_llamacpp_backend(smol):
    llama = LlamaCppBackend(LlamaCppSettings(n_ctx=256))
    await llama.start()
    prompts = [
        ask("Hi"),
        ask("Hi", system=""),  # SmolLM2's own template adds its default system prompt
        Prompt(
            SYSTEM,
            [Turn(Role.USER, "Hi", speaker="ann"), Turn(Role.ASSISTANT, "Hello!"), Turn(Role.USER, "Bye")],
        ),
    ]
    texts = ["Hello there", "Please tell me about the history of Rome. " * 10, "a <|im_end|> in user text"]
    try:
        rendered = [(smol.render(p), llama.render(p)) for p in prompts]
        counts = [(await smol.count_tokens(p), await llama.count_tokens(p)) for p in prompts]
        text_counts = [(await smol.count_text(t), await llama.count_text(t)) for t in texts]
    finally:
        await llama.close()
    assert rendered[0][0] == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert all(ours == theirs for ours, theirs in rendered)
    assert all(ours == theirs for ours, theirs in counts + text_counts), (counts, text_counts)
    assert counts[0][0] > 5 and text_counts[1][0] > 80


@pytest.mark.model
async def test_alpaca_format_renders_the_stanford_template_and_answers(smol_folder):
    backend = folder_backend(smol_folder, prompt_format="alpaca", max_tokens=24)
    await backend.start()
    try:
        rendered = backend.render(ask("Name a colour.", system=""))
        reply = await answer(backend, ask("Name a colour.", system=""))
    finally:
        await backend.close()
    assert rendered == (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nName a colour.\n\n### Response:"
    )
    assert reply.strip() and "###" not in reply


# -- generation ----------------------------------------------------------------


@pytest.mark.model
async def test_streams_several_chunks_greedy_output_is_deterministic(smol):
    first, second = [await generate(smol, ask(FRANCE)) for _ in range(2)]
    assert len(first) > 3 and first == second
    assert "".join(chunk.text for chunk in first).startswith("The capital of France is Paris")
    assert sum(chunk.tokens for chunk in first) == 16  # runs to max_tokens; each token counted once
    assert [chunk.truncated for chunk in first] == [False] * (len(first) - 1) + [True]  # and says so
    # Ended by a stop string before max_tokens: not truncated.
    stopped = await generate(smol, ask(FRANCE), stop=(",",))
    assert "".join(chunk.text for chunk in stopped) == "The capital of France is Paris"
    assert not any(chunk.truncated for chunk in stopped)


@pytest.mark.model
async def test_a_seed_repeats_a_sampled_answer(smol):
    sampled = [await answer(smol, ask(STORY), max_tokens=8, temperature=1.2, seed=7) for _ in range(2)]
    other_seed = await answer(smol, ask(STORY), max_tokens=8, temperature=1.2, seed=8)
    assert sampled[0] == sampled[1] and other_seed != sampled[0]


@pytest.mark.model
async def test_stop_strings_end_the_reply_and_are_cut_from_it(smol):
    # "France is" spans two streamed words: its start is held back until it is complete.
    assert await answer(smol, ask(FRANCE), stop=("France is",)) == "The capital of "
    assert await answer(smol, ask(FRANCE), stop=("Paris",)) == "The capital of France is "


def test_stop_strings_release_what_turned_out_not_to_be_one():
    cutter = StopStrings(["###", "END"])
    assert [cutter.feed(piece) for piece in ("one #", "# two E", "ND")] == ["one ", "## two ", ""]
    assert cutter.hit
    unmet = StopStrings(["###"])
    assert [unmet.feed("a ##"), unmet.flush()] == ["a ", "##"] and not unmet.hit


@pytest.mark.model
async def test_cancel_and_leaving_early_stop_the_model_soon(smol):
    # Every step of the batch is one forward pass of the model: count them.
    steps: list[None] = []
    hook = smol.model.register_forward_hook(lambda *args: steps.append(None))
    cancel = threading.Event()
    params = dataclasses.replace(smol.settings.sampling(), max_tokens=400)
    chunks = []
    try:
        async for chunk in smol.stream(ask(STORY), params, cancel):
            chunks.append(chunk.text)
            if len(chunks) == 3:
                cancel.set()  # and keep reading, as the pipeline does after /stop
        # Far short of 400 tokens, give or take the few the model ran ahead of this loop.
        assert len(chunks) >= 3 and len(steps) < 100
        steps.clear()
        stream = smol.stream(ask(STORY), params, threading.Event())
        async for _ in stream:
            break
        await stream.aclose()
        assert len(steps) < 100  # the model stopped when the reader left, not after its 400 tokens
    finally:
        hook.remove()
    assert (await answer(smol, ask(FRANCE))).startswith("The capital of France is Paris")
    assert smol.load().slots_in_use == 0


# -- batching ------------------------------------------------------------------


def test_parallel_sets_how_many_requests_generate_at_once():
    assert TransformersBackend(TransformersSettings()).concurrency == 4
    backend = TransformersBackend(TransformersSettings(parallel=8))
    assert backend.concurrency == 8  # the generation queue lets this many through
    assert backend.load().slots == 8 and backend.load().slots_in_use == 0


@pytest.mark.model
async def test_greedy_replies_are_what_transformers_generate_gives(smol):
    import torch

    inputs = smol.tokenizer(smol.render(ask(FRANCE)), return_tensors="pt")
    with torch.inference_mode():
        output = smol.model.generate(**inputs, max_new_tokens=16, do_sample=False, repetition_penalty=1.1)
    expected = smol.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert await answer(smol, ask(FRANCE)) == expected


@pytest.mark.model
async def test_replies_are_the_same_alone_and_in_a_batch(smol):
    prompts = {"france": ask(FRANCE), "hi": ask("Hi"), "colours": ask(COLOURS)}
    seeded = {"max_tokens": 12, "temperature": 1.0, "seed": 7}
    alone = {name: await generate(smol, prompt) for name, prompt in prompts.items()}
    alone["story"] = await generate(smol, ask(STORY), **seeded)
    seen: list[str] = []
    together = await asyncio.gather(
        *(arrivals(smol, name, seen, prompt) for name, prompt in prompts.items()),
        arrivals(smol, "story", seen, ask(STORY), **seeded),
    )
    # The same chunks, token counts included: left padding, the attention mask and the
    # position ids hide the other rows, and a seed draws from its sequence's own generator.
    assert dict(zip([*prompts, "story"], together, strict=True)) == alone
    spans = [first_and_last(seen, name) for name in alone]
    assert max(first for first, _ in spans) < min(last for _, last in spans)  # all four streamed at once


@pytest.mark.model
async def test_a_request_joins_a_running_batch_and_changes_no_reply(smol):
    story_alone = await generate(smol, ask(STORY), max_tokens=48)
    france_alone = await generate(smol, ask(FRANCE))
    seen: list[str] = []
    story = asyncio.create_task(arrivals(smol, "story", seen, ask(STORY), max_tokens=48))
    await eventually(lambda: seen or story.done(), what="the story to stream")
    france = await arrivals(smol, "france", seen, ask(FRANCE))
    assert await story == story_alone and france == france_alone
    # It joined the story's batch and left it while the story went on.
    assert first_and_last(seen, "france")[1] < first_and_last(seen, "story")[1]


@pytest.mark.model
async def test_each_sequence_keeps_its_own_stop_strings(smol):
    full = await answer(smol, ask(FRANCE))
    cut_across_words, cut_at_word, uncut = await asyncio.gather(
        answer(smol, ask(FRANCE), stop=("France is",)),
        answer(smol, ask(FRANCE), stop=("Paris",)),
        answer(smol, ask(FRANCE)),
    )
    assert (cut_across_words, cut_at_word) == ("The capital of ", "The capital of France is ")
    assert uncut == full


@pytest.mark.model
async def test_cancelling_one_sequence_leaves_the_others_untouched(smol):
    prompts = [ask(STORY), ask(STORY), ask(COLOURS)]
    alone = [await generate(smol, prompt, max_tokens=40) for prompt in prompts[1:]]
    tokens = [await smol.count_tokens(prompt) for prompt in prompts]
    evaluated = smol.load().evaluated_tokens
    params = dataclasses.replace(smol.settings.sampling(), max_tokens=40)
    cancel = threading.Event()
    seen: list[str] = []
    in_use = []

    async def cancelled() -> list[Chunk]:
        chunks = []
        async for chunk in smol.stream(prompts[0], params, cancel):
            chunks.append(chunk)
            if not cancel.is_set() and {"story", "colours"} <= set(seen):  # all three are generating
                in_use.append(smol.load().slots_in_use)
                cancel.set()
        return chunks

    stopped, *others = await asyncio.gather(
        cancelled(),
        arrivals(smol, "story", seen, prompts[1], max_tokens=40),
        arrivals(smol, "colours", seen, prompts[2], max_tokens=40),
    )
    assert others == alone
    assert text_of(alone[0]).startswith(text_of(stopped)) and sum(c.tokens for c in stopped) < 40
    assert in_use == [3]
    load = smol.load()
    assert load.slots_in_use == 0 and load.evaluated_tokens - evaluated == sum(tokens)
    assert load.reused_tokens == 0 and load.kv_saved == 0


@pytest.mark.model
async def test_a_prompt_that_cannot_fit_fails_alone(smol):
    france = await answer(smol, ask(FRANCE))
    too_long, fine = await asyncio.gather(
        answer(smol, ask("word " * 9000)), answer(smol, ask(FRANCE)), return_exceptions=True
    )
    assert isinstance(too_long, ValueError) and "context window is 8192" in str(too_long)
    assert fine == france


@pytest.mark.model
async def test_the_static_cache_gives_the_same_replies(smol_folder):
    # A context of 80 tokens: the longer prompt joining moves the story right in the
    # cache, and the story, running on, reaches the cache's end and is moved back left.
    backend = folder_backend(smol_folder, cache_implementation="static", context_window=80, parallel=2)
    await backend.start()
    try:
        story_alone = await generate(backend, ask(STORY), max_tokens=100)
        colours_alone = await generate(backend, ask(COLOURS), max_tokens=30)
        seen: list[str] = []
        story = asyncio.create_task(arrivals(backend, "story", seen, ask(STORY), max_tokens=100))
        await eventually(lambda: seen or story.done(), what="the story to stream")
        colours = await arrivals(backend, "colours", seen, ask(COLOURS), max_tokens=30)
        story_together = await story
    finally:
        await backend.close()
    assert story_together == story_alone and colours == colours_alone
    # The story ran until the context was full: 80 tokens with its prompt.
    assert sum(chunk.tokens for chunk in story_alone) < 100
    assert first_and_last(seen, "colours")[1] < first_and_last(seen, "story")[1]


# -- LoRA adapters -------------------------------------------------------------


@pytest.mark.model
async def test_a_lora_adapter_changes_the_answer_and_switches_off(smol_folder, lora_folder, foreign_lora):
    backend = folder_backend(smol_folder)
    await backend.start()
    try:
        base = await answer(backend, ask(FRANCE))
        note = await backend.switch_lora(str(lora_folder))
        tuned = await answer(backend, ask(FRANCE))
        without = await answer(backend, ask(FRANCE), lora=NO_LORA)
        active = backend.active_lora
        with pytest.raises(LoraError) as refused:
            await backend.switch_lora(str(foreign_lora))
        still_tuned = await answer(backend, ask(FRANCE))
        await backend.switch_lora(None)
        switched_off = await answer(backend, ask(FRANCE))
    finally:
        await backend.close()
    assert base.startswith("The capital of France is Paris")
    assert tuned != base and note == f"backend now answers with LoRA adapter {lora_folder}"
    assert active == str(lora_folder)
    assert without == base and switched_off == base
    assert "tiny-random-llama" in str(refused.value) and "SmolLM2-135M-Instruct" in str(refused.value)
    assert still_tuned == tuned  # the refused adapter left the model as it was


def trained_on(lora: Path, base: str, folder: Path) -> Path:
    """A copy of ``lora`` whose adapter_config.json names ``base`` as its base model."""
    import shutil

    shutil.copytree(lora, folder)
    config = folder / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": base}))
    return folder


@pytest.mark.model
async def test_an_adapter_trained_on_the_embedded_gguf_loads_into_it_without_a_warning(
    smol, lora_folder, tmp_path, caplog
):
    # `botkit finetune train` records the .gguf file; transformers knows the model by its folder.
    same = trained_on(lora_folder, str(embedded_model_path().resolve()), tmp_path / "same")
    other = trained_on(lora_folder, "/models/Other-135M.Q8_0.gguf", tmp_path / "other")
    caplog.set_level("WARNING", logger="botkit.backends.transformers")
    try:
        await smol.switch_lora(str(same))
        quiet = [r.getMessage() for r in caplog.records]
        await smol.switch_lora(str(other))
    finally:
        await smol.switch_lora(None)
    assert quiet == []
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "was trained on '/models/Other-135M.Q8_0.gguf'" in warning
    assert f"the loaded model is '{embedded_model_path()}'" in warning


@pytest.mark.model
async def test_configured_adapters_load_at_start_and_apply_per_request(smol_folder, lora_folder):
    backend = folder_backend(smol_folder, loras={"tuned": lora_folder}, lora_path=lora_folder)
    await backend.start()
    try:
        active = backend.active_lora
        default = await answer(backend, ask(FRANCE))
        named = await answer(backend, ask(FRANCE), lora="tuned")
        base = await answer(backend, ask(FRANCE), lora=NO_LORA)
    finally:
        await backend.close()
    assert backend.loras == {"tuned": str(lora_folder)} and active == str(lora_folder)
    assert default == named != base


@pytest.mark.model
async def test_adapters_take_turns_and_none_starves(smol_folder, lora_folder):
    backend = folder_backend(smol_folder, loras={"tuned": lora_folder}, parallel=4)
    await backend.start()
    try:
        base_alone = await generate(backend, ask(FRANCE))
        tuned_alone = await generate(backend, ask(FRANCE), lora="tuned")
        seen: list[str] = []
        story = asyncio.create_task(arrivals(backend, "story", seen, ask(STORY), max_tokens=40))
        await eventually(lambda: seen or story.done(), what="the story to stream")
        # The tuned request cannot share the story's batch; the base one could, but never
        # overtakes the tuned one that came before it.
        tuned = asyncio.create_task(arrivals(backend, "tuned", seen, ask(FRANCE), lora="tuned"))
        base = asyncio.create_task(arrivals(backend, "base", seen, ask(FRANCE)))
        await asyncio.gather(story, tuned, base)
    finally:
        await backend.close()
    assert tuned.result() == tuned_alone != base_alone == base.result()
    spans = [first_and_last(seen, name) for name in ("story", "tuned", "base")]
    assert spans[0][1] < spans[1][0] and spans[1][1] < spans[2][0], seen


@pytest.mark.model
async def test_an_adapter_for_another_base_model_is_refused_at_start(smol_folder, foreign_lora):
    with pytest.raises(LoraError) as raised:
        await folder_backend(smol_folder, loras={"other": foreign_lora}).start()
    message = str(raised.value)
    assert "[backend] loras.other" in message and str(foreign_lora) in message
    assert "'tiny-random-llama'" in message and "'SmolLM2-135M-Instruct'" in message
    assert "takes 576 inputs, the adapter's 64" in message


async def test_adapter_folders_are_checked_before_the_model_loads(tmp_path, monkeypatch):
    def load(*args):
        raise AssertionError("the model was loaded before the adapter folders were checked")

    monkeypatch.setattr(TransformersBackend, "_load", load)
    not_adapter = tmp_path / "not-an-adapter"
    not_adapter.mkdir()
    missing = tmp_path / "nowhere"
    for settings, key, problem in [
        (TransformersSettings(lora_path=missing), "[backend] lora_path", "does not exist"),
        (
            TransformersSettings(loras={"x": not_adapter}),
            "[backend] loras.x",
            "has no adapter_config.json",
        ),
    ]:
        with pytest.raises(LoraError) as raised:
            await TransformersBackend(settings).start()
        assert key in str(raised.value) and problem in str(raised.value)


def test_none_cannot_name_a_lora():
    with pytest.raises(ValueError, match="means the base model"):
        TransformersSettings(loras={NO_LORA: Path("x")})


# -- through the bot -----------------------------------------------------------


def bot_config(folder: Path, **backend: object) -> dict:
    return {"backend": {"type": "transformers", "model_path": str(folder), **GREEDY, **backend}}


@pytest.mark.model
async def test_bot_answers_and_an_override_applies_the_adapter(make_bot, smol_folder, lora_folder):
    replies: list[Reply] = []

    class Record:
        @hookimpl
        def botkit_after_reply(self, reply):
            replies.append(reply)

    config = {
        **bot_config(smol_folder, loras={"tuned": str(lora_folder)}),
        "overrides": {"test:tuned": {"lora": "tuned"}},
    }
    async with make_bot(config, plugins={"record": Record()}) as bot:
        base = await bot.chat.say(FRANCE, channel="general")
        tuned = await bot.chat.say(FRANCE, channel="tuned")
    assert base.status is ReplyStatus.TRUNCATED  # 16 tokens (max_tokens) of its answer
    assert tuned.status in (ReplyStatus.COMPLETED, ReplyStatus.TRUNCATED)
    assert len(base.updates) > 1 and base.updates[-1] == base.final
    assert "Paris" in base.final and tuned.final != base.final
    assert [(r.backend, r.model, r.lora) for r in replies] == [
        ("transformers", "SmolLM2-135M-Instruct", None),
        ("transformers", "SmolLM2-135M-Instruct", "tuned"),
    ]
    assert replies[0].completion_tokens == 16


@pytest.mark.model
async def test_bot_stop_ends_the_generation(make_bot, smol_folder):
    async with make_bot(bot_config(smol_folder, max_tokens=400)) as bot:
        task, story = bot.chat.say_nowait(STORY, user="alice", channel="one")
        await until_streaming(story)
        stop = await asyncio.wait_for(bot.chat.say("/stop", user="alice", channel="one"), WAIT_TIMEOUT)
        await asyncio.wait_for(task, WAIT_TIMEOUT)
        after = await bot.chat.say(FRANCE, user="alice", channel="one")
    assert stop.texts == ["Stopped."]
    assert story.status is ReplyStatus.STOPPED and story.final.endswith("[stopped]")
    # Well short of the 400 tokens asked for; words made while /stop was on its way still show.
    assert len(story.updates) < 200
    assert after.status is ReplyStatus.COMPLETED and "Paris" in after.final
