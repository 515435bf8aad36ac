"""The torch side of the transformers backend: loading the model and its LoRA adapters.

Imported only when a transformers backend starts (``botkit.backends.transformers``
imports it inside ``start``), so botkit loads without torch. The model loads on a
worker thread; adapters attach on the model's own thread, between the batch's steps
(``transformers_batch``, which generates).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Models are loaded from local paths only: nothing may be fetched from the Hugging
# Face Hub at run time. Set before transformers (and huggingface_hub) read it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402 - after the environment above
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel  # noqa: E402

from botkit.errors import ModelLoadError  # noqa: E402

log = logging.getLogger("botkit.backends.transformers")

INSTALL_HINT = "pip install 'botkit[gpu]'"
# Tokens of context when neither the config nor the model says how many it takes.
FALLBACK_CONTEXT_WINDOW = 2048
# Config attributes that hold a model's trained context length, by model family.
CONTEXT_ATTRIBUTES = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


@dataclass(eq=False)
class LoadedModel:
    """A model and its tokenizer on their device, with what prompts and generation need from them."""

    model: PreTrainedModel
    tokenizer: Any
    device: str
    name_or_path: str
    context_window: int
    bos_text: str
    eos_text: str
    chat_template: str | None
    eos_token_ids: list[int]
    pad_token_id: int | None
    # The peft wrapper, once a first adapter is loaded; it shares the base model's layers.
    peft: Any = None
    # Guards the tokenizer: counting runs beside a generation whose streamer decodes.
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock)


def choose_device(setting: str, table: str) -> str:
    """The torch device for ``[table] device``: 'auto' is CUDA when torch finds a GPU, else the CPU."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not setting.startswith("cuda"):
        return setting
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ModelLoadError(
            f"[{table}] device = {setting!r}, but torch {torch.__version__} ({build}) finds no CUDA GPU: "
            f'set [{table}] device = "cpu" (or "auto"), or install a CUDA build of torch on a machine with a GPU'
        )
    index = int(setting.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ModelLoadError(
            f"[{table}] device = {setting!r}, but this machine has {count} CUDA GPU(s): "
            f"use cuda:0 to cuda:{count - 1}"
        )
    return setting


def choose_dtype(setting: str, device: str) -> torch.dtype:
    """The weights' dtype: 'auto' is bfloat16 on a GPU that computes it natively, else float16; float32 on a CPU."""
    if setting != "auto":
        return getattr(torch, setting)
    if not device.startswith("cuda"):
        return torch.float32
    index = int(device.partition(":")[2] or 0)
    # bfloat16 needs compute capability 8.0 (Ampere) or later; older GPUs only emulate it, slowly.
    return torch.bfloat16 if torch.cuda.get_device_capability(index)[0] >= 8 else torch.float16


# Loads that want transformers' progress bars off, counted: two backends may load at once.
_quiet_loads = 0
_quiet_lock = threading.Lock()
_saved_bars: tuple[bool, Any] | None = None


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """transformers' tqdm bars off during a load, unless standard error is a terminal that shows them.

    A log file or journal gets no bar ("Converting and de-quantizing GGUF tensors" wrote
    hundreds of lines); a terminal keeps them unless they were switched off (the finetune
    commands do, to show their own). The GGUF reader calls tqdm directly, not through
    transformers' switch, so its ``tqdm`` is swapped for a silent one meanwhile.
    """
    from transformers import modeling_gguf_pytorch_utils as gguf_reader
    from transformers.utils import logging as transformers_logging

    global _quiet_loads, _saved_bars
    if sys.stderr.isatty() and transformers_logging.is_progress_bar_enabled():
        yield
        return
    with _quiet_lock:
        if _quiet_loads == 0:
            _saved_bars = (transformers_logging.is_progress_bar_enabled(), gguf_reader.tqdm)
            transformers_logging.disable_progress_bar()
            original = gguf_reader.tqdm
            gguf_reader.tqdm = lambda *args, **kwargs: original(*args, **{**kwargs, "disable": True})
        _quiet_loads += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_loads -= 1
            if _quiet_loads == 0 and _saved_bars is not None:
                enabled, gguf_reader.tqdm = _saved_bars
                if enabled:
                    transformers_logging.enable_progress_bar()


def load(
    folder: Path,
    gguf_file: str | None,
    *,
    device: str,
    dtype: str,
    table: str,
    context_window: int | None,
    chat_template: str | None,
) -> LoadedModel:
    """Load the model in ``folder`` (or the GGUF file ``gguf_file`` in it, dequantized) and its tokenizer."""
    device = choose_device(device, table)
    torch_dtype = choose_dtype(dtype, device)
    shown = folder / gguf_file if gguf_file else folder
    options: dict[str, Any] = {"local_files_only": True}
    if gguf_file:
        options["gguf_file"] = gguf_file
    try:
        with quiet_progress_bars():
            tokenizer = AutoTokenizer.from_pretrained(folder, **options)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, **options)
    except ImportError as error:
        raise ModelLoadError(
            f"loading {shown} needs {error.name or 'a missing package'}: run `{INSTALL_HINT}`"
        ) from None
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(
            f"transformers could not load {shown} ({reason}): it may be incomplete or of a model type this "
            f"transformers does not support; set [{table}] model_path to another model folder or .gguf file"
        ) from None
    try:
        model.to(device)
    except RuntimeError as error:  # out of GPU memory, mostly
        raise ModelLoadError(
            f"{shown} does not fit on {device} in {torch_dtype} ({str(error).splitlines()[0]}): "
            f"set [{table}] dtype or device, or use a smaller model"
        ) from None
    model.eval()
    generation = model.generation_config
    eos = generation.eos_token_id if generation.eos_token_id is not None else tokenizer.eos_token_id
    eos_ids = list(eos) if isinstance(eos, list | tuple) else [] if eos is None else [eos]  # may be several
    bos = generation.bos_token_id if generation.bos_token_id is not None else tokenizer.bos_token_id
    pad = generation.pad_token_id if generation.pad_token_id is not None else tokenizer.pad_token_id
    template = chat_template or tokenizer.chat_template
    if isinstance(template, dict):  # several named templates: the chat one is "default"
        template = template.get("default")
    loaded = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        name_or_path=str(getattr(model, "name_or_path", "") or folder),
        context_window=context_window or model_context_window(model.config, tokenizer),
        # The ids come from the model's generation config: the tokenizer a GGUF file
        # converts to may name the wrong end token, and llama.cpp reads these ids too.
        bos_text=token_text(tokenizer, bos),
        eos_text=token_text(tokenizer, eos_ids[0] if eos_ids else None),
        chat_template=template,
        eos_token_ids=eos_ids,
        pad_token_id=pad if pad is not None else (eos_ids[0] if eos_ids else None),
    )
    log.info("loaded %s on %s as %s", shown, device, str(torch_dtype).removeprefix("torch."))
    return loaded


