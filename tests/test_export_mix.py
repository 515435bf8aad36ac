"""``botkit export --mix``: synthetic data and other files beside the stored conversations, weighted, in train only."""

from __future__ import annotations

import json

import test_export_cli
from export_helpers import read_records
from test_export_cli import botkit, seed, team_chat

project = test_export_cli.project  # the fixture: a config.toml and the database it names

SYNTH = [
    {"instruction": "Name a prime number above ten.", "input": "", "output": "Eleven."},
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour."},
    {"instruction": "Say nothing at all.", "input": "", "output": ""},  # skipped: an empty output
]
OTHER_CHAT = [
    {"messages": [{"role": "user", "content": f"Question {n}?"}, {"role": "assistant", "content": f"Answer {n}."}]}
    for n in range(4)
]


def synth_folder(root):
    """What `botkit finetune synth --out` leaves: train.json (Alpaca) and its card."""
    root.mkdir()
    (root / "train.json").write_text(json.dumps(SYNTH), encoding="utf-8")
    (root / "README.md").write_text("# synthetic\n", encoding="utf-8")
    return root


def test_mixed_examples_go_into_each_train_file_by_weight_and_the_card_lists_them(make_bot, project, tmp_path):
    seed(make_bot, project, team_chat)
    synth = synth_folder(tmp_path / "synth")
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in OTHER_CHAT), encoding="utf-8")
    plain, mixed = tmp_path / "plain", tmp_path / "mixed"
    common = ["--format", "alpaca,chat,preference", "--validation-fraction", "0.5", "--seed", "3"]
    assert botkit(project, "export", "--out", str(plain), *common).exit_code == 0
    result = botkit(project, "export", "--out", str(mixed), *common, "--mix", f"{synth}=2", "--mix", f"{other}=0.5")
    assert result.exit_code == 0, result.output

    # Train: the stored conversations' examples exactly as without --mix, then the mixed ones.
    alpaca_plain = read_records(plain / "alpaca/train.json")
    alpaca = read_records(mixed / "alpaca/train.json")
    assert alpaca[: len(alpaca_plain)] == alpaca_plain
    added = alpaca[len(alpaca_plain) :]
    # The synth folder's two usable records twice each, as they were; half of the chat file's four.
    assert added[:4] == [SYNTH[0], SYNTH[1], SYNTH[0], SYNTH[1]]
    assert len(added) == 6
    assert {r["instruction"] for r in added[4:]} <= {f"Question {n}?" for n in range(4)}
    chat = read_records(mixed / "chat/train.jsonl")
    translated = [r for r in chat if r["messages"][-1]["content"] == "Bonjour."]
    # A chat model is shown the instruction, then the input after a blank line.
    assert len(translated) == 2
    assert translated[0]["messages"][:-1] == [{"role": "user", "content": "Translate to French.\n\nGood morning"}]
    # Validation and the preference pairs are the stored conversations' alone.
    for name in ("alpaca/validation.json", "chat/validation.jsonl", "preference/train.jsonl"):
        assert read_records(mixed / name) == read_records(plain / name), name

    assert f"mixed in: {synth} (weight 2, alpaca): 4 records in each train file from 2 examples" in result.output
    assert "skipped 1: an empty instruction or output" in result.output
    card = (mixed / "README.md").read_text(encoding="utf-8")
    assert "## Mixed-in data" in card
    assert f"| `{synth}` | alpaca | 2 | 2 | 4 | an empty instruction or output: 1 |" in card
    assert f"| `{other}` | chat | 0.5 | 4 | 2 | none |" in card
    assert "## Mixed-in data" not in (plain / "README.md").read_text(encoding="utf-8")


def test_a_dry_run_counts_the_mixed_examples(make_bot, project, tmp_path):
    seed(make_bot, project, team_chat)
    synth = synth_folder(tmp_path / "synth")
    result = botkit(project, "export", "--dry-run", "--format", "alpaca", "--mix", str(synth))
    assert result.exit_code == 0, result.output
    assert f"mixed in: {synth} (weight 1, alpaca): 2 records in each train file from 2 examples" in result.output


def test_bad_mix_sources_are_refused_before_anything_is_written(make_bot, project, tmp_path):
    seed(make_bot, project, team_chat)
    synth = synth_folder(tmp_path / "synth")
    out = tmp_path / "out"
    only_pairs = botkit(project, "export", "--out", str(out), "--format", "preference", "--mix", str(synth))
    assert only_pairs.exit_code != 0
    assert "--format preference needs two answers to a prompt" in only_pairs.output
    missing = botkit(project, "export", "--out", str(out), "--mix", str(tmp_path / "nowhere"))
    assert missing.exit_code != 0
    assert f"--mix {tmp_path / 'nowhere'}: {tmp_path / 'nowhere'} does not exist" in missing.output
    broken = tmp_path / "broken.json"
    broken.write_text("[{", encoding="utf-8")
    unreadable = botkit(project, "export", "--out", str(out), "--format", "alpaca", "--mix", str(broken))
    assert unreadable.exit_code != 0 and f"--mix {broken}: " in unreadable.output
    assert "Expecting property name" in unreadable.output  # what is wrong with the file
    zero = botkit(project, "export", "--out", str(out), "--mix", f"{synth}=0")
    assert zero.exit_code == 2 and "the weight must be above 0" in zero.output
    assert not out.exists()
