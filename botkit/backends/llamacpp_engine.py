"""botkit's llama.cpp serving engine: continuous batching over llama.cpp's C API.

One thread owns the model's contexts. Each step it builds one batch per context:
the next token of every sequence that is generating, then a chunk of each prompt
still being evaluated, up to ``n_batch`` tokens; one ``llama_decode`` runs them all,
and every sequence samples its next token with its own sampler chain. A request
joins between two steps and a finished one leaves at once, so a long prompt never
freezes the replies already streaming, and no reply waits for another to end.

Sequences keep their conversation's KV cache between turns (``llamacpp_kv``). Each
sequence has its own cache stream (llama.cpp's ``kv_unified = false``), laid out as
it would be if it ran alone: a greedy reply is the same alone or in a batch.

A LoRA adapter applies to a whole context, so each adapter in use gets a context of
its own over the one loaded model (the weights are shared); at most
``MAX_CONTEXTS`` exist at once, and requests take them in arrival order.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import Hashable, Sequence
from typing import Any

import llama_cpp
import numpy as np

from botkit.backend import EngineLoad
from botkit.backends.llamacpp_kv import SavedCache, SavedCaches, common_prefix, continues
from botkit.backends.llamacpp_lanes import (
    PENALTY_WINDOW,
    EngineConfig,
    EngineError,
    Job,
    Lane,
    Slot,
)
from botkit.backends.llamacpp_model import LlamaModel
from botkit.backends.reply_text import ReplyText
from botkit.types import Chunk

log = logging.getLogger("botkit.backends.llamacpp")

MAX_CONTEXTS = 2  # the base model and one adapter side by side (a canary), each with `parallel` sequences
MIN_P = 0.05  # tokens less likely than this share of the likeliest are never sampled (llama.cpp's default)
# A reply's text goes to its reader at most this often (its first text at once, its end at once):
# each handover wakes the event loop, whose thread takes CPU time from llama.cpp's on a small
# machine, and nobody reads a token's worth of text (the pipeline looks every [bot] stream_interval).
POST_INTERVAL_S = 0.05
COPY_GAIN = 4  # prompt tokens another sequence's cache must spare evaluating to be copied (a copy costs ~1)


class Engine:
    """Runs generation requests in batches on one thread; ``submit`` may be called from any thread."""

    def __init__(self, model: LlamaModel, config: EngineConfig) -> None:
        self.model = model
        self.config = config
        self.saved = SavedCaches(config.kv_cache_bytes)
        self.reused_tokens = 0
        self.evaluated_tokens = 0
        self.generated_tokens = 0
        self._lanes: dict[Hashable, Lane] = {}
        self._adapters: dict[Hashable, Any] = {}  # lane key -> (llama_adapter_lora handle, scale)
        self._waiting: deque[Job] = deque()
        self._wake = threading.Condition()
        self._closing = False
        # Prompts are evaluated in pieces of at most this size (``prompt_piece``), cut at the same places
        # whatever else runs: llama.cpp may round a prompt evaluated in other pieces slightly
        # differently, and a greedy reply must not depend on the company it was generated in.
        self.piece = max(1, min(config.prefill_chunk, config.n_batch - config.parallel))
        base = self._lane_for(None)  # made now: a context that cannot be made fails the start
        assert base is not None
        self.n_ctx_seq = llama_cpp.llama_n_ctx_seq(base.ctx)
        self._thread = threading.Thread(target=self._run, name="botkit-llamacpp-engine", daemon=True)
        self._thread.start()

    # -- from other threads ------------------------------------------------------

    def submit(self, job: Job, adapter: Any = None) -> None:
        """Queue ``job``; ``adapter`` is the loaded LoRA handle and scale its lane applies."""
        with self._wake:
            if self._closing:
                raise EngineError("the model is being unloaded")
            if job.lane is not None:
                self._adapters[job.lane] = adapter
            self._waiting.append(job)
            self._wake.notify()

    def wake(self) -> None:
        """Have the engine look at cancellations now (a consumer stopped or left)."""
        with self._wake:
            self._wake.notify()

    def load(self) -> EngineLoad:
        busy = sum(len(lane.busy) for lane in list(self._lanes.values()))
        return EngineLoad(
            slots=self.config.parallel,
            slots_in_use=busy,
            kv_cache_mb=self.saved.used / 2**20,
            kv_cache_limit_mb=self.saved.limit / 2**20,
            kv_saved=len(self.saved),
            evictions=self.saved.evictions,
            reused_tokens=self.reused_tokens,
            evaluated_tokens=self.evaluated_tokens,
        )

    def close(self) -> None:
        """Stop every job, free the contexts and wait for the thread (the model stays loaded)."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()

    # -- the engine thread -------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closing and not self._waiting and not self._running():
                    self._wake.wait()
                closing = self._closing
            if closing:
                break
            try:
                self._admit()
                self._step()
            except Exception as error:  # a bug or a llama.cpp failure outside one sequence
                log.exception("the llama.cpp engine failed a step; ending the replies in progress")
                self._recover(error)
        self._shut_down()

    def _running(self) -> list[Job]:
        return [slot.job for lane in self._lanes.values() for slot in lane.slots if slot.job is not None]

    def _admit(self) -> None:
        """Start waiting jobs, in arrival order, while sequences are free."""
        while True:
            with self._wake:  # only this thread takes jobs out, so the first stays first
                if not self._waiting:
                    return
                job = self._waiting[0]
            if job.cancel.is_set() or job.abandoned:
                with self._wake:
                    self._waiting.popleft()
                job.post(None)
                continue
            if len(self._running()) >= self.config.parallel:
                return
            lane = self._lane_for(job.lane)
            if lane is None:
                return  # every context is busy with other adapters: wait for one to empty
            with self._wake:
                self._waiting.popleft()
            try:
                self._start(lane, job)
            except Exception as error:  # the job is out of the queue and not yet in a slot: end it here
                log.exception("could not start a reply in the llama.cpp engine")
                self._finish(job, EngineError(f"could not start the reply: {error}"))

    def _lane_for(self, key: Hashable) -> Lane | None:
        lane = self._lanes.get(key)
        if lane is not None:
            return lane
        if len(self._lanes) >= MAX_CONTEXTS:
            idle = [lane for lane in self._lanes.values() if not lane.busy]
            if not idle:
                return None
            self._drop_lane(idle[0])
        adapter = self._adapters.get(key) if key is not None else None
        lane = Lane(self.model, key, self.config, adapter)
        self._lanes[key] = lane
        return lane

    def _drop_lane(self, lane: Lane) -> None:
        self.saved.drop_lane(lane.key)
        self.saved.evictions += sum(1 for slot in lane.slots if slot.cached)
        lane.free()
        del self._lanes[lane.key]

    def _start(self, lane: Lane, job: Job) -> None:
        slot = self._choose_slot(lane, job.tokens)
        shared = common_prefix(slot.cached, job.tokens)
        shared = min(shared, len(job.tokens) - 1)  # the last prompt token is evaluated for its logits
        lane.forget(slot, shared)
        self.reused_tokens += shared
        job.slot, job.evaluated = slot, len(slot.cached)
        job.text = ReplyText(job.sampling.stops)
        job.sampler = self._sampler(job)
        slot.job = job

    def _choose_slot(self, lane: Lane, tokens: Sequence[int]) -> Slot:
        idle = [slot for slot in lane.slots if slot.job is None]
        best = max(idle, key=lambda slot: common_prefix(slot.cached, tokens))
        best_shared = common_prefix(best.cached, tokens)
        saved, saved_shared = self.saved.best(lane.key, tokens)
        if continues(best.cached, best_shared) and best_shared >= saved_shared:
            return best
        victim = min(idle, key=lambda slot: slot.last_used)
        if saved is not None and saved_shared > best_shared and continues(saved.tokens, saved_shared):
            self._save(lane, victim)
            self._restore(lane, victim, saved)
            return victim
        if continues(best.cached, best_shared):
            return best
        # A new conversation, or one whose cache is gone: the least recently used sequence. When
        # another conversation begins as this prompt does (the same question in another channel, a
        # thread's shared start), its cache is copied rather than that beginning evaluated again;
        # the other conversation keeps its own, in its sequence or in host memory.
        victim_shared = common_prefix(victim.cached, tokens)
        self._save(lane, victim, keep=victim_shared)
        if saved is not None and saved_shared >= max(best_shared, victim_shared) + COPY_GAIN:
            self._restore(lane, victim, saved, keep=saved_shared)
        elif best is not victim and best_shared >= victim_shared + COPY_GAIN:
            self._copy(lane, best, victim, best_shared)
        return victim

    def _save(self, lane: Lane, slot: Slot, keep: int = 0) -> None:
        """Copy a slot's cache to host memory before another conversation takes the slot."""
        if len(slot.cached) - keep < 16:  # little to lose: not worth the memory
            return
        size = llama_cpp.llama_state_seq_get_size(lane.ctx, slot.seq)
        if not self.saved.fits(size):
            self.saved.evictions += 1
            return
        data = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(lane.ctx, data, size, slot.seq)
        if written:
            self.saved.add(SavedCache(lane.key, tuple(slot.cached), data, written))

    def _copy(self, lane: Lane, source: Slot, target: Slot, shared: int) -> None:
        """Give ``target`` the first ``shared`` tokens of ``source``'s cache (llama.cpp copies a sequence
        between cache streams only whole, so through its state bytes)."""
        size = llama_cpp.llama_state_seq_get_size(lane.ctx, source.seq)
        data = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(lane.ctx, data, size, source.seq)
        lane.forget(target)
        if written and llama_cpp.llama_state_seq_set_data(lane.ctx, data, written, target.seq):
            target.cached = list(source.cached)
            lane.forget(target, shared)
        else:
            lane.forget(target)

    def _restore(self, lane: Lane, slot: Slot, saved: SavedCache, keep: int | None = None) -> None:
        """Copy a saved cache into ``slot``: all of it, handing it back (its conversation returns),
        or its first ``keep`` tokens, keeping it saved (another conversation begins the same way)."""
        if keep is None:
            self.saved.take(saved)
        lane.forget(slot)
        if llama_cpp.llama_state_seq_set_data(lane.ctx, saved.data, saved.size, slot.seq):
            slot.cached = list(saved.tokens)
            if keep is not None:
                lane.forget(slot, keep)
        else:
            log.warning("llama.cpp could not restore a saved conversation cache; evaluating it again")
            lane.forget(slot)

    def _sampler(self, job: Job) -> Any:
        """The job's llama.cpp sampler chain; None for greedy, which ``_greedy`` does without one."""
        params = job.sampling
        if params.temperature <= 0:
            return None
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        if params.repeat_penalty > 0 and params.repeat_penalty != 1.0:  # llama.cpp takes no penalty of 0
            penalties = llama_cpp.llama_sampler_init_penalties(
                self.model.n_vocab, PENALTY_WINDOW, params.repeat_penalty, 0.0, 0.0
            )
            # Only the reply's own tokens count as repeats: the prompt's end-of-turn markers
            # would otherwise be penalized, and the model would not stop where it should.
            add(chain, penalties)
        if params.top_k > 0:
            add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        add(chain, llama_cpp.llama_sampler_init_min_p(MIN_P, 1))
        add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
        add(chain, llama_cpp.llama_sampler_init_dist(params.seed))
        return chain

    def _likeliest(self, lane: Lane, jobs: list[Job]) -> dict[Job, tuple[Any, int]]:
        """Each greedy job's logits in this step and its likeliest token, found for all in one go.

        ``llama_sampler_sample`` copies every logit into a candidates array (49,152 for SmolLM2)
        for each sequence; after a decode the CPU's caches are cold, and a few numpy calls per
        sequence cost more than one over the step's whole logits matrix. A job whose logits
        llama.cpp cannot give is left out (``_greedy`` ends it).
        """
        base = llama_cpp.llama_get_logits(lane.ctx) if jobs else None
        if not base:
            return {}
        start, row_bytes = ctypes.cast(base, ctypes.c_void_p).value or 0, 4 * self.model.n_vocab
        rows: dict[Job, int] = {}
        for job in jobs:
            pointer = llama_cpp.llama_get_logits_ith(lane.ctx, job.output)
            if pointer:
                rows[job] = ((ctypes.cast(pointer, ctypes.c_void_p).value or 0) - start) // row_bytes
        if not rows:
            return {}
        matrix = np.ctypeslib.as_array(base, shape=(max(rows.values()) + 1, self.model.n_vocab))
        best = matrix.argmax(axis=1)
        return {job: (matrix[row], int(best[row])) for job, row in rows.items()}

    def _greedy(self, job: Job, found: tuple[Any, int] | None) -> int:
        """The likeliest next token, as llama.cpp's penalties and greedy samplers would choose it.

        ``found``: the job's logits and their likeliest token (``_likeliest``). The penalty is
        applied only when that token is a repeat (a penalty above 1 only lowers logits). Same
        arithmetic in single precision: a repeated token's logit is divided by the penalty
        (multiplied when not positive), and the first of equal logits wins, so the reply is the
        one the sampler chain gives.
        """
        if found is None:
            raise EngineError("llama.cpp gave no logits for the sequence")
        logits, best = found
        penalty = job.sampling.repeat_penalty
        if penalty == 1.0 or penalty <= 0 or not job.recent:
            return best
        if penalty > 1.0 and best not in job.recent:
            return best  # the likeliest is no repeat, and a penalty above 1 lowers only repeats
        repeated = np.fromiter(set(job.recent), dtype=np.intp, count=-1)
        logits = logits.copy()
        values = logits[repeated]
        scale = np.float32(penalty)
        logits[repeated] = np.where(values <= 0, values * scale, values / scale)
        return int(logits.argmax())

    def _step(self) -> None:
        for lane in list(self._lanes.values()):
            jobs = [slot.job for slot in lane.slots if slot.job is not None]
            for job in jobs:
                if job.cancel.is_set() or job.abandoned:
                    self._finish(job, None)
            jobs = [job for job in jobs if job.slot is not None]
            if jobs:
                self._decode_lane(lane, jobs)

    def _decode_lane(self, lane: Lane, jobs: list[Job]) -> None:
        batch, room = lane.batch, self.config.n_batch
        batch.n_tokens = 0
        planned: list[tuple[Job, list[int]]] = []
        for job in jobs:  # generating sequences first: one token each
            if not job.prefilling:
                planned.append((job, [job.next_token]))
                room -= 1
        for job in jobs:  # then the next piece of each prompt being evaluated, oldest first
            if job.prefilling:
                size = self.model.prompt_piece(self.piece, len(job.slot.cached))
                piece = job.tokens[job.evaluated : job.evaluated + size]
                if len(piece) <= room:
                    planned.append((job, piece))
                    room -= len(piece)
        for job, tokens in planned:
            self._add(lane, job, tokens)
        if llama_cpp.llama_decode(lane.ctx, batch) != 0:
            self._decode_apart(lane, planned)
            return
        self._after_decode(lane, planned)

    def _after_decode(self, lane: Lane, planned: list[tuple[Job, list[int]]]) -> None:
        """Record what each sequence evaluated; sample the next token of those whose logits are out."""
        sampling: list[Job] = []
        for job, tokens in planned:
            assert job.slot is not None
            job.slot.cached.extend(tokens)
            if job.prefilling:
                job.evaluated += len(tokens)
                self.evaluated_tokens += len(tokens)
                if job.prefilling:
                    continue
            sampling.append(job)
        try:
            likeliest = self._likeliest(lane, [job for job in sampling if job.sampler is None])
        except Exception:
            log.exception("reading this step's logits failed; sampling each sequence on its own")
            likeliest = {}
        for job in sampling:
            try:
                if job.sampler is None:
                    token = self._greedy(job, likeliest.get(job))
                else:
                    token = llama_cpp.llama_sampler_sample(job.sampler, lane.ctx, job.output)
                self._take_token(job, token)
            except Exception as error:
                log.exception("sampling failed for one sequence; ending its reply")
                self._finish(job, EngineError(f"sampling failed: {error}"))

    def _add(self, lane: Lane, job: Job, tokens: list[int]) -> None:
        assert job.slot is not None
        batch, start = lane.batch, len(job.slot.cached)
        last = job.evaluated + len(tokens) >= len(job.tokens) if job.prefilling else True
        for offset, token in enumerate(tokens):
            index = batch.n_tokens
            batch.token[index] = token
            batch.pos[index] = start + offset
            batch.n_seq_id[index] = 1
            batch.seq_id[index][0] = job.slot.seq
            batch.logits[index] = last and offset == len(tokens) - 1
            batch.n_tokens += 1
        job.output = lane.batch.n_tokens - 1

    def _decode_apart(self, lane: Lane, planned: list[tuple[Job, list[int]]]) -> None:
        """The batch failed: undo it and decode each sequence alone; one that fails again ends."""
        for job, _ in planned:
            assert job.slot is not None
            lane.forget(job.slot, len(job.slot.cached))
        for job, tokens in planned:
            lane.batch.n_tokens = 0
            self._add(lane, job, tokens)
            status = llama_cpp.llama_decode(lane.ctx, lane.batch)
            if status == 0:
                self._after_decode(lane, [(job, tokens)])
                continue
            log.error("llama.cpp could not evaluate one sequence (llama_decode returned %d)", status)
            slot = job.slot
            assert slot is not None
            self._finish(
                job, EngineError(f"llama.cpp could not evaluate the text (llama_decode returned {status})")
            )
            lane.forget(slot)

    def _take_token(self, job: Job, token: int) -> None:
        assert job.text is not None
        job.generated += 1
        job.recent.append(token)
        self.generated_tokens += 1
        if self.model.is_end(token):
            self._finish(job, None, flush=True)
            return
        job.unsent_tokens += 1
        text = job.text.feed(self.model.piece(token))
        if text:
            job.unsent_text += text
            now = time.monotonic()
            if now - job.posted_at >= POST_INTERVAL_S:
                job.post(Chunk(job.unsent_text, job.unsent_tokens))
                job.unsent_text, job.unsent_tokens, job.posted_at = "", 0, now
        if job.text.stopped:
            self._finish(job, None)
        elif job.generated >= job.sampling.max_tokens or len(job.slot.cached) + 1 >= self.n_ctx_seq:
            self._finish(job, None, flush=True, truncated=True)  # at the length limit, not its end
        else:
            job.next_token = token

    def _finish(
        self, job: Job, error: Exception | None, *, flush: bool = False, truncated: bool = False
    ) -> None:
        if job.text is not None:
            text = job.unsent_text + (job.text.finish() if flush else "")
            if text or (flush and (job.unsent_tokens or truncated)):
                job.post(Chunk(text, job.unsent_tokens, truncated=truncated))
            job.unsent_text, job.unsent_tokens = "", 0
        job.post(error)
        if job.sampler is not None:
            llama_cpp.llama_sampler_free(job.sampler)
            job.sampler = None
        slot, job.slot = job.slot, None
        if slot is not None:
            slot.job = None
            slot.last_used = time.monotonic()

    def _recover(self, error: Exception) -> None:
        """After an unexpected failure: end every reply in progress and start from empty caches."""
        for lane in list(self._lanes.values()):
            for slot in lane.slots:
                if slot.job is not None:
                    self._finish(slot.job, EngineError(f"the engine failed: {error}"))
                slot.cached.clear()
            llama_cpp.llama_memory_clear(lane.memory, True)
        self.saved.clear()

    def _shut_down(self) -> None:
        for lane in list(self._lanes.values()):
            for slot in lane.slots:
                if slot.job is not None:
                    self._finish(slot.job, None)
            lane.free()
        self._lanes.clear()
        with self._wake:
            waiting, self._waiting = list(self._waiting), deque()
        for job in waiting:
            job.post(None)
        self.saved.clear()