def model_context_window(config: Any, tokenizer: Any) -> int:
    for name in CONTEXT_ATTRIBUTES:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    # Tokenizers without a limit report a huge sentinel (1e30).
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000 else FALLBACK_CONTEXT_WINDOW


def token_text(tokenizer: Any, token: int | None) -> str:
    if token is None:
        return ""
    return tokenizer.decode([token], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def release(loaded: LoadedModel) -> None:
    """Drop the model's weights (and the GPU memory they held)."""
    on_gpu = loaded.device.startswith("cuda")
    loaded.model = loaded.peft = loaded.tokenizer = None
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()


# -- LoRA adapters -------------------------------------------------------------


def with_adapter(loaded: LoadedModel, peft_id: str | None) -> tuple[Any, AbstractContextManager[Any]]:
    """The model to generate with, and the scope to do it in, for adapter ``peft_id`` (None: the base)."""
    if loaded.peft is None:
        return loaded.model, nullcontext()
    if peft_id is None:
        return loaded.peft, loaded.peft.disable_adapter()
    loaded.peft.set_adapter(peft_id)
    return loaded.peft, nullcontext()


# peft saves a LoRA weight as base_model.model.<module path>.lora_A.weight (or lora_B).
_PEFT_PREFIX = "base_model.model."


def adapter_mismatches(loaded: LoadedModel, shapes: dict[str, list[int]]) -> list[str]:
    """Why LoRA weights of these shapes do not fit the loaded model's layers (empty: they fit)."""
    base = loaded.model
    problems = []
    for key, shape in shapes.items():
        if not key.startswith(_PEFT_PREFIX) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            continue
        path, kind = key.removeprefix(_PEFT_PREFIX).removesuffix(".weight").rsplit(".", 1)
        try:
            layer = base.get_submodule(path)
        except AttributeError:
            problems.append(f"the model has no layer {path}")
            continue
        if not hasattr(layer, "in_features") or len(shape) != 2:
            continue  # embeddings, convolutions: left to peft's own check
        if kind == "lora_A" and shape[1] != layer.in_features:
            problems.append(f"{path} takes {layer.in_features} inputs, the adapter's {shape[1]}")
        elif kind == "lora_B" and shape[0] != layer.out_features:
            problems.append(f"{path} gives {layer.out_features} outputs, the adapter's {shape[0]}")
    return problems


def attach_adapter(loaded: LoadedModel, folder: Path, peft_id: str) -> None:
    """Load the peft adapter in ``folder`` beside the others as ``peft_id`` (its shapes were checked).

    On failure the model is left as it was, and the error is re-raised.
    """
    from peft import PeftModel

    try:
        if loaded.peft is None:
            loaded.peft = PeftModel.from_pretrained(loaded.model, str(folder), adapter_name=peft_id)
        else:
            loaded.peft.load_adapter(str(folder), adapter_name=peft_id)
    except Exception:
        if loaded.peft is None:
            strip_lora_layers(loaded.model)  # from_pretrained had wrapped the layers before failing
        elif peft_id in loaded.peft.peft_config:
            loaded.peft.delete_adapter(peft_id)
        raise
    loaded.peft.eval()


def strip_lora_layers(model: torch.nn.Module) -> None:
    """Put back the original layers that peft wrapped in LoRA layers."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
