"""The catalogue of past exports and training runs, and the adapter each backend uses: ``botkit finetune runs``.

``catalogue(settings)`` looks in ``[finetune] folders`` (each folder and its sub-folders)
for export folders (``botkit export``: a dataset card and format folders) and run
folders (``botkit finetune train`` / ``dpo``: ``training.json``), adds the runs whose
adapter a backend uses and the exports a run trained on, and says which adapter each
llama.cpp backend of the config uses (and the running bot, when one answers). The CLI
and the console's Exports and runs page print the same catalogue. A folder that cannot
be read, or an export or run cut short, is listed with its problem: never an exception.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botkit import BotkitError, NoRunningBot
from botkit.ops import Ask, Settings, config_table, control_socket_path, load_bot, request_sync

from .examples import FORMATS
from .export import CARD
from .formats import SPLITS, file_name
from .gate import REPORT_FILE
from .rollback import RollbackError, rollback_target
from .scores import EVAL_FILE
from .settings import FinetuneSettings
from .train import ADAPTER_FOLDER, CHECKPOINTS, CONVERTED_FILE, RUN_FILE

CARD_CHARS = 64_000  # the most of a dataset card shown
STATUS_TIMEOUT = 3.0  # seconds the running bot has to say which adapter it uses
EXPORTED_ON = re.compile(r"^Exported by botkit \S+ on (\S+) ", re.MULTILINE)
FILE_ROW = re.compile(r"^\| `([^`]+)` \| ([\d,]+) \|$", re.MULTILINE)
PARTIAL_EXPORT = re.compile(r"^\.(.+)\.partial-\d+$")  # the staging folder of an export (export.py)


@dataclass(frozen=True, slots=True)
class ExportEntry:
    """One export folder: its formats, records per file (from its card), the card's text."""

    folder: Path
    date: datetime | None
    formats: tuple[str, ...]
    records: dict[str, int]  # file (relative to the folder) -> records, as the card lists them
    card: str | None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RunEntry:
    """One training run folder and what its ``training.json`` (and ``evaluation.json``) say."""

    folder: Path
    kind: str  # "sft" (finetune train), "dpo", or "unknown"
    status: str  # "complete", "interrupted" or "unreadable"
    date: datetime | None  # when training.json was last written
    base_model: str | None = None
    backend: str | None = None  # the backend the adapter is for
    data: str | None = None  # the export it trained on
    steps: int | None = None
    total_steps: int | None = None
    final_loss: float | None = None  # mean of the last 10 steps' training loss
    best_loss: float | None = None  # the lowest step loss recorded
    validation_before: float | None = None
    validation_after: float | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)  # evaluation.json: base/adapter loss and F1
    files: tuple[str, ...] = ()  # adapter/ (peft), adapter.gguf, redteam.json, evaluation.json, README.md
    checkpoints: int = 0
    problems: tuple[str, ...] = ()

    @property
    def adapter(self) -> Path | None:
        """The GGUF adapter deploy would deploy (``convert`` wrote it), if there is one."""
        return self.folder / CONVERTED_FILE if CONVERTED_FILE in self.files else None


@dataclass(frozen=True, slots=True)
class AdapterInUse:
    """What a llama.cpp backend of the config answers with, and what the running bot says it uses."""

    backend: str
    table: str
    lora_path: str | None  # the config's (None: the base model)
    lora_scale: float
    running: str | None = None  # the running bot's active adapter
    running_note: str = ""  # why the running bot is not known ("" when it answered)
    rollback_to: str | None = None  # what `botkit finetune rollback` would deploy ("none": the base model)


@dataclass(frozen=True, slots=True)
class Catalogue:
    folders: tuple[Path, ...]
    exports: list[ExportEntry]
    runs: list[RunEntry]
    in_use: list[AdapterInUse]
    problems: list[str]  # folders that are missing or unreadable, a config that cannot be read

    def users_of(self, run: RunEntry) -> list[str]:
        """The backends whose lora_path is the run's adapter."""
        adapter = run.adapter
        if adapter is None:
            return []
        return [use.backend for use in self.in_use if use.lora_path and _same_file(use.lora_path, adapter)]

    def as_json(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, datetime):
                return value.isoformat()
            if isinstance(value, dict):
                return {key: plain(item) for key, item in value.items()}
            if isinstance(value, list | tuple):
                return [plain(item) for item in value]
            return value

        return plain(
            {
                "folders": self.folders,
                "in_use": [asdict(use) for use in self.in_use],
                "exports": [asdict(entry) for entry in self.exports],
                "runs": [{**asdict(run), "in_use_by": self.users_of(run)} for run in self.runs],
                "problems": self.problems,
            }
        )


