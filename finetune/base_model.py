"""Which model a fine-tune starts from, and how the bot prompts it: read from the config's backend or a flag.

Training loads the same weights the bot runs: a llama.cpp backend's GGUF file
(dequantized by transformers; unset, the embedded SmolLM2) or a transformers
backend's model folder or GGUF. The adapter records this model's name, so
``convert`` and ``deploy`` can refuse it on another one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from botkit import BotkitError, ConfigError
from botkit.ops import (
    Settings,
    embedded_model_path,
    gguf_model_name,
    raw_tables,
    read_gguf_header,
    table_path,
)
from botkit.prompts import ALPACA_VARIANTS, AlpacaVariant

from .licence import Provenance, from_gguf_metadata, from_model_folder


class BaseModelError(BotkitError):
    """The base model of a fine-tune cannot be found or read."""


@dataclass(frozen=True)
class BaseModel:
    """A model to fine-tune: a Hugging Face folder, or a GGUF file (``gguf_file`` in ``folder``)."""

    folder: Path
    gguf_file: str | None
    name: str
    architecture: str
    provenance: Provenance = field(default_factory=Provenance)

    @property
    def path(self) -> Path:
        return self.folder / self.gguf_file if self.gguf_file else self.folder

    def describe(self) -> str:
        return f"{self.name!r} ({self.path})"

    def record(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "name": self.name,
            "architecture": self.architecture,
            **self.provenance.record(),
        }


@dataclass(frozen=True)
class AdapterTarget:
    """What the adapter is trained for: the base model and the backend's prompt format and template."""

    base: BaseModel
    prompt_format: Literal["chat", "alpaca"]
    chat_template: str | None
    backend: str | None
    alpaca_variant: AlpacaVariant = "stanford"  # with prompt_format "alpaca" (botkit.prompts)


def base_model(path: Path) -> BaseModel:
    """The model at ``path``: a ``.gguf`` file or a Hugging Face model folder (config.json)."""
    path = path.expanduser().resolve()
    if path.is_file():
        try:
            header = read_gguf_header(path)
        except (OSError, ValueError) as error:
            raise BaseModelError(f"{path}: not a readable GGUF model ({error})") from None
        if header.metadata.get("general.type", "model") != "model":
            raise BaseModelError(f"{path} is a GGUF {header.metadata['general.type']}, not a model")
        architecture = str(header.metadata.get("general.architecture", ""))
        return BaseModel(
            path.parent,
            path.name,
            gguf_model_name(header.metadata, path),
            architecture,
            from_gguf_metadata(header.metadata),
        )
    config = path / "config.json"
    if not config.is_file():
        raise BaseModelError(
            f"{path} is neither a .gguf model file nor a Hugging Face model folder (no config.json there)"
        )
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BaseModelError(f"{config}: cannot read it ({error})") from None
    architectures = data.get("architectures") or [data.get("model_type", "")]
    name = data.get("_name_or_path") or path.name
    return BaseModel(path, None, str(name), str(architectures[0]), from_model_folder(path, data))


def target_from_config(settings: Settings, backend: str, override: Path | None) -> AdapterTarget:
    """The base model and prompt style of ``backend`` in the config; ``override`` replaces the model."""
    tables = raw_tables(settings)
    if backend not in tables:
        known = ", ".join(sorted(tables))
        raise ConfigError(f"no backend {backend!r} in the config (it has: {known})")
    table = tables[backend]
    label = "[" + ".".join(table_path(backend)) + "]"
    kind = table.get("type", "llamacpp")
    prompt_format = table.get("prompt_format", "chat")
    if prompt_format not in ("chat", "alpaca"):
        raise ConfigError(f"{label} prompt_format must be 'chat' or 'alpaca'")
    variant = table.get("alpaca_variant", "stanford")
    if variant not in ALPACA_VARIANTS:
        raise ConfigError(f"{label} alpaca_variant must be one of: {', '.join(ALPACA_VARIANTS)}")
    if override is not None:
        model = base_model(override)
    elif kind in ("llamacpp", "transformers"):
        model = base_model(_model_path(table))
    else:
        raise ConfigError(
            f"{label} is a {kind!r} backend, whose model is on a server: give the model to train with --base-model"
        )
    return AdapterTarget(
        model, prompt_format, table.get("chat_template"), None if override else backend, variant
    )


def _model_path(table: dict[str, Any]) -> Path:
    value = table.get("model_path")
    if value is None:
        return embedded_model_path()
    return Path(value).expanduser()  # as the backends read it: relative to the working directory


def base_model_named(path: Path, expected: str | None) -> BaseModel:
    """The model at ``path``, which must be the one named ``expected`` (what an adapter was trained on)."""
    model = base_model(path)
    if expected and model.name != expected:
        raise BaseModelError(
            f"the adapter was trained on base model {expected!r}, but {model.path} is {model.name!r}: "
            "give the model it was trained on with --base-model"
        )
    return model


def target_from_run(record: dict[str, Any]) -> AdapterTarget:
    """The target a run folder's ``training.json`` was trained for; its base model must still be there."""
    recorded = record.get("base_model") or {}
    model = base_model_named(Path(recorded.get("path", "")), recorded.get("name"))
    return AdapterTarget(
        model,
        record.get("prompt_format", "chat"),
        record.get("chat_template"),
        record.get("backend"),
        # Runs recorded before the variant was: botkit's template then ended "### Response:\n".
        record.get("alpaca_variant", "alpaca-lora"),
    )
