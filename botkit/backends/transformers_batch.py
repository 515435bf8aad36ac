"""Continuous batching for the transformers backend: one model thread, sequences joining and leaving between steps.

The engine's thread owns the model. Each turn of its loop it runs the jobs it
was handed (loading a LoRA adapter), lets waiting requests join the batch (their
prompts evaluated together, left-padded, then their KV cache merged into the
batch's), evaluates one token for every sequence in one forward pass, and lets
each sequence that finished leave at once. Sequences keep their own sampling,
seed, stop strings and token limit; the attention mask and position ids keep
each one's padding out of the others' sight, so greedy output is the same
alone as in a batch.

Requests for different LoRA adapters cannot share a forward pass: a batch runs
one adapter, and a request never overtakes an older one for another adapter
(it waits for the batch to drain), so none starves.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import DynamicCache, TextStreamer

from botkit.backend import EngineLoad
from botkit.backends.transformers import batch_load
from botkit.backends.transformers_cache import CacheKind, FixedRows, GrowingRows, Rows
from botkit.backends.transformers_engine import LoadedModel, with_adapter
from botkit.types import Chunk, SamplingParams

log = logging.getLogger("botkit.backends.transformers")

# Posted after a request's last chunk (or its error): the engine is done with it.
FINISHED = object()


class StopCutter(Protocol):
    """Cuts a reply at its stop strings (``botkit.backends.transformers.StopStrings``)."""

    hit: bool

    def feed(self, piece: str) -> str: ...

    def flush(self) -> str: ...


@dataclass(eq=False)
class Request:
    """One reply asked of the engine: the rendered prompt, how to sample it, and where its text goes.

    ``post`` is called on the engine's thread with each ``Chunk``, then with an
    exception when the generation failed, then with ``FINISHED``; it must not block.
    """

    text: str
    params: SamplingParams
    peft_id: str | None
    cutter: StopCutter
    cancel: threading.Event
    post: Callable[[object], None]
    # Set when the reader has gone: the reply ends without another word.
    left: threading.Event = field(default_factory=threading.Event)

    def close(self, error: BaseException | None = None) -> None:
        if error is not None:
            self.post(error)
        self.post(FINISHED)


class WordPieces(TextStreamer):
    """Turns one sequence's tokens into text in whole words, as ``TextStreamer`` decides."""

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__(loaded.tokenizer, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        self._lock = loaded.tokenizer_lock
        self._pieces: list[str] = []

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self._pieces.append(text)

    def take(self, token: int) -> str:
        """The text that token completes (often nothing: a word is shown once it has ended)."""
        with self._lock:
            self.put(torch.tensor([token]))
        return self._collect()

    def rest(self) -> str:
        """The text still held back, at the end of the reply."""
        with self._lock:
            self.end()
        return self._collect()

    def _collect(self) -> str:
        text = "".join(self._pieces)
        self._pieces.clear()
        return text


class Sequence:
    """A request in the batch: its text so far, its sampler and why it ends."""

    def __init__(self, request: Request, prompt: list[int], loaded: LoadedModel) -> None:
        self.request = request
        self.prompt = prompt
        self.length = len(prompt)  # tokens so far, prompt and reply
        self.generated = 0
        self._uncounted = 0  # tokens of text not yet handed out
        self._words = WordPieces(loaded)
        self._eos = frozenset(loaded.eos_token_ids)
        params = request.params
        self.generator: torch.Generator | None = None
        if params.temperature > 0:
            self.generator = torch.Generator(device=loaded.device)
            # Unseeded, a fresh random seed: torch's default one is the same in every process.
            if params.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(params.seed)

    def take(self, token: int, context_window: int) -> bool:
        """Add the token the model chose; True when the reply has ended with it (its text handed out)."""
        params = self.request.params
        cutter = self.request.cutter
        self.generated += 1
        self.length += 1
        self._uncounted += 1
        if token in self._eos:
            self.end()
            return True
        shown = cutter.feed(self._words.take(token))
        if shown:
            self._hand_out(shown)
        if cutter.hit:
            return True
        # A reply ends at max_tokens, or where the next token would not fit the context.
        if self.generated >= params.max_tokens or self.length >= context_window:
            self.end(at_limit=True)
            return True
        return False

    def end(self, at_limit: bool = False) -> None:
        """Hand out what was held back, unless a stop string cuts it: the reply ends.

        ``at_limit``: it ends at the length limit, so it is truncated, unless the
        text held back completes a stop string (then it ended where it should)."""
        cutter = self.request.cutter
        shown = cutter.feed(self._words.rest())
        if not cutter.hit:
            shown += cutter.flush()
        truncated = at_limit and not cutter.hit
        if shown or truncated:
            self._hand_out(shown, truncated)

    def _hand_out(self, text: str, truncated: bool = False) -> None:
        self.request.post(Chunk(text, self._uncounted, truncated=truncated))
        self._uncounted = 0


# -- sampling ------------------------------------------------------------------

# The columns of a batch's sampling tensor, one row a sequence.
TEMPERATURE, TOP_K, TOP_P, PENALTY = range(4)


def sampling_row(params: SamplingParams) -> list[float]:
    # 0 would divide by zero, and means no penalty, as in llama.cpp.
    penalty = params.repeat_penalty if params.repeat_penalty > 0 else 1.0
    return [params.temperature, float(params.top_k), params.top_p, penalty]


def choose(
    logits: torch.Tensor,
    seen: torch.Tensor,
    sampling: torch.Tensor,
    generators: list[torch.Generator | None],
) -> tuple[torch.Tensor, dict[int, Exception]]:
    """The next token of each row, and the rows whose sampler failed.

    The same arithmetic as transformers' ``generate``: its repetition penalty over
    every token seen (prompt included), then temperature, top-k and top-p.
    Greedy rows (temperature 0) take the likeliest token; each sampled row draws
    with its own generator, so one sequence's seed never moves another's.
    """
    logits = logits.float()
    penalty = sampling[:, PENALTY : PENALTY + 1]
    if bool((penalty != 1.0).any()):
        penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
        logits = torch.where(seen, penalized, logits)
    tokens = logits.argmax(dim=-1)
    sampled = [row for row, generator in enumerate(generators) if generator is not None]
    failed: dict[int, Exception] = {}
    if not sampled:
        return tokens, failed
    rows = torch.tensor(sampled, device=logits.device)
    settings = sampling[rows]
    scores = logits[rows] / settings[:, TEMPERATURE : TEMPERATURE + 1]
    vocabulary = scores.shape[-1]
    ordered = scores.sort(dim=-1, descending=True).values
    # top_k 0 means no limit; the k-th best score is the lowest one kept.
    top_k = settings[:, TOP_K].long().clamp(min=0)
    top_k = torch.where(top_k == 0, vocabulary, top_k).clamp(max=vocabulary)
    kth = ordered.gather(1, (top_k - 1).unsqueeze(1))
    scores = scores.masked_fill(scores < kth, -float("inf"))
    ascending, order = scores.sort(dim=-1)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= (1 - settings[:, TOP_P : TOP_P + 1])
    drop[:, -1] = False  # the likeliest token always stays
    scores = scores.masked_fill(drop.scatter(1, order, drop), -float("inf"))
    probabilities = scores.softmax(dim=-1)
    for index, row in enumerate(sampled):
        try:
            drawn = torch.multinomial(probabilities[index], 1, generator=generators[row])
        except RuntimeError as error:  # probabilities that are not finite: only this sequence fails
            failed[row] = error
            continue
        tokens[row] = drawn[0]
    return tokens, failed


# -- the engine --------------------------------------------------------------------


class BatchEngine:
    """The model's thread: runs jobs and generates for up to ``slots`` sequences at once."""

    def __init__(
        self, loaded: LoadedModel, *, slots: int, cache: CacheKind, mergeable: bool, context_window: int
    ) -> None:
        self.loaded = loaded
        # A cache that cannot merge sequences holds one at a time.
        self.slots = slots if mergeable else 1
        if not mergeable and slots > 1:
            log.warning(
                "%s keeps attention state that botkit cannot batch (sliding window or linear attention): "
                "it answers one request at a time, whatever [backend] parallel says",
                loaded.name_or_path,
            )
        self.context_window = context_window
        self._cache_kind = cache
        self._rows = self._new_rows()
        self._adapter: str | None = None  # the LoRA adapter of the running batch
        self._waiting: collections.deque[Request] = collections.deque()
        self._inbox: list[Request] = []
        self._jobs: list[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = []
        self._wake = threading.Condition()
        self._closing = False
        self._evaluated = 0
        self._thread = threading.Thread(target=self._run, name="botkit-transformers", daemon=True)
        self._thread.start()

    def _new_rows(self) -> Rows[Sequence]:
        if self._cache_kind == "static":
            return FixedRows(self.slots, self.loaded.model.config, self.context_window)
        return GrowingRows(self.slots)

    # -- any thread ------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Queue a request; it joins the batch between two steps."""
        with self._wake:
            self._inbox.append(request)
            self._wake.notify()

    def call(self, job: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``job(*args)`` on the model's thread, between two steps."""
        future: Future[Any] = Future()
        with self._wake:
            self._jobs.append((future, job, args))
            self._wake.notify()
        return future

    def wake(self) -> None:
        """Have the engine look at its requests again (one was cancelled or left)."""
        with self._wake:
            self._wake.notify()

    def stop(self) -> None:
        """End the thread once its jobs are done. No request may be in flight."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()

    def load(self) -> EngineLoad:
        """``Backend.load``: the slots, those in use, and the prompt tokens evaluated since start."""
        return batch_load(self.slots, in_use=self._rows.count, evaluated=self._evaluated)

    # -- the model's thread ------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._inbox or self._jobs or self._closing or self._waiting or self._rows.count):
                    self._wake.wait()
                self._waiting.extend(self._inbox)
                self._inbox.clear()
                jobs, self._jobs = self._jobs, []
                closing = self._closing
            for future, job, args in jobs:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(job(*args))
                    except BaseException as error:  # noqa: BLE001 - handed to whoever waits for the job
                        future.set_exception(error)
            if closing and not (self._waiting or self._rows.count):
                return
            try:
                self._turn()
            except Exception as error:  # noqa: BLE001 - the batch failed as a whole: its replies end with the error
                log.exception("the transformers batch failed")
                for row in self._rows.occupied():
                    owner = self._rows.owners[row]
                    assert owner is not None
                    owner.request.close(error)
                self._rows = self._new_rows()

    def _turn(self) -> None:
        """Drop what was cancelled, let waiting requests join, and take one step."""
        for request in [r for r in self._waiting if r.cancel.is_set() or r.left.is_set()]:
            self._waiting.remove(request)
            request.close()
        rows = self._rows
        ended = []
        for row in rows.occupied():
            owner = rows.owners[row]
            assert owner is not None
            if owner.request.left.is_set():
                ended.append(row)
            elif owner.request.cancel.is_set():
                owner.end()
                ended.append(row)
        self._leave(ended)
        self._admit()
        if rows.count:
            model, scope = with_adapter(self.loaded, self._adapter)
            with scope, torch.inference_mode():
                logits = rows.forward(model)
            occupied = rows.occupied()
            if len(occupied) < len(rows.owners):
                logits = logits[torch.tensor(occupied, device=logits.device)]
            self._choose(logits, occupied)

    def _admit(self) -> None:
        free = self.slots - self._rows.count
        if free == 0 or not self._waiting:
            return
        if self._rows.count == 0:
            self._adapter = self._waiting[0].peft_id
        joiners: list[Request] = []
        # In arrival order; never past an older request for another adapter, which goes once the batch drains.
        while self._waiting and len(joiners) < free and self._waiting[0].peft_id == self._adapter:
            joiners.append(self._waiting.popleft())
        owners = [owner for owner in (self._start(request) for request in joiners) if owner is not None]
        if not owners:
            return
        try:
            model, scope = with_adapter(self.loaded, self._adapter)
            with scope, torch.inference_mode():
                cache, mask, logits = self._prefill(model, [owner.prompt for owner in owners])
        except Exception as error:  # noqa: BLE001 - these prompts failed; the batch goes on
            log.exception("evaluating %d prompts failed", len(owners))
            for owner in owners:
                owner.request.close(error)
            return
        device = mask.device
        seen = torch.zeros((len(owners), logits.shape[-1]), dtype=torch.bool, device=device)
        for row, owner in enumerate(owners):
            seen[row, torch.tensor(owner.prompt, device=device)] = True
        state = {
            "tokens": torch.zeros(len(owners), dtype=torch.long, device=device),
            "positions": torch.tensor([len(owner.prompt) - 1 for owner in owners], device=device),
            "seen": seen,
            "sampling": torch.tensor([sampling_row(owner.request.params) for owner in owners], device=device),
        }
        rows = self._rows.admit(cache, mask, state, owners)
        self._choose(logits, rows)

    def _start(self, request: Request) -> Sequence | None:
        """The sequence of a joining request, or None when its prompt cannot be evaluated."""
        loaded = self.loaded
        try:
            with loaded.tokenizer_lock:
                prompt = loaded.tokenizer(request.text)["input_ids"]
            if len(prompt) >= self.context_window:
                raise ValueError(
                    f"the prompt takes {len(prompt)} tokens, and the model's context window is "
                    f"{self.context_window}: no room is left for a reply"
                )
            return Sequence(request, prompt, loaded)
        except Exception as error:  # noqa: BLE001 - this reply fails, no other
            request.close(error)
            return None

    def _prefill(
        self, model: Any, prompts: list[list[int]]
    ) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
        """Evaluate prompts together, left-padded: their cache, attention mask and last logits."""
        device = self.loaded.device
        width = max(len(prompt) for prompt in prompts)
        pad = self.loaded.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        cache = DynamicCache(config=model.config)
        output = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self._evaluated += sum(len(prompt) for prompt in prompts)
        return cache, mask, output.logits[:, -1]

    def _choose(self, logits: torch.Tensor, rows: list[int]) -> None:
        """Pick each row's next token, hand its text out, and let the rows that ended leave."""
        batch = self._rows
        assert batch.seen is not None and batch.sampling is not None
        owners = [batch.owners[row] for row in rows]
        index = torch.tensor(rows, device=logits.device)
        tokens, failed = choose(
            logits,
            batch.seen[index],
            batch.sampling[index],
            [owner.generator if owner is not None else None for owner in owners],
        )
        batch.advance(rows, tokens)
        ended, errors = [], {}
        for place, (row, token) in enumerate(zip(rows, tokens.tolist(), strict=True)):
            owner = owners[place]
            assert owner is not None
            if place in failed:
                ended.append(row)
                errors[row] = failed[place]
            elif owner.take(token, self.context_window):
                ended.append(row)
        self._leave(ended, errors)

    def _leave(self, rows: list[int], errors: dict[int, Exception] | None = None) -> None:
        """Rows whose replies have ended leave the batch; then their readers hear that they are done."""
        owners = [self._rows.owners[row] for row in rows]
        self._rows.release(rows)
        for row, owner in zip(rows, owners, strict=True):
            assert owner is not None
            owner.request.close((errors or {}).get(row))