def catalogue(
    settings: Settings, folders: list[Path] | None = None, ask_bot: bool = True, running: Ask | None = None
) -> Catalogue:
    """The exports and runs in ``folders`` (default ``[finetune] folders``) and the adapters in use.

    ``ask_bot``: also ask the bot running with this config which adapter it uses: over its control
    socket, or through ``running`` (``in_process``: the web console inside the bot).
    """
    problems: list[str] = []
    if folders is None:
        folders = configured_folders(settings, problems)
    in_use = adapters_in_use(settings, ask_bot, problems, running)
    exports: dict[Path, ExportEntry] = {}
    runs: dict[Path, RunEntry] = {}
    for folder in folders:
        if not folder.is_dir():
            problems.append(f"{folder}: {'not a folder' if folder.exists() else 'no such folder'}")
            continue
        for candidate in [folder, *_subfolders(folder, problems)]:
            _look_at(candidate, exports, runs)
    for use in in_use:  # a run whose adapter is deployed, wherever it lies
        if use.lora_path and (Path(use.lora_path).parent / RUN_FILE).is_file():
            _look_at(Path(os.path.abspath(Path(use.lora_path).expanduser().parent)), exports, runs)
    for run in list(runs.values()):  # the export a run trained on
        if run.data:
            source = Path(run.data)
            source = source if source.is_dir() else source.parent.parent
            if (source / CARD).is_file():
                _look_at(Path(os.path.abspath(source)), exports, runs)
    newest = lambda entry: entry.date or datetime.min.replace(tzinfo=UTC)  # noqa: E731
    return Catalogue(
        tuple(folders),
        sorted(exports.values(), key=newest, reverse=True),
        sorted(runs.values(), key=newest, reverse=True),
        in_use,
        problems,
    )


def configured_folders(settings: Settings, problems: list[str]) -> list[Path]:
    """``[finetune] folders``, a relative one taken from the config file's folder."""
    try:
        names = config_table(settings, "finetune", FinetuneSettings).folders
    except BotkitError as error:
        problems.append(str(error))
        names = FinetuneSettings().folders
    base = settings.source_path.parent if settings.source_path else Path.cwd()
    return [Path(os.path.abspath(base / Path(name).expanduser())) for name in names]


def _subfolders(folder: Path, problems: list[str]) -> list[Path]:
    try:
        return sorted(path for path in folder.iterdir() if path.is_dir())
    except OSError as error:
        problems.append(f"{folder}: cannot list it: {error.strerror or error}")
        return []


def _look_at(folder: Path, exports: dict[Path, ExportEntry], runs: dict[Path, RunEntry]) -> None:
    if folder in exports or folder in runs:
        return
    partial = PARTIAL_EXPORT.match(folder.name)
    if partial:
        exports[folder] = ExportEntry(
            folder, _modified(folder), (), {}, None,
            (f"an export to {folder.parent / partial.group(1)} that did not finish (its staging folder): "
             "nothing in it is used; delete it",),
        )  # fmt: skip
    elif (folder / RUN_FILE).is_file() or (folder / CHECKPOINTS).is_dir():
        runs[folder] = read_run_folder(folder)
    elif folder.name.startswith("."):
        return
    elif (folder / CARD).is_file() and _is_dataset_card(folder / CARD) or _format_files(folder):
        exports[folder] = read_export_folder(folder)


