"""A GGUF model loaded through llama.cpp's C API (llama-cpp-python's ``llama_cpp`` bindings).

The batching engine (``llamacpp_engine``) needs the model without llama-cpp-python's
``Llama`` class, which owns one context and generates one sequence at a time. This
module loads the weights once, tokenizes and detokenizes, and routes llama.cpp's own
log lines into Python logging, so they never land on the terminal of a chat.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
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


def physical_cores() -> int:
    """CPU cores this process may run on, counting each physical core once.

    Hyperthread siblings share one core's arithmetic units, so generation gains
    nothing from a second thread on them; the count comes from ``/proc/cpuinfo`` where
    there is one, and is capped by the CPUs the process is allowed to use.
    """
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        allowed = os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            physical = core = ""
            for line in info:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical = value.strip()
                elif key == "core id":
                    core = value.strip()
                elif not key and core:
                    cores.add((physical, core))
                    physical = core = ""
            if core:
                cores.add((physical, core))
    except OSError:
        pass
    return max(1, min(allowed, len(cores) or allowed))


class LlamaModel:
    """Weights and vocabulary of one GGUF model; its tokenizer may be used from any thread."""

    def __init__(self, path: Path) -> None:
        route_native_logs()
        params = llama_cpp.llama_model_default_params()
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
        self._pieces: dict[int, bytes] = {}

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
