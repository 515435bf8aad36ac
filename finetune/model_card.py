"""The model card of a run folder (``RUN/README.md``): base model, licence, data, settings, metrics before and after.

Any run type writes it from its run record (``training.json``); ``botkit finetune
eval`` writes it again with what it measured (``evaluation.json``). The card's
front matter is the Hugging Face model card metadata (licence, base model,
``library_name: peft``), so the folder can be published as it is.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botkit import __version__

from .licence import UNKNOWN, Provenance, front_matter
from .scores import EVAL_FILE, read_record

CARD_FILE = "README.md"
DATASET_CARD = "README.md"  # what `botkit export` writes beside the data
# Sections of the export's dataset card that the model card repeats.
DATASET_SECTIONS = ("## Sources", "## Date range")


def dataset_card(data: Path) -> Path | None:
    """The dataset card of the export ``data`` came from: the folder's, or the one above a format folder's file."""
    for folder in (data, data.parent, data.parent.parent) if data.is_file() else (data,):
        if (folder / DATASET_CARD).is_file():
            return folder / DATASET_CARD
    return None


def dataset_record(data: Path) -> dict[str, Any] | None:
    """What ``training.json`` keeps of the data's dataset card: its path and declared licence."""
    card = dataset_card(data)
    if card is None:
        return None
    return {"path": str(card), "license": front_matter(card).get("license") or UNKNOWN}


def write_model_card(run: Path, record: dict[str, Any]) -> Path:
    """Write ``run``/README.md from its run record (and ``evaluation.json`` when eval ran); return its path."""
    path = run / CARD_FILE
    partial = path.with_name(path.name + ".partial")
    partial.write_text(render_model_card(run, record), encoding="utf-8")
    partial.replace(path)
    return path


def render_model_card(run: Path, record: dict[str, Any]) -> str:
    base = record.get("base_model") or {}
    provenance = Provenance.from_record(base)
    data = record.get("data") or {}
    name = base.get("name") or "an unnamed model"
    out = [
        "---",
        f"license: {provenance.license}",
        *([f"license_name: {provenance.license_name}"] if provenance.license_name else []),
        *([f"license_link: {provenance.license_link}"] if provenance.license_link else []),
        f"base_model: {json.dumps(provenance.source or name)}",
        "library_name: peft",
        "tags:",
        "- lora",
        "- botkit",
        "---",
        "",
        f"# LoRA adapter of {name}",
        "",
        f"Trained by botkit {__version__} (`botkit finetune {record.get('command', 'train')}`); "
        f"card written {datetime.now(UTC).replace(microsecond=0).isoformat()}.",
    ]
    out += ["", "## Base model", ""]
    out += [
        f"- Name: {name}",
        f"- File: `{base.get('path', 'not recorded')}`",
        f"- Architecture: {base.get('architecture') or 'not recorded'}",
        f"- Author: {provenance.author or 'not declared'}",
        f"- Source: {provenance.source or 'not declared'}",
        f"- Licence: {provenance.describe()}",
    ]
    out += ["", "## Licence", ""]
    if provenance.known:
        out.append(
            f"This adapter is derived from the base model and inherits its licence, `{provenance.license}`: "
            "whoever distributes or deploys it must respect that licence's terms."
        )
    else:
        out.append(
            "unknown: the base model declares no licence (no `general.license` in its GGUF, no `license` in "
            "its model card). Find out under which terms it may be used before distributing or deploying "
            "this adapter; `botkit finetune deploy` warns about it."
        )
    card = data.get("dataset_card")
    if card:
        out.append(
            f"The training data's dataset card (`{card['path']}`) declares the licence `{card['license']}`."
        )
    out += _data_section(data, card)
    out += _settings_section(record)
    out += _metrics_section(run, record)
    return "\n".join(out) + "\n"


def _data_section(data: dict[str, Any], card: dict[str, Any] | None) -> list[str]:
    out = ["", "## Data", ""]
    out += [
        f"- Source: `{data.get('source', 'not recorded')}`",
        *(f"- File: `{path}`" for path in data.get("files", [])),
        f"- Examples: {data.get('examples', 0):,} train, {data.get('validation_examples', 0):,} validation",
    ]
    sources = data.get("sources") or []
    if len(sources) > 1:  # mixed with --mix: each source, its weight and what it gave
        for source in sources:
            out.append(
                f"- Mixed: `{source['path']}` ({source['format']}), weight {source['weight']:g}: "
                f"{source['used']:,} of its {source['examples']:,} examples"
            )
    for path, reasons in (data.get("skipped") or {}).items():
        for reason, count in sorted(reasons.items()):
            out.append(f"- Skipped in `{path}`: {count:,} {reason}")
    if data.get("hash"):
        out.append(f"- Token hash: `{data['hash']}`")
    if card:
        out += _dataset_card_sections(Path(card["path"]))
    return out


def _dataset_card_sections(card: Path) -> list[str]:
    """The export's sources and date range, as its dataset card states them (one heading level down)."""
    try:
        lines = card.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    out: list[str] = []
    keep = False
    for line in lines:
        if line.startswith("## "):
            keep = line.strip() in DATASET_SECTIONS
            if keep:
                out += ["", "#" + line.strip()]
            continue
        if keep:
            out.append(line)
    while out and not out[-1].strip():
        out.pop()
    return out


def _settings_section(record: dict[str, Any]) -> list[str]:
    settings = record.get("settings") or {}
    out = ["", "## Settings", "", "| setting | value |", "|---|---|"]
    out += [f"| {key} | {json.dumps(value)} |" for key, value in settings.items()]
    out += [
        "",
        f"Prompt format: {record.get('prompt_format', 'chat')}; backend: {record.get('backend') or 'none'}; "
        f"device: {record.get('device', 'not recorded')}.",
    ]
    return out


def _metrics_section(run: Path, record: dict[str, Any]) -> list[str]:
    out = ["", "## Metrics", "", "| | base model (before) | adapter (after) |", "|---|---|---|"]
    before, after = record.get("validation_before"), record.get("validation_after")
    out.append(f"| validation loss | {_number(before)} | {_number(after)} |")
    out.append(f"| validation perplexity | {_perplexity(before)} | {_perplexity(after)} |")
    evaluation = read_record(run / EVAL_FILE)
    if evaluation:
        split, count = evaluation.get("split", "validation"), evaluation.get("examples", 0)
        out.append(
            f"| eval loss ({split}, {count} example{'' if count == 1 else 's'}) | "
            f"{_number(evaluation.get('base_loss'))} | {_number(evaluation.get('adapter_loss'))} |"
        )
        out.append(
            f"| eval mean token F1 | {_number(evaluation.get('base_f1'))} | {_number(evaluation.get('adapter_f1'))} |"
        )
    out += [
        "",
        f"Training: {record.get('steps', 0)} of {record.get('total_steps', 0)} steps, final training loss "
        f"{_number(record.get('train_loss'))} (mean of the last 10 steps), {record.get('seconds', 0)} s.",
    ]
    if not evaluation:
        out.append(f"`botkit finetune eval {run}` adds the eval loss and the token F1 of sample answers.")
    return out


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "n/a"


def _perplexity(loss: Any) -> str:
    return f"{math.exp(min(loss, 50.0)):.2f}" if isinstance(loss, int | float) else "n/a"