def _is_dataset_card(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8", errors="replace") as file:
            return "# botkit conversation export" in file.read(4096)
    except OSError:
        return False


def _format_files(folder: Path) -> list[str]:
    return [file_name(name, split) for name in FORMATS for split in SPLITS if (folder / file_name(name, split)).is_file()]


def read_export_folder(folder: Path) -> ExportEntry:
    """An export folder as ``botkit export`` wrote it; what is missing or unreadable is a problem line."""
    problems = []
    files = _format_files(folder)
    card = None
    try:
        card = (folder / CARD).read_text(encoding="utf-8", errors="replace")[:CARD_CHARS]
    except FileNotFoundError:
        problems.append(f"no dataset card ({CARD}): not written by `botkit export`, or it was deleted")
    except OSError as error:
        problems.append(f"{CARD}: cannot read it: {error.strerror or error}")
    records = {path: int(count.replace(",", "")) for path, count in FILE_ROW.findall(card or "")}
    for path in records:
        if path not in files:
            problems.append(f"{path}: listed in the dataset card, missing from the folder")
    if card is not None and not records:
        problems.append("the dataset card lists no files")
    if not files:
        problems.append("no data files (FORMAT/train.jsonl, FORMAT/validation.jsonl)")
    date = None
    found = EXPORTED_ON.search(card or "")
    if found:
        try:
            date = datetime.fromisoformat(found.group(1))
        except ValueError:
            date = None
    formats = tuple(dict.fromkeys(path.split("/")[0] for path in files))
    return ExportEntry(folder, date or _modified(folder), formats, records, card, tuple(problems))


def read_run_folder(folder: Path) -> RunEntry:
    """A run folder of ``finetune train`` or ``dpo``: finished, cut short (checkpoints, no final record), or unreadable."""
    files = tuple(
        name for name in (ADAPTER_FOLDER, CONVERTED_FILE, EVAL_FILE, REPORT_FILE, "README.md") if (folder / name).exists()
    )
    checkpoints = _count_checkpoints(folder)
    date = _modified(folder / RUN_FILE) or _modified(folder)
    try:
        record = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        problem = f"no {RUN_FILE}: training stopped before its first checkpoint was complete"
        return RunEntry(folder, "unknown", "interrupted", date, files=files, checkpoints=checkpoints, problems=(problem,))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        problem = f"{RUN_FILE}: cannot read it: {getattr(error, 'strerror', None) or error}"
        return RunEntry(folder, "unknown", "unreadable", date, files=files, checkpoints=checkpoints, problems=(problem,))
    if not isinstance(record, dict):
        problem = f"{RUN_FILE}: not a run record (a JSON object)"
        return RunEntry(folder, "unknown", "unreadable", date, files=files, checkpoints=checkpoints, problems=(problem,))
    problems = []
    complete = "steps" in record  # written once training ends; a checkpoint writes the record without it
    steps = [item for item in record.get("losses") or [] if isinstance(item, dict)]
    losses = [item["loss"] for item in steps if isinstance(item.get("loss"), int | float)]
    reached = max((item["step"] for item in steps if isinstance(item.get("step"), int)), default=0)
    base = record.get("base_model") if isinstance(record.get("base_model"), dict) else {}
    data = record.get("data") if isinstance(record.get("data"), dict) else {}
    if not complete:
        problems.append(
            f"interrupted at step {reached} of {record.get('total_steps', '?')}: continue it with "
            f"`botkit finetune {record.get('command', 'train')} {data.get('source') or 'DATA'} --out {folder} --resume`"
        )
    elif ADAPTER_FOLDER not in files:
        problems.append(f"no {ADAPTER_FOLDER}/: the trained adapter was moved or deleted")
    evaluation = _json_object(folder / EVAL_FILE, problems)
    return RunEntry(
        folder,
        {"train": "sft", "dpo": "dpo"}.get(record.get("command", "train"), "unknown"),
        "complete" if complete else "interrupted",
        date,
        base_model=base.get("name") or base.get("path"),
        backend=record.get("backend"),
        data=data.get("source"),
        steps=record.get("steps") if complete else reached,
        total_steps=record.get("total_steps"),
        final_loss=_number(record.get("train_loss")),
        best_loss=min(losses) if losses else None,
        validation_before=_number(record.get("validation_before")),
        validation_after=_number(record.get("validation_after")),
        evaluation={key: evaluation[key] for key in ("split", "base_loss", "adapter_loss", "base_f1", "adapter_f1") if key in evaluation},
        files=files,
        checkpoints=checkpoints,
        problems=tuple(problems),
    )  # fmt: skip


def _json_object(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, ValueError) as error:
        problems.append(f"{path.name}: cannot read it: {getattr(error, 'strerror', None) or error}")
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path.name}: not a JSON object")
        return {}
    return data


def _count_checkpoints(folder: Path) -> int:
    try:
        return sum(1 for path in (folder / CHECKPOINTS).glob("step-*") if not path.name.endswith(".partial"))
    except OSError:
        return 0


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _modified(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except OSError:
        return None


def _same_file(configured: str, adapter: Path) -> bool:
    return os.path.abspath(Path(configured).expanduser()) == os.path.abspath(adapter)


def adapters_in_use(
    settings: Settings, ask_bot: bool, problems: list[str], running: Ask | None = None
) -> list[AdapterInUse]:
    """Each llama.cpp backend of the config: its lora_path, the running bot's adapter, what a rollback deploys."""
    try:
        bot = load_bot(settings)
    except BotkitError as error:
        problems.append(f"{settings.source_name}: {error}")
        return []
    active, note = _running_adapters(settings, running) if ask_bot else ({}, "not asked")
    found = []
    for slot in bot.backends.values():
        if slot.type_name != "llamacpp":
            continue
        lora_path = getattr(slot.settings, "lora_path", None)
        rollback_to = None
        if settings.source_path is not None:
            try:
                target = rollback_target(settings, slot.name, str(lora_path) if lora_path else None)
                rollback_to = str(target.adapter) if target.adapter else "none"
            except RollbackError:
                pass  # nothing recorded, or the config changed since: the page offers no rollback
        found.append(
            AdapterInUse(
                slot.name,
                slot.table,
                str(lora_path) if lora_path else None,
                float(getattr(slot.settings, "lora_scale", 1.0)),
                active.get(slot.name),
                "" if slot.name in active else note,
                rollback_to,
            )
        )
    return found


def _running_adapters(settings: Settings, running: Ask | None) -> tuple[dict[str, str | None], str]:
    """The active adapter of each backend of the bot running with this config; why not known when none answers."""
    path = None
    try:
        if running is None:
            path = control_socket_path(settings)
            if path is None:
                return {}, '[bot] control_socket is "off": the running bot cannot be asked'
            answer = request_sync(path, {"command": "status"}, STATUS_TIMEOUT)
        else:
            answer = running({"command": "status"})
    except NoRunningBot:
        return {}, f"no running bot found at {path}"
    except BotkitError as error:  # a bad control_socket, no answer
        return {}, str(error)
    if not answer.get("ok"):
        return {}, str(answer.get("error"))
    backends = answer.get("backends") or {}
    return {name: backend.get("adapter") for name, backend in backends.items()}, "the running bot has no such backend"
