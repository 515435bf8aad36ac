"""llama.cpp GGUF LoRA adapter files: written from LoRA A/B matrices, or converted from a peft adapter folder.

The format is the one llama.cpp's ``convert_lora_to_gguf.py`` writes and
``llama_adapter_lora_init`` loads (see ``botkit.ops.check_adapter``, which
checks such files against a model). Besides llama.cpp's keys, every file
records the base model's name (its GGUF ``general.name``) so that botkit refuses the
adapter on another model. Needs the ``gguf`` package (``pip install 'botkit[finetune]'``).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from botkit.ops import (
    BASE_MODEL_KEY,
    GGUFHeader,
    LoraError,
    gguf_model_name,
    read_gguf_header,
    tensor_mismatches,
)

from .licence import Provenance, from_gguf_metadata, gguf_adapter_keys

# A peft LoRA weight of a llama-architecture model (``LlamaForCausalLM`` under peft).
PEFT_LORA_WEIGHT = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(?P<layer>\d+)\.(?:self_attn|mlp)\.(?P<proj>\w+)"
    r"\.lora_(?P<half>[AB])\.weight$"
)
# Hugging Face llama projection -> llama.cpp tensor, per layer ``blk.N``.
LLAMA_TENSORS = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

TensorType = Literal["f32", "f16", "bf16"]
# A LoRA pair as peft holds it: A is (rank, n_in), B is (n_out, rank); W += scale * B @ A.
LoraPair = tuple[np.ndarray, np.ndarray]


def gguf_tensor_name(peft_name: str) -> tuple[str, Literal["a", "b"]]:
    """The llama.cpp base tensor a peft LoRA weight adapts, and which half it is.

    ``base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`` ->
    ``("blk.3.attn_q.weight", "a")``. Only the attention and MLP projections of the
    llama architecture map; anything else raises ``LoraError``.
    """
    match = PEFT_LORA_WEIGHT.match(peft_name)
    if match is None or match["proj"] not in LLAMA_TENSORS:
        raise LoraError(
            f"{peft_name} is not the LoRA weight of a llama attention or MLP projection "
            f"({', '.join(LLAMA_TENSORS)}): llama.cpp adapters can only be made from those"
        )
    half: Literal["a", "b"] = "a" if match["half"] == "A" else "b"
    return f"blk.{match['layer']}.{LLAMA_TENSORS[match['proj']]}.weight", half


def write_lora_gguf(
    path: str | os.PathLike[str],
    *,
    architecture: str,
    alpha: float,
    tensors: Mapping[str, LoraPair],
    base_model: str,
    name: str | None = None,
    tensor_type: TensorType = "f32",
    provenance: Provenance | None = None,
) -> Path:
    """Write a llama.cpp LoRA adapter to ``path`` and return it.

    ``tensors`` maps a base model tensor's GGUF name (``blk.3.attn_q.weight``) to its
    LoRA pair ``(A, B)`` in peft's orientation: A ``(rank, n_in)``, B ``(n_out, rank)``.
    llama.cpp adds ``scale * alpha / rank * B @ A`` to the weight, ``scale`` being the
    backend's ``lora_scale``. ``architecture`` is the base model's ``general.architecture``
    and ``base_model`` its ``general.name`` (``base_model_identity`` reads both). The adapter
    carries the base model's ``provenance`` (its licence as ``general.license``; ``unknown``
    when not given). The file is written next to ``path`` and then moved there, so a reader
    never sees half a file.
    """
    try:
        import gguf
    except ImportError:
        raise LoraError(
            "writing GGUF adapters needs the gguf package: pip install 'botkit[finetune]'"
        ) from None

    out = Path(path)
    if not tensors:
        raise LoraError(f"{out}: no LoRA tensors to write")
    if not math.isfinite(alpha) or alpha <= 0:
        raise LoraError(f"{out}: alpha must be a positive number, not {alpha}")
    for tensor_name, (a, b) in tensors.items():
        if not tensor_name.endswith(".weight"):
            raise LoraError(f"{out}: {tensor_name} is not a weight's GGUF name (blk.N.attn_q.weight...)")
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise LoraError(
                f"{out}: {tensor_name}: A must be (rank, n_in) and B (n_out, rank); got {a.shape} and {b.shape}"
            )
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise LoraError(f"{out}: {tensor_name} holds NaN or infinite values")
    file_type, ggml_type = {
        "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
        "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
        "bf16": (gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
    }[tensor_type]

    partial = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(partial, arch=architecture)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        writer.add_name(name or f"{base_model} LoRA")
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, base_model)
        writer.add_string(BASE_MODEL_KEY, base_model)
        for key, value in gguf_adapter_keys(provenance or Provenance()).items():
            writer.add_string(key, value)
        writer.add_file_type(file_type)
        for tensor_name, (a, b) in tensors.items():
            for suffix, matrix in ((".lora_a", a), (".lora_b", b)):
                data = gguf.quants.quantize(np.ascontiguousarray(matrix, dtype=np.float32), ggml_type)
                writer.add_tensor(tensor_name + suffix, data, raw_dtype=ggml_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    partial.replace(out)
    return out


def base_model_identity(base_gguf: str | os.PathLike[str]) -> tuple[str, str]:
    """``(architecture, name)`` of a base model GGUF, as ``write_lora_gguf`` wants them."""
    path = Path(base_gguf)
    header = _read_base(path)
    return str(header.metadata.get("general.architecture", "")), gguf_model_name(header.metadata, path)


def convert_peft_adapter(
    peft_folder: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    base_gguf: str | os.PathLike[str],
    *,
    name: str | None = None,
    tensor_type: TensorType = "f32",
) -> Path:
    """Convert a peft LoRA adapter folder into a llama.cpp GGUF adapter for the model ``base_gguf``.

    Reads ``adapter_config.json`` (rank, ``lora_alpha``, rsLoRA and per-module alphas) and
    ``adapter_model.safetensors``. The base model must be of the llama architecture (as
    SmolLM2 is). Its query and key rows are stored permuted in GGUF (llama.cpp's rotary
    layout), so the B matrices of ``q_proj`` and ``k_proj`` are permuted the same way.
    Raises ``LoraError`` naming the file and the problem.
    """
    folder, base_path = Path(peft_folder), Path(base_gguf)
    config = _read_peft_config(folder)
    weights = read_safetensors(folder / ADAPTER_WEIGHTS)
    base = _read_base(base_path)
    architecture = base.metadata.get("general.architecture")
    if architecture != "llama":
        raise LoraError(
            f"{base_path}: architecture {architecture!r}; converting peft adapters is done for llama models only"
        )
    if "llama.attention.head_count" not in base.metadata:
        raise LoraError(
            f"{base_path}: no llama.attention.head_count in its metadata; is it a whole model?"
        )
    n_head = int(base.metadata["llama.attention.head_count"])
    n_head_kv = int(base.metadata.get("llama.attention.head_count_kv", n_head))

    halves: dict[str, dict[str, np.ndarray]] = {}
    modules: dict[str, str] = {}
    for weight_name, matrix in weights.items():
        tensor_name, half = gguf_tensor_name(weight_name)
        halves.setdefault(tensor_name, {})[half] = matrix
        modules[tensor_name] = weight_name.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
    alpha = float(config["lora_alpha"])
    pairs: dict[str, LoraPair] = {}
    for tensor_name, half in sorted(halves.items()):
        if set(half) != {"a", "b"}:
            raise LoraError(
                f"{folder / ADAPTER_WEIGHTS}: {modules[tensor_name]} has only lora_{set(half).pop()}"
            )
        a, b = half["a"], half["b"]
        # llama.cpp scales every pair by alpha / rank; what peft's config asks beyond that
        # (rsLoRA's alpha / sqrt(rank), a module's own alpha) is folded into B.
        module_alpha = _pattern_value(config.get("alpha_pattern") or {}, modules[tensor_name], alpha)
        rank = a.shape[0]
        wanted = module_alpha / math.sqrt(rank) if config.get("use_rslora") else module_alpha / rank
        factor = wanted * rank / alpha
        if factor != 1.0:
            b = b * factor
        if tensor_name.endswith(".attn_q.weight"):
            b = _permute_rows(b, n_head)
        elif tensor_name.endswith(".attn_k.weight"):
            b = _permute_rows(b, n_head_kv)
        pairs[tensor_name] = (a, b)

    shapes = {}
    for tensor_name, (a, b) in pairs.items():
        shapes[f"{tensor_name}.lora_a"] = (a.shape[1], a.shape[0])  # GGUF order: fastest dimension first
        shapes[f"{tensor_name}.lora_b"] = (b.shape[1], b.shape[0])
    problems = tensor_mismatches(shapes, base.tensors)
    if problems:
        raise LoraError(
            f"{folder}: the adapter, trained on {config.get('base_model_name_or_path') or 'an unnamed model'!r}, "
            f"does not fit {base_path}: {problems[0]}"
        )
    return write_lora_gguf(
        out_path,
        architecture="llama",
        alpha=alpha,
        tensors=pairs,
        base_model=gguf_model_name(base.metadata, base_path),
        name=name or folder.resolve().name,
        tensor_type=tensor_type,
        provenance=from_gguf_metadata(base.metadata),
    )


def _read_base(path: Path) -> GGUFHeader:
    try:
        return read_gguf_header(path)
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) else error
        raise LoraError(f"{path}: cannot read the base model GGUF ({reason})") from None


def _read_peft_config(folder: Path) -> dict[str, Any]:
    path = folder / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LoraError(f"{folder} is not a peft adapter folder: it has no {ADAPTER_CONFIG}") from None
    except (OSError, ValueError) as error:
        raise LoraError(f"{path}: cannot read it ({error})") from None
    unsupported = [
        reason
        for reason, present in (
            (f"it is a {config.get('peft_type')} adapter, not LoRA", config.get("peft_type") != "LORA"),
            ("DoRA (use_dora)", config.get("use_dora")),
            (
                "trained biases (bias, lora_bias)",
                config.get("bias", "none") != "none" or config.get("lora_bias"),
            ),
            ("whole modules saved (modules_to_save)", config.get("modules_to_save")),
            ("activated LoRA (alora_invocation_tokens)", config.get("alora_invocation_tokens")),
            ("fan_in_fan_out weights", config.get("fan_in_fan_out")),
        )
        if present
    ]
    if unsupported:
        raise LoraError(f"{path}: llama.cpp adapters cannot hold {'; '.join(unsupported)}")
    if not isinstance(config.get("lora_alpha"), int | float) or config["lora_alpha"] <= 0:
        raise LoraError(f"{path}: lora_alpha must be a positive number")
    return config


def _pattern_value(patterns: Mapping[str, float], module: str, default: float) -> float:
    """A per-module value of peft's ``alpha_pattern``, matched as peft matches it."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return float(value)
    return default


