"""A llama.cpp context of the serving engine (``Lane``: one LoRA adapter or none, ``parallel``
sequences) and what runs in it: the engine's settings, a request (``Job``) and the sequence
holding its cache (``Slot``). ``llamacpp_engine`` schedules them."""

from __future__ import annotations

import ctypes
import threading
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from botkit.backends.llamacpp import CACHE_TYPES
from botkit.backends.llamacpp_model import LlamaModel
from botkit.backends.reply_text import ReplyText

PENALTY_WINDOW = 64  # tokens the repeat penalty looks back over, as llama.cpp's tools do


class EngineError(RuntimeError):
    """llama.cpp failed on one sequence (a decode or sampling error); the others go on."""


@dataclass(frozen=True, slots=True)
class EngineConfig:
    n_ctx: int  # tokens per sequence
    parallel: int
    n_batch: int
    n_threads: int
    n_threads_batch: int
    kv_cache_bytes: int
    prefill_chunk: int = 64  # most prompt tokens a sequence evaluates in one step (less when n_batch is small)
    flash_attn: bool = True  # as llama.cpp decides (on, on a CPU); False: off
    cache_type: str = "bf16"  # the KV cache's number format, a key of CACHE_TYPES


@dataclass(frozen=True, slots=True)
class Sampling:
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    repeat_penalty: float
    seed: int
    stops: tuple[str, ...]


@dataclass(eq=False)
class Job:
    """One generation request. ``post`` hands events to the consumer: ``Chunk``, an exception, or None (done)."""

    tokens: list[int]
    sampling: Sampling
    lane: Hashable  # the LoRA adapter it runs under: (file, scale), or None for the base model
    cancel: threading.Event
    post: Callable[[object], None]
    abandoned: bool = False  # the consumer went away
    # The engine's side, while it runs in a sequence:
    slot: Slot | None = None
    evaluated: int = 0  # prompt tokens in the sequence's cache
    next_token: int = -1  # sampled, not yet evaluated
    generated: int = 0
    unsent_text: str = ""  # generated, shown by no chunk yet (POST_INTERVAL_S)
    unsent_tokens: int = 0
    posted_at: float = 0.0  # time.monotonic() of the last chunk posted; 0 before the first
    sampler: Any = None  # its llama.cpp sampler chain; None when greedy (``Engine._greedy``)
    recent: deque[int] = field(default_factory=lambda: deque(maxlen=PENALTY_WINDOW))  # for greedy's penalty
    text: ReplyText | None = None
    output: int = -1  # index of its logits in this step's batch

    @property
    def prefilling(self) -> bool:
        return self.evaluated < len(self.tokens)


@dataclass(eq=False)
class Slot:
    """One sequence of a context: the tokens whose KV cache it holds and the job using it."""

    seq: int
    cached: list[int] = field(default_factory=list)
    job: Job | None = None
    last_used: float = 0.0


class Lane:
    """One llama.cpp context with ``parallel`` sequences, applying one LoRA adapter (or none)."""

    def __init__(self, model: LlamaModel, key: Hashable, config: EngineConfig, adapter: Any) -> None:
        self.key = key
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = config.n_ctx * config.parallel
        params.n_batch = params.n_ubatch = config.n_batch
        params.n_seq_max = config.parallel
        params.n_threads = config.n_threads
        params.n_threads_batch = config.n_threads_batch
        params.kv_unified = False  # each sequence its own cache stream: the same layout alone or batched
        params.no_perf = True
        if not config.flash_attn:
            params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.type_k = params.type_v = CACHE_TYPES[config.cache_type]
        self.ctx = llama_cpp.llama_init_from_model(model.model, params)
        if not self.ctx:
            raise EngineError(
                f"llama.cpp could not create a context of {config.parallel} x {config.n_ctx} tokens "
                "(out of memory?): lower [backend] parallel or n_ctx"
            )
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(config.n_batch, 0, 1)
        self.slots = [Slot(seq) for seq in range(config.parallel)]
        if adapter is not None:
            path_handle, scale = adapter
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(path_handle)
            scales = (ctypes.c_float * 1)(scale)
            if llama_cpp.llama_set_adapters_lora(self.ctx, handles, 1, scales):
                self.free()
                raise EngineError("llama.cpp could not apply the LoRA adapter to a new context")

    @property
    def busy(self) -> list[Slot]:
        return [slot for slot in self.slots if slot.job is not None]

    def forget(self, slot: Slot, keep: int = 0) -> None:
        """Drop the slot's cache from position ``keep`` on (all of it for 0)."""
        if not llama_cpp.llama_memory_seq_rm(self.memory, slot.seq, keep, -1):
            llama_cpp.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)  # a model that cannot cut: all
            keep = 0
        del slot.cached[keep:]

    def free(self) -> None:
        if self.ctx:
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None


__all__ = ["PENALTY_WINDOW", "EngineConfig", "EngineError", "Job", "Lane", "Sampling", "Slot"]
