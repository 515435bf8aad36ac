"""Where a model comes from and under which licence: read from GGUF metadata or a Hugging Face model folder.

A fine-tune inherits its base model's licence. ``train`` records it in
``training.json`` and the run's model card, ``convert`` writes it into the GGUF
adapter (``general.license`` and the ``general.base_model.0.*`` keys), and
``deploy`` shows it and checks it against ``[finetune] allowed_licenses``.
A model that declares no licence is ``unknown``, never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botkit import BotkitError

UNKNOWN = "unknown"
# GGUF keys, most specific first, for each field (llama.cpp's convert_hf_to_gguf.py writes them from the model card).
_AUTHOR_KEYS = ("general.author", "general.organization")
_SOURCE_KEYS = ("general.source.url", "general.source.repo_url", "general.repo_url", "general.url")
# A card's YAML front matter: ``license: apache-2.0`` at the top level.
_FRONT_MATTER_KEY = re.compile(
    r"^(?P<key>license|license_name|license_link|base_model):\s*(?P<value>\S.*?)\s*$"
)


class LicenceRefused(BotkitError):
    """An adapter whose licence ``[finetune] allowed_licenses`` does not list."""


@dataclass(frozen=True)
class Provenance:
    """A model's licence (an SPDX-style identifier such as ``apache-2.0``, or ``unknown``), author and source."""

    license: str = UNKNOWN
    license_name: str | None = None
    license_link: str | None = None
    author: str | None = None
    source: str | None = None

    @property
    def known(self) -> bool:
        return self.license != UNKNOWN

    def record(self) -> dict[str, Any]:
        """The fields as ``training.json`` keeps them (``None`` for what the model does not say)."""
        return {
            "license": self.license,
            "license_name": self.license_name,
            "license_link": self.license_link,
            "author": self.author,
            "source": self.source,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Provenance:
        """Back from ``record()`` (an older ``training.json`` without the fields gives ``unknown``)."""
        return cls(
            license=_text(record.get("license")) or UNKNOWN,
            license_name=_text(record.get("license_name")),
            license_link=_text(record.get("license_link")),
            author=_text(record.get("author")),
            source=_text(record.get("source")),
        )

    def describe(self) -> str:
        """``apache-2.0`` or ``other (Llama 3 Community License, https://...)``, or ``unknown``."""
        details = [d for d in (self.license_name, self.license_link) if d]
        return f"{self.license} ({', '.join(details)})" if details else self.license


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _first(metadata: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    return next((text for key in keys if (text := _text(metadata.get(key)))), None)


def from_gguf_metadata(metadata: Mapping[str, Any]) -> Provenance:
    """The provenance a GGUF model declares (``general.license``, ``general.author``, ``general.source.url``...)."""
    return Provenance(
        license=_text(metadata.get("general.license")) or UNKNOWN,
        license_name=_text(metadata.get("general.license.name")),
        license_link=_text(metadata.get("general.license.link")),
        author=_first(metadata, _AUTHOR_KEYS),
        source=_first(metadata, _SOURCE_KEYS),
    )


def front_matter(card: Path) -> dict[str, str]:
    """The top-level ``license``, ``license_name``, ``license_link`` and ``base_model`` of a card's front matter.

    Empty when the file is missing, unreadable or has no front matter.
    """
    try:
        lines = card.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    found: dict[str, str] = {}
    if lines and lines[0].strip() == "---":
        for line in lines[1:]:
            if line.strip() == "---":
                break
            match = _FRONT_MATTER_KEY.match(line)
            if match:
                found[match["key"]] = match["value"].strip("'\"")
    return found


def from_model_folder(folder: Path, config: Mapping[str, Any]) -> Provenance:
    """The provenance of a Hugging Face model folder: its model card's front matter and ``config.json``."""
    card = front_matter(folder / "README.md")
    return Provenance(
        license=card.get("license") or UNKNOWN,
        license_name=card.get("license_name"),
        license_link=card.get("license_link"),
        author=None,
        source=card.get("base_model") or _text(config.get("_name_or_path")),
    )


def gguf_adapter_keys(provenance: Provenance) -> dict[str, str]:
    """The GGUF keys an adapter carries for its base model's provenance (what is known only)."""
    keys = {"general.license": provenance.license}
    for key, value in (
        ("general.license.name", provenance.license_name),
        ("general.license.link", provenance.license_link),
        ("general.base_model.0.author", provenance.author),
        ("general.base_model.0.url", provenance.source),
    ):
        if value:
            keys[key] = value
    return keys


def from_adapter_metadata(metadata: Mapping[str, Any]) -> Provenance:
    """The provenance an adapter GGUF carries: its licence and its base model's author and source."""
    own = from_gguf_metadata(metadata)
    return Provenance(
        license=own.license,
        license_name=own.license_name,
        license_link=own.license_link,
        author=_text(metadata.get("general.base_model.0.author")) or own.author,
        source=_text(metadata.get("general.base_model.0.url")) or own.source,
    )


def licence_problem(provenance: Provenance, allowed: Sequence[str] | None) -> str | None:
    """Why ``allowed`` (``[finetune] allowed_licenses``; unset allows any) refuses the licence, or None."""
    if allowed is None or provenance.license.lower() in {name.lower() for name in allowed}:
        return None
    what = "declares no licence (unknown)" if not provenance.known else f"is licensed {provenance.describe()}"
    return f"it {what}, which [finetune] allowed_licenses ({', '.join(allowed) or 'empty'}) does not list"