def _permute_rows(b: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder B's output rows as llama.cpp's converter reorders q/k weights (rotary halves interleaved)."""
    n_out, rank = b.shape
    return b.reshape(n_head, 2, n_out // n_head // 2, rank).swapaxes(1, 2).reshape(n_out, rank)


_SAFETENSORS_TYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The float tensors of a safetensors file as float32 arrays (bfloat16 too, which numpy lacks)."""
    try:
        data = path.read_bytes()
        (size,) = struct.unpack_from("<Q", data, 0)
        header = json.loads(data[8 : 8 + size])
    except FileNotFoundError:
        raise LoraError(f"{path.parent} has no {path.name}: save the adapter with peft first") from None
    except (OSError, ValueError, struct.error) as error:
        raise LoraError(f"{path}: not a readable safetensors file ({error})") from None
    header.pop("__metadata__", None)
    body = memoryview(data)[8 + size :]
    tensors = {}
    for tensor_name, info in header.items():
        kind = _SAFETENSORS_TYPES.get(info["dtype"])
        if kind is None:
            raise LoraError(f"{path}: {tensor_name} is {info['dtype']}, not a float tensor")
        start, end = info["data_offsets"]
        raw = np.frombuffer(body[start:end], dtype=kind)
        if info["dtype"] == "BF16":  # bfloat16 is the upper half of a float32
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        tensors[tensor_name] = raw.astype(np.float32).reshape(info["shape"])
    return tensors
