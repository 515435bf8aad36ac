"""``botkit finetune train DATA --mix SOURCE=WEIGHT``: synthetic data beside the export, weighted and recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_finetune_train import QUESTIONS, botkit, chat_record, write_jsonl

from botkit.finetune.mixing import Source, parse_source, source_files, weighted
from botkit.finetune.training_data import TrainingDataError

SYNTHETIC = [
    {"instruction": f"Give a word that rhymes with '{word}'.", "input": "", "output": rhyme}
    for word, rhyme in [("cat", "hat"), ("sun", "fun"), ("tree", "bee"), ("cake", "lake")]
]


def test_a_source_is_a_path_and_a_weight():
    assert parse_source("synth") == Source(Path("synth"), 1.0)
    assert parse_source("a=b/synth=0.5") == Source(Path("a=b/synth"), 0.5)  # the last '=' parts the weight
    for bad, said in [
        ("synth=x", "is not a number"),
        ("synth=0", "above 0"),
        ("synth=nan", "above 0"),
        ("=2", "no data"),
    ]:
        with pytest.raises(ValueError, match=said):
            parse_source(bad)


def test_a_weight_takes_whole_copies_and_a_seeded_share():
    examples = list(range(10))
    assert weighted(examples, 1.0, seed=1) == examples
    half = weighted(examples, 0.5, seed=1)
    assert len(half) == 5 and len(set(half)) == 5 and half == weighted(examples, 0.5, seed=1)
    more = weighted(examples, 2.5, seed=1)
    assert len(more) == 25 and all(more.count(e) in (2, 3) for e in examples)


def test_a_synth_folder_gives_its_alpaca_file_and_a_missing_source_is_named(tmp_path):
    (tmp_path / "synth").mkdir()
    (tmp_path / "synth" / "train.json").write_text(json.dumps(SYNTHETIC), encoding="utf-8")
    files = source_files(tmp_path / "synth")
    assert (files.format, files.train, files.validation) == (
        "alpaca",
        tmp_path / "synth" / "train.json",
        None,
    )
    with pytest.raises(TrainingDataError, match=r"--mix .*nowhere.* does not exist"):
        source_files(tmp_path / "nowhere")


def test_a_bad_mix_flag_is_refused_before_any_model_loads(tmp_path):
    result = botkit(
        tmp_path / "none.toml",
        "finetune",
        "train",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
        "--mix",
        "x=-1",
    )
    assert result.exit_code == 2 and "--mix" in result.output and "above 0" in result.output


@pytest.mark.model
def test_a_run_mixes_synthetic_data_with_the_export_by_weight(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[finetune]\nrank = 4\nalpha = 8\n", encoding="utf-8")
    export = tmp_path / "export"
    write_jsonl(export / "chat/train.jsonl", [chat_record(q) for q in QUESTIONS])
    synth = tmp_path / "synth"
    synth.mkdir()
    (synth / "train.json").write_text(json.dumps(SYNTHETIC), encoding="utf-8")
    out = tmp_path / "run"
    result = botkit(
        config, "finetune", "train", str(export), "--out", str(out), "--mix", f"{synth}=0.5",
        "--max-steps", "1", "--batch-size", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads((out / "training.json").read_text())["data"]
    assert data["examples"] == len(QUESTIONS) + 2  # the export's six, and half of the four synthetic ones
    assert [(s["path"], s["format"], s["weight"], s["examples"], s["used"]) for s in data["sources"]] == [
        (str(export), "chat", 1.0, len(QUESTIONS), len(QUESTIONS)),
        (str(synth), "alpaca", 0.5, 4, 2),
    ]
    card = (out / "README.md").read_text(encoding="utf-8")
    assert f"- Mixed: `{synth}` (alpaca), weight 0.5: 2 of its 4 examples" in card
