"""The catalogue of exports and runs (`botkit finetune runs`, `exports`) and `botkit finetune rollback`."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from runs_helpers import export_of_a_new_bot, real_export, write_run
from test_deploy import CONFIG, NO_BOT, adapters, config, deploy  # noqa: F401 - fixtures, used by name

from botkit.cli import create_cli
from botkit.finetune.catalog import catalogue
from botkit.settings import load_settings


def botkit(config_file: Path, *args: str):
    return CliRunner().invoke(create_cli(), ["--config", str(config_file), "finetune", *args])


async def test_a_real_export_and_runs_are_listed_with_card_counts_metrics_and_status(make_bot, config, adapters):  # noqa: F811
    root = config.parent
    async with make_bot() as bot:
        await real_export(bot, root / "data" / "export")
    done = write_run(root / "runs" / "2026-11", root / "data" / "export", adapter=adapters / "good.gguf")
    cut = write_run(root / "runs" / "dpo-cut", root / "data" / "export", command="dpo", complete=False)

    found = catalogue(load_settings(config), ask_bot=False)

    assert found.folders == (root / "data", root / "runs") and found.problems == []
    [export] = found.exports
    assert export.folder == root / "data" / "export" and export.problems == ()
    assert export.formats == ("alpaca", "chat")
    assert export.records == {"chat/train.jsonl": 3, "alpaca/train.json": 3}
    assert "# botkit conversation export" in export.card and "## Counts per filter" in export.card
    assert export.date is not None
    by_folder = {run.folder: run for run in found.runs}
    run = by_folder[done]
    assert (run.kind, run.status, run.steps, run.total_steps) == ("sft", "complete", 30, 30)
    assert (run.final_loss, run.best_loss, run.validation_before, run.validation_after) == (2.1333, 1.9, 2.5, 2.25)
    assert run.base_model == "Smollm2 135M 8k Lc100K Mix1 Ep2" and run.data == str(root / "data" / "export")
    assert run.adapter == done / "adapter.gguf" and run.files == ("adapter", "adapter.gguf")
    assert run.checkpoints == 1 and run.problems == ()
    interrupted = by_folder[cut]
    assert (interrupted.kind, interrupted.status, interrupted.steps) == ("dpo", "interrupted", 20)
    assert interrupted.problems == (
        f"interrupted at step 20 of 30: continue it with `botkit finetune dpo {root / 'data' / 'export'} "
        f"--out {cut} --resume`",
    )
    assert interrupted.adapter is None
    [in_use] = found.in_use
    assert (in_use.backend, in_use.lora_path, in_use.rollback_to) == ("default", None, None)
    assert found.users_of(run) == []


def test_malformed_and_partial_folders_are_listed_with_their_problem(config):  # noqa: F811
    root = config.parent
    config.write_text(CONFIG + '\n[finetune]\nfolders = ["runs", "data", "gone"]\n', encoding="utf-8")
    for name, text in (("garbled", "{not json"), ("listed", "[1, 2]")):
        (root / "runs" / name).mkdir(parents=True)
        (root / "runs" / name / "training.json").write_text(text, encoding="utf-8")
    (root / "runs" / "early" / "checkpoints").mkdir(parents=True)
    (root / "runs" / "notes").mkdir()  # neither an export nor a run: not listed
    (root / "data" / ".export.partial-4711" / "chat").mkdir(parents=True)
    (root / "data" / "nocard" / "chat").mkdir(parents=True)
    (root / "data" / "nocard" / "chat" / "train.jsonl").write_text("{}\n", encoding="utf-8")
    (root / "data" / "cut").mkdir()
    (root / "data" / "cut" / "README.md").write_text(
        "# botkit conversation export\n\n## Files\n\n| file | records |\n|---|---|\n| `chat/train.jsonl` | 12 |\n",
        encoding="utf-8",
    )

    found = catalogue(load_settings(config), ask_bot=False)

    assert found.problems == [f"{root / 'gone'}: no such folder"]
    runs = {run.folder.name: (run.status, run.problems) for run in found.runs}
    assert runs == {
        "garbled": ("unreadable", ("training.json: cannot read it: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",)),
        "listed": ("unreadable", ("training.json: not a run record (a JSON object)",)),
        "early": ("interrupted", ("no training.json: training stopped before its first checkpoint was complete",)),
    }
    exports = {entry.folder.name: entry.problems for entry in found.exports}
    assert exports == {
        ".export.partial-4711": (
            f"an export to {root / 'data' / 'export'} that did not finish (its staging folder): nothing in it is used; delete it",
        ),
        "nocard": ("no dataset card (README.md): not written by `botkit export`, or it was deleted",),
        "cut": (
            "chat/train.jsonl: listed in the dataset card, missing from the folder",
            "no data files (FORMAT/train.jsonl, FORMAT/validation.jsonl)",
        ),
    }


def test_the_cli_prints_runs_and_exports_as_tables_and_json(tmp_path_factory, config, adapters):  # noqa: F811
    root = config.parent
    export_of_a_new_bot(tmp_path_factory, root / "data" / "export")
    run = write_run(root / "runs" / "2026-11", root / "data" / "export", adapter=adapters / "good.gguf")
    assert deploy(config, str(run), "--no-reload").exit_code == 0

    listed = botkit(config, "runs")
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0] == (
        f"adapter in use, backend default ([backend]): {run / 'adapter.gguf'}; no running bot found at "
        f"{root / 'ctl.sock'}; rollback: back to none"
    )
    assert lines[2].split() == ["RUN", "KIND", "STATUS", "STEPS", "LOSS", "BEST", "VALIDATION", "ADAPTER", "DATE", "IN", "USE"]
    assert lines[3].split()[:10] == [str(run), "sft", "complete", "30/30", "2.1333", "1.9000", "2.5000", "->", "2.2500", "gguf"]
    assert lines[3].endswith("default")
    assert lines[-1] == f"looked in: {root / 'data'}, {root / 'runs'} ([finetune] folders)"

    as_json = json.loads(botkit(config, "runs", "--json").stdout)
    [entry] = as_json["runs"]
    assert entry["folder"] == str(run) and entry["in_use_by"] == ["default"] and entry["final_loss"] == 2.1333
    assert as_json["in_use"][0]["lora_path"] == str(run / "adapter.gguf")

    exports = botkit(config, "exports", "--card")
    assert exports.exit_code == 0, exports.output
    assert exports.stdout.splitlines()[1].split()[0] == str(root / "data" / "export")
    assert "chat/train.jsonl 3" in exports.stdout and "# botkit conversation export" in exports.stdout
    cards = json.loads(botkit(config, "exports", "--json").stdout)["exports"]
    assert cards[0]["records"] == {"chat/train.jsonl": 3, "alpaca/train.json": 3} and "## Files" in cards[0]["card"]

    elsewhere = botkit(config, "runs", str(root / "data"))  # FOLDERs instead of [finetune] folders
    assert "no training runs found" not in elsewhere.stdout  # the deployed run is listed wherever it lies
    assert str(run) in elsewhere.stdout


def test_rollback_deploys_what_each_deploy_replaced_newest_first(config, adapters, tmp_path):  # noqa: F811
    first, second = adapters / "good.gguf", adapters / "unlicensed.gguf"
    assert deploy(config, str(first), "--scale", "0.5").exit_code == 0
    assert deploy(config, str(second)).exit_code == 0
    socket = config.parent / "ctl.sock"

    back = botkit(config, "rollback")
    assert back.exit_code == 0, back.output
    assert back.stdout.splitlines()[0].startswith(
        f"backend default: back to adapter {first} (undoes the deploy of {second} at "
    )
    assert back.stdout.splitlines()[-1] == f"no running bot found at {socket}; {NO_BOT}"
    assert load_settings(config).backend["lora_path"] == str(first)
    assert load_settings(config).backend["lora_scale"] == 0.5

    base = botkit(config, "rollback")
    assert base.exit_code == 0, base.output
    assert base.stdout.splitlines()[0].startswith("backend default: back to the base model, without adapter")
    assert "lora_path" not in load_settings(config).backend

    nothing = botkit(config, "rollback")
    assert nothing.exit_code == 1
    assert "backend default: no deploy recorded for" in nothing.stderr and "nothing to roll back to" in nothing.stderr

    assert deploy(config, str(first)).exit_code == 0
    config.write_text(config.read_text().replace(str(first), str(second)), encoding="utf-8")  # by hand
    edited = botkit(config, "rollback")
    assert edited.exit_code == 1
    assert f"backend default: its lora_path is {second}, but the newest recorded deploy wrote {first}" in edited.stderr
    assert load_settings(config).backend["lora_path"] == str(second)
