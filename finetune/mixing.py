"""Training on several sources at once: ``botkit finetune train DATA --mix SOURCE=WEIGHT``, ``botkit export --mix``.

The Alpaca recipe trains on synthetic instructions (``botkit finetune synth``) and
Vicuna's on real conversations; botkit's own export is the second. ``--mix`` adds
sources beside the main data: a ``synth`` output folder (its ``train.json``), another
export folder, or one data file. A source's weight scales how many of its examples a
run uses: 1 each once, 0.5 a seeded half, 2 each twice (2.5: twice, and a seeded half
once more). The choice is made once per run, so every epoch sees the same examples;
validation stays the main data's. ``training.json`` and the model card list every
source with its weight and the examples it gave. ``botkit export --mix`` writes the
chosen examples into the export's train files (every format but preference, which
needs two answers), and its dataset card lists each source the same way.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from .training_data import FORMAT_PREFERENCE, DataFiles, TrainingDataError, find_files, read_prompted

T = TypeVar("T")

SYNTH_DATA = "train.json"  # what `botkit finetune synth --out` writes (Alpaca JSON)
MAX_WEIGHT = 100.0


@dataclass(frozen=True)
class Source:
    """One extra data source of a run and its weight."""

    path: Path
    weight: float = 1.0


def parse_source(value: str) -> Source:
    """``PATH`` or ``PATH=WEIGHT`` (``--mix``); a bad weight raises ``ValueError`` saying what is allowed."""
    path, sep, weight_text = value.rpartition("=")
    if not sep:
        return Source(Path(value))
    if not path:
        raise ValueError(f"{value!r} names no data: give PATH or PATH=WEIGHT")
    try:
        weight = float(weight_text)
    except ValueError:
        raise ValueError(
            f"{value!r}: the weight {weight_text!r} is not a number (PATH=WEIGHT, e.g. data=0.5)"
        ) from None
    if not math.isfinite(weight) or not 0 < weight <= MAX_WEIGHT:
        raise ValueError(f"{value!r}: the weight must be above 0 and at most {MAX_WEIGHT:g}")
    return Source(Path(path), weight)


def source_files(path: Path) -> DataFiles:
    """The training file of a source: a synth folder's ``train.json``, an export folder's, or the file."""
    if path.is_dir() and (path / SYNTH_DATA).is_file():
        if not any((path / name).is_dir() for name in FORMAT_PREFERENCE):
            return DataFiles("alpaca", path / SYNTH_DATA, None)
    try:
        return find_files(path)
    except TrainingDataError as error:
        raise TrainingDataError(f"--mix {path}: {error}") from None


def weighted(examples: list[T], weight: float, seed: int) -> list[T]:
    """``examples`` as ``weight`` says: each ``int(weight)`` times, then a seeded share of the rest."""
    whole, share = divmod(weight, 1.0)
    chosen = examples * int(whole)
    extra = round(share * len(examples))
    if extra:
        chosen += random.Random(seed).sample(examples, extra)
    return chosen


def _parse_sources(_ctx: Any, param: Any, values: tuple[str, ...]) -> tuple[Source, ...]:
    try:
        return tuple(parse_source(value) for value in values)
    except ValueError as error:
        raise click.BadParameter(str(error), param=param) from None


def mix_option(uses: str) -> Any:
    """The ``--mix PATH[=WEIGHT]`` option of ``finetune train`` and ``export``; ``uses``: what the weight scales."""
    return click.option(
        "--mix",
        "mix",
        multiple=True,
        metavar="PATH[=WEIGHT]",
        callback=_parse_sources,
        help="more training data: a `finetune synth` folder, an export or a file; "
        f"WEIGHT scales how many of its examples {uses} (default 1; 0.5 a seeded half, 2 each twice)",
    )


@dataclass(frozen=True)
class MixedSource:
    """What one ``--mix`` source gave an export: examples read, skipped by reason, written."""

    source: Source
    format: str
    read: int
    written: int
    skipped: dict[str, int]


def read_mixed(sources: tuple[Source, ...], seed: int) -> list[tuple[MixedSource, list[Any]]]:
    """Each source's examples (``PromptedAnswer``) as its weight chooses them, with what it gave.

    The n-th source is chosen with ``seed + n``, as ``finetune train`` does.
    """
    mixed = []
    for number, source in enumerate(sources, start=1):
        files = source_files(source.path)
        try:
            examples, report = read_prompted(files.train, files.format)
        except TrainingDataError as error:
            raise TrainingDataError(f"--mix {source.path}: {error}") from None
        chosen = weighted(examples, source.weight, seed + number)
        mixed.append(
            (MixedSource(source, files.format, len(examples), len(chosen), dict(report.skipped)), chosen)
        )
    return mixed
