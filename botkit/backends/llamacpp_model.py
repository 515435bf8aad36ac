"""A GGUF model loaded through llama.cpp's C API (llama-cpp-python's ``llama_cpp`` bindings).

The batching engine (``llamacpp_engine``) needs the model without llama-cpp-python's
``Llama`` class, which owns one context and generates one sequence at a time. This
module loads the weights once, tokenizes and detokenizes, and routes llama.cpp's own
log lines into Python logging, so they never land on the terminal of a chat.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp

log = logging.getLogger("botkit.backends.llamacpp")
native_log = logging.getLogger("botkit.backends.llamacpp.native")

# ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 cont (continues the previous line).
_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}
_log_state = threading.local()
_routing_lock = threading.Lock()
_routed: Any = None  # the ctypes callback: kept alive while llama.cpp holds its pointer


def _on_native_log(level: int, text: bytes, _user_data: Any) -> None:
    # llama.cpp writes a line in pieces (level 5 continues the last one): join them per thread.
    if level != 5:
        _log_state.level = _LEVELS.get(level, logging.DEBUG)
    pending = getattr(_log_state, "text", "") + text.decode("utf-8", errors="replace")
    *lines, _log_state.text = pending.split("\n")
    for line in lines:
        if line.strip():
            native_log.log(getattr(_log_state, "level", logging.DEBUG), "%s", line)


def route_native_logs() -> None:
    """Send llama.cpp's log to the ``botkit.backends.llamacpp.native`` logger (info as DEBUG)."""
    global _routed
    with _routing_lock:
        if _routed is None:
            _routed = llama_cpp.llama_log_callback(_on_native_log)
            llama_cpp.llama_backend_init()
        llama_cpp.llama_log_set(_routed, ctypes.c_void_p(0))


def repacking_is_safe(system_info: str | None = None) -> bool:
    """Whether llama.cpp may keep weights in its extra CPU buffer types (repacked for other kernels).

    pip compiles llama.cpp for the CPU it runs on; on one with AMX (Intel Xeon since
    Sapphire Rapids) that brings in ggml's AMX kernels, which in llama.cpp 0.3.36 kill
    the process with SIGILL on the first batch of several tokens on some machines (their
    worker threads' tile configuration: ggml-org/llama.cpp pull request 26954). Those
    kernels are only reached through the AMX buffer type, so on such a build botkit
    loads every model without extra buffer types: the AVX-512 kernels do the work.
    ``system_info``: llama.cpp's ``llama_print_system_info()`` (read when not given).
    """
    if system_info is None:
        route_native_logs()  # initialises the backend, whose CPU features the text lists
        system_info = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace")
    return "AMX_INT8 = 1" not in system_info


def model_params() -> Any:
    """llama.cpp's default model parameters, without extra buffer types where they are unsafe."""
    params = llama_cpp.llama_model_default_params()
    if not repacking_is_safe():
        params.use_extra_bufts = False
    return params


_llama_class_lock = threading.Lock()


@contextlib.contextmanager
def safe_llama_class_params() -> Iterator[None]:
    """While a ``llama_cpp.Llama`` is constructed in this block, it loads its model with ``model_params()``.

    ``Llama`` takes no argument for extra buffer types: it asks ``llama_model_default_params``
    of its bindings' module, which answers ``model_params()`` here (one construction at a time).
    """
    import llama_cpp.llama_cpp as bindings

    with _llama_class_lock:
        default = bindings.llama_model_default_params
        bindings.llama_model_default_params = model_params
        try:
            yield
        finally:
            bindings.llama_model_default_params = default


def physical_cores(cpuinfo: str | None = None, allowed: int | None = None) -> int:
    """CPU cores this process may run on, counting each physical core once.

    Hyperthread siblings share one core's arithmetic units, so generation gains
    nothing from a second thread on them. The count comes from ``/proc/cpuinfo``
    (``cpuinfo``: its text) where there is one, capped by the CPUs the process may
    use (``allowed``: their number).
    """
    if allowed is None:
        try:
            allowed = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            allowed = os.cpu_count() or 1
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as file:
                cpuinfo = file.read()
        except OSError:
            cpuinfo = ""
    cores: set[tuple[str, str]] = set()
    for block in cpuinfo.split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {key.strip(): value.strip() for key, value in fields.items()}
        if "core id" in fields:
            cores.add((fields.get("physical id", ""), fields["core id"]))
    return max(1, min(allowed, len(cores) or allowed))


class LlamaModel:
    """Weights and vocabulary of one GGUF model; its tokenizer may be used from any thread."""

    def __init__(self, path: Path) -> None:
        route_native_logs()
        params = model_params()
        model = llama_cpp.llama_model_load_from_file(str(path).encode("utf-8"), params)
        if not model:
            raise ValueError("llama.cpp could not load it")
        self.model = model  # the llama_model pointer (``LlamaLoras.load`` reads this name)
        self.model_path = str(path)
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.bos = llama_cpp.llama_vocab_bos(self.vocab)
        self.eos = llama_cpp.llama_vocab_eos(self.vocab)
        # The context depth at which a new token's attention costs as much as its weights: per
        # token the weights take ~2·n_params multiply-adds and attention ~4·n_layer·n_embd per
        # cached position, which llama.cpp's CPU flash-attention kernel does ~5x slower than its
        # matrix products (SmolLM2-135M on an AVX-512 Xeon, llama-bench pp16: a token cost twice
        # its cost at the start at depth 770 with a q8_0 cache and 900 with bf16; this gives 778).
        # The batched engine's prompt pieces shrink by it (``prompt_piece``).
        layers_width = llama_cpp.llama_model_n_layer(model) * llama_cpp.llama_model_n_embd(model)
        self.doubling_depth = max(1, llama_cpp.llama_model_n_params(model) // (10 * max(1, layers_width)))
        self._pieces: dict[int, bytes] = {}

    def prompt_piece(self, most: int, position: int) -> int:
        """Prompt tokens to evaluate in one step from ``position`` of a context: ``most`` at its start,
        fewer deeper in, where each costs more (twice at ``doubling_depth``), so that a step costs about
        the same anywhere. A function of the position alone: a prompt is cut alike in any company."""
        return max(1, most * self.doubling_depth // (self.doubling_depth + position))

    def close(self) -> None:
        if self.model is not None:
            llama_cpp.llama_model_free(self.model)
            self.model = None

    def tokenize(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        data = text.encode("utf-8", errors="replace")
        room = len(data) + 2
        while True:
            tokens = (llama_cpp.llama_token * room)()
            count = llama_cpp.llama_tokenize(self.vocab, data, len(data), tokens, room, add_bos, special)
            if count >= 0:
                return list(tokens[:count])
            room = -count  # too small: llama.cpp says how many it needs

    def piece(self, token: int) -> bytes:
        """The bytes one generated token stands for (control tokens give none)."""
        cached = self._pieces.get(token)
        if cached is None:
            cached = self._token_bytes(token, special=False)
            self._pieces[token] = cached
        return cached

    def token_text(self, token: int) -> str:
        """A token as text, control tokens included (``<|im_end|>``); "" for none (-1)."""
        if token < 0:
            return ""
        return self._token_bytes(token, special=True).decode("utf-8", errors="replace")

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(token) for token in tokens).decode("utf-8", errors="replace")

    def is_end(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def _token_bytes(self, token: int, *, special: bool) -> bytes:
        size = 32
        while True:
            buffer = ctypes.create_string_buffer(size)
            count = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, size, 0, special)
            if count >= 0:
                return buffer.raw[:count]
            size = -count
