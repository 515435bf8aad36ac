"""``[backend] engine = "single"``: llama-cpp-python's ``Llama`` answering one conversation at a time.

The engine botkit used before its batched one, kept as a fallback: a conversation
waits for the one before it, and a prompt whose start matches the previous prompt
reuses its evaluated tokens.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from botkit.backends.llamacpp import CACHE_TYPES, LlamaCppBase, LlamaCppSettings, threads
from botkit.backends.llamacpp_model import safe_llama_class_params
from botkit.streaming import iterate_in_thread
from botkit.types import Chunk, Prompt, SamplingParams


class SingleLlamaCppBackend(LlamaCppBase):
    """One llama.cpp context: one generation at a time, on a dedicated worker thread."""

    concurrency = 1

    def __init__(self, settings: LlamaCppSettings) -> None:
        super().__init__(settings)
        self._llama: Any = None
        self._add_bos = False
        # One thread owns the llama.cpp context: generations never overlap.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="botkit-llamacpp")

    @property
    def context_window(self) -> int:
        return self._llama.n_ctx() if self._llama is not None else self.settings.n_ctx

    async def _open(self, path: Path) -> None:
        loop = asyncio.get_running_loop()
        self._llama = await loop.run_in_executor(self._worker, self._load, path)
        self._add_bos = self._llama.metadata.get("tokenizer.ggml.add_bos_token", "true") == "true"

    def _load(self, path: Path) -> Any:
        from llama_cpp import Llama

        # llama-cpp-python derives the seed of every unseeded generation from this
        # one, so llama.cpp's "random" sentinel (0xFFFFFFFF) would make every process
        # sample the same replies: an unset seed is drawn here instead.
        seed = self.settings.seed
        if seed is None:
            seed = random.randrange(1, 2**32 - 1)
        generation, batch = threads(self.settings)
        try:
            with safe_llama_class_params():
                return Llama(
                    model_path=str(path),
                    n_ctx=self.settings.n_ctx,
                    n_threads=generation,
                    n_threads_batch=batch,
                    n_batch=self.settings.n_batch,
                    # [backend] flash_attn, on unless set: llama-cpp-python's own default is off, and
                    # off llama.cpp 0.3.36's attention over several prompt tokens per step answered
                    # wrongly on an AVX2-only AMD EPYC (SmolLM2 replied in French nonsense); on is
                    # llama.cpp's default and the batched engine's, so the two engines agree.
                    flash_attn=self.settings.flash_attn,
                    type_k=CACHE_TYPES[self.settings.cache_type],
                    type_v=CACHE_TYPES[self.settings.cache_type],
                    seed=seed,
                    verbose=False,
                )
        except (ValueError, RuntimeError) as error:
            raise self._load_error(path, error) from None

    def _model_template(self) -> str | None:
        return self._llama.metadata.get("tokenizer.chat_template")

    def _special_tokens(self) -> tuple[str, str]:
        return self._token_text(self._llama.token_bos()), self._token_text(self._llama.token_eos())

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

    async def _load_lora(self, path: Path, where: str) -> Path:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._engine_loras.load, self._llama, path, where)

    def tokenize(self, text: str) -> list[int]:
        return self._llama.tokenize(text.encode("utf-8"), add_bos=self._add_bos, special=True)

    async def count_text(self, text: str) -> int:
        encoded = text.encode("utf-8", errors="replace")
        tokens = await asyncio.to_thread(self._llama.tokenize, encoded, False, False)
        return len(tokens)

    async def count_tokens(self, prompt: Prompt) -> int:
        text = self.render(prompt)
        # Tokenizing reads only the vocabulary, so it may run beside a generation.
        return len(await asyncio.to_thread(self.tokenize, text))

    def stream(self, prompt: Prompt, params: SamplingParams, cancel: threading.Event) -> AsyncIterator[Chunk]:
        text = self.render(prompt)
        lora = self._loras.handle_for(params.lora)
        stop = list(self.stops(params))

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
                    choice = part["choices"][0]
                    if choice["text"]:  # the closing part carries only the finish reason, no token
                        yield Chunk(choice["text"])
                    if choice.get("finish_reason") == "length":  # stopped at max_tokens or the context
                        yield Chunk("", tokens=0, truncated=True)
            finally:
                completion.close()

        return iterate_in_thread(generate, cancel, self._worker)
