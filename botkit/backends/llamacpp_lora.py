"""GGUF LoRA adapters for the llama.cpp backend: reading GGUF headers, checking an adapter
against the loaded model, and loading, applying and freeing adapters in llama.cpp.

The llama.cpp adapter format (what ``convert_lora_to_gguf.py`` writes and
``llama_adapter_lora_init`` reads): ``general.type = "adapter"``, ``adapter.type =
"lora"``, ``adapter.lora.alpha``, the base model's ``general.architecture``, and for
each adapted weight ``W`` of the base model a pair ``<W>.lora_a`` / ``<W>.lora_b``.
In GGUF's dimension order (fastest first) ``W`` is ``[n_in, n_out]``, ``lora_a``
``[n_in, rank]`` and ``lora_b`` ``[rank, n_out]``. ``finetune/gguf_adapter.py`` writes
such files and stores the base model's name under ``BASE_MODEL_KEY``.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botkit.errors import LoraError

log = logging.getLogger("botkit.backends.llamacpp")

# The base model an adapter was made for, as that model's GGUF names itself (``general.name``,
# else its file name): botkit refuses the adapter on a model of another name.
BASE_MODEL_KEY = "botkit.base_model.name"
# What other converters (llama.cpp's, from the model card) record; differently spelled
# names of one model are common there, so a mismatch only warns.
STANDARD_BASE_MODEL_KEY = "general.base_model.0.name"

GGUF_MAGIC = b"GGUF"
# GGUF value types: fixed-size scalars by struct format; 8 is a string, 9 an array.
_SCALAR_FORMATS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFHeader:
    """The scalar metadata of a GGUF file (arrays such as the vocabulary are skipped) and its tensor shapes.

    Shapes are in GGUF's order, fastest dimension first (as ``gguf.GGUFReader`` gives them).
    """

    metadata: dict[str, Any]
    tensors: dict[str, tuple[int, ...]]


class _Cursor:
    """Reads little-endian GGUF values from a buffer; ``struct.error`` when the buffer ends early."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.at = 0

    def take(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return value

    def skip(self, size: int) -> None:
        if self.at + size > len(self.data):
            raise struct.error("past the end")
        self.at += size

    def string(self) -> str:
        size = self.take("<Q")
        self.skip(size)
        return bytes(self.data[self.at - size : self.at]).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        """One value of GGUF type ``kind``; arrays are stepped over and give ``None``."""
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.take("<I"), self.take("<Q")
            if item in _SCALAR_FORMATS:
                self.skip(count * struct.calcsize(_SCALAR_FORMATS[item]))
            else:
                for _ in range(count):
                    self.value(item)
            return None
        if kind not in _SCALAR_FORMATS:
            raise ValueError(f"unknown GGUF value type {kind}")
        return self.take(_SCALAR_FORMATS[kind])


def read_gguf_header(path: Path) -> GGUFHeader:
    """The metadata and tensor shapes of the GGUF file at ``path``, read without its tensor data.

    Raises ``ValueError`` when the file is not GGUF or is cut off, ``OSError`` when it
    cannot be read. (``gguf.GGUFReader`` reads the same, but builds an array view of every
    vocabulary string on the way: seconds for a model, where this takes milliseconds.)
    """
    with path.open("rb") as file:
        if file.read(4) != GGUF_MAGIC:
            raise ValueError("not a GGUF file")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            try:
                return _read_header(_Cursor(data))
            except struct.error:
                raise ValueError("the file is cut off") from None


def _read_header(cursor: _Cursor) -> GGUFHeader:
    cursor.skip(4)  # the magic
    version = cursor.take("<I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_values = cursor.take("<Q"), cursor.take("<Q")
    metadata: dict[str, Any] = {}
    for _ in range(n_values):
        key = cursor.string()
        value = cursor.value(cursor.take("<I"))
        if value is not None:
            metadata[key] = value
    tensors: dict[str, tuple[int, ...]] = {}
    for _ in range(n_tensors):
        name = cursor.string()
        n_dims = cursor.take("<I")
        tensors[name] = tuple(cursor.take("<Q") for _ in range(n_dims))
        cursor.skip(4 + 8)  # the tensor's type and data offset
    return GGUFHeader(metadata, tensors)


def gguf_model_name(metadata: dict[str, Any], path: Path) -> str:
    """How a model GGUF names itself: ``general.name``, else its file name without ``.gguf``."""
    name = metadata.get("general.name")
    return name if isinstance(name, str) and name.strip() else path.name.removesuffix(".gguf")


@dataclass(frozen=True)
class ModelInfo:
    """What adapter checks need to know of the loaded model."""

    path: Path
    name: str
    architecture: str
    tensors: dict[str, tuple[int, ...]]

    @classmethod
    def read(cls, path: Path) -> ModelInfo:
        header = read_gguf_header(path)
        return cls(
            path,
            gguf_model_name(header.metadata, path),
            str(header.metadata.get("general.architecture", "")),
            header.tensors,
        )

    def describe(self) -> str:
        return f"{self.name!r} ({self.path.name})"


def tensor_mismatches(adapter: dict[str, tuple[int, ...]], model: dict[str, tuple[int, ...]]) -> list[str]:
    """Why the adapter's tensors do not fit the model's, as llama.cpp checks them; empty when they fit."""
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    problems: list[str] = []
    for name, shape in adapter.items():
        base, dot, part = name.rpartition(".")
        if dot and part in ("lora_a", "lora_b"):
            pairs.setdefault(base, {})[part] = shape
        elif not name.endswith("_norm.weight"):  # llama.cpp skips norm vectors some converters add
            problems.append(f"tensor {name} is neither a .lora_a nor a .lora_b")
    if not pairs and not problems:
        problems.append("it holds no LoRA tensors")
    for base, pair in sorted(pairs.items()):
        a, b, weight = pair.get("lora_a"), pair.get("lora_b"), model.get(base)
        if a is None or b is None:
            problems.append(f"{base} has only one of lora_a and lora_b")
        elif weight is None:
            problems.append(f"the loaded model has no tensor {base}")
        elif len(a) != 2 or len(b) != 2 or len(weight) != 2:
            problems.append(f"{base}: LoRA tensors must be matrices")
        else:
            if base.endswith("token_embd.weight"):  # A and B swap roles there (llama.cpp's inp_embd)
                fits = (weight[0], weight[1]) == (b[1], a[1])
            else:
                fits = (weight[0], weight[1]) == (a[0], b[1]) and a[1] == b[0]
            if not fits:
                problems.append(
                    f"{base} is {list(weight)} in the loaded model; lora_a {list(a)}, lora_b {list(b)}"
                )
    return problems


def adapter_base_model(metadata: dict[str, Any]) -> str | None:
    """The base model an adapter names, botkit's record first; ``None`` when it names none."""
    for key in (BASE_MODEL_KEY, STANDARD_BASE_MODEL_KEY):
        if isinstance(metadata.get(key), str) and metadata[key].strip():
            return metadata[key]
    return None


def read_adapter(path: Path, where: str) -> GGUFHeader:
    """The header of the GGUF LoRA adapter at ``path``; ``LoraError`` when it is none.

    ``where`` names the setting (``[backend] lora_path``) or command that gave the path.
    """
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise LoraError(f"{where}: {path} {problem}; give the path of a GGUF LoRA adapter file (.gguf)")
    try:
        header = read_gguf_header(path)
    except ValueError as error:
        raise LoraError(
            f"{where}: {path} is not a GGUF LoRA adapter ({error}); llama.cpp takes .gguf adapters: "
            "convert a peft adapter with botkit.finetune.gguf_adapter.convert_peft_adapter"
        ) from None
    except OSError as error:
        raise LoraError(f"{where}: cannot read {path}: {error.strerror}") from None
    kind = header.metadata.get("general.type")
    if kind != "adapter":
        raise LoraError(
            f"{where}: {path} is a GGUF {kind or 'model'} file, not a LoRA adapter "
            "(its general.type is not 'adapter'); a model goes in model_path"
        )
    if header.metadata.get("adapter.type") != "lora":
        raise LoraError(
            f"{where}: {path} is a {header.metadata.get('adapter.type')!r} adapter; only LoRA adapters apply"
        )
    return header


def check_adapter(path: Path, where: str, model: ModelInfo) -> None:
    """Raise ``LoraError`` unless ``path`` is a GGUF LoRA adapter made for ``model``.

    Refused, with both models named: another architecture, tensors that do not fit the
    model's, or (for adapters botkit wrote) another base model's name.
    """
    header = read_adapter(path, where)
    metadata = header.metadata
    base = adapter_base_model(metadata)
    made_for = f"{where}: {path} was made for base model {base or 'unnamed'!r}"
    architecture = metadata.get("general.architecture")
    if architecture != model.architecture:
        raise LoraError(
            f"{made_for} (architecture {architecture!r}), not for the loaded model {model.describe()} "
            f"(architecture {model.architecture!r})"
        )
    problems = tensor_mismatches(header.tensors, model.tensors)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise LoraError(f"{made_for}, not for the loaded model {model.describe()}: {problems[0]}{more}")
    if BASE_MODEL_KEY in metadata and metadata[BASE_MODEL_KEY] != model.name:
        raise LoraError(f"{made_for}, not for the loaded model {model.describe()}")
    if base is not None and base != model.name:
        log.warning(
            "%s: %s names base model %r, the loaded model is %s; its tensors fit, so it is applied",
            where,
            path,
            base,
            model.describe(),
        )


@dataclass
class LlamaLoras:
    """The LoRA adapters loaded into one llama.cpp model, by file, and which one its context applies.

    Every method touches llama.cpp: call them on the backend's worker thread, between generations.
    Which adapters a backend knows by which name is its ``LoraSet``'s business.
    """

    model: ModelInfo | None = None
    handles: dict[Path, Any] = field(default_factory=dict)
    applied: tuple[Path | None, float] = (None, 0.0)

    def load(self, llama: Any, path: Path, where: str) -> Path:
        """Check the adapter at ``path`` against the model and load it; its resolved path, the key to apply it."""
        import llama_cpp

        if self.model is None:
            self.model = ModelInfo.read(Path(llama.model_path))
        check_adapter(path, where, self.model)
        resolved = path.resolve()
        handle = llama_cpp.llama_adapter_lora_init(llama.model, str(resolved).encode("utf-8"))
        if not handle:
            raise LoraError(
                f"{where}: llama.cpp could not load {path} (its log above says why); "
                "the file may be cut off or damaged: write it again"
            )
        self.handles[resolved] = handle
        log.info("%s: loaded LoRA adapter %s", where, path)
        return resolved

    def apply(self, llama: Any, path: Path | None, scale: float) -> None:
        """Make the context apply the adapter loaded from ``path`` at ``scale`` (``None``: no adapter)."""
        import llama_cpp

        wanted = (path, scale if path is not None else 0.0)
        if wanted == self.applied:
            return
        if path is None:
            failed = llama_cpp.llama_set_adapters_lora(llama.ctx, None, 0, None)
        else:
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.handles[path])
            scales = (ctypes.c_float * 1)(scale)
            failed = llama_cpp.llama_set_adapters_lora(llama.ctx, handles, 1, scales)
        if failed:
            raise LoraError(f"llama.cpp could not apply the LoRA adapter {path} (error {failed})")
        self.applied = wanted
        # llama-cpp-python reuses the evaluated tokens of the previous prompt when the
        # next one starts the same way; their KV cache was computed with the other
        # adapter, so nothing evaluated before the switch may be reused.
        llama.reset()

    def free(self, llama: Any) -> None:
        """Take the adapters off the context and free them (before the model is freed)."""
        import llama_cpp

        if self.handles:
            self.apply(llama, None, 0.0)
        for handle in self.handles.values():
            llama_cpp.llama_adapter_lora_free(handle)
        self.handles.clear()
