"""``botkit finetune train|convert|eval`` on the CPU, with the embedded SmolLM2 as the base model.

One short training run (module fixture) is inspected by several tests; the
refusals run before any model loads. The whole chat -> export -> train ->
deploy loop is tests/test_finetune_loop.py.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from export_helpers import FACT, FACT_QUESTIONS

from botkit import ConfigError
from botkit.backends.llamacpp import LlamaCppBackend, LlamaCppSettings, embedded_model_path
from botkit.backends.llamacpp_lora import read_gguf_header
from botkit.cli import create_cli
from botkit.finetune.base_model import target_from_config
from botkit.finetune.gguf_adapter import read_safetensors
from botkit.finetune.settings import FinetuneSettings
from botkit.finetune.training_data import PromptStyle, TrainingDataError, find_files, read_examples
from botkit.ops import config_table
from botkit.prompts import alpaca_fields
from botkit.settings import load_settings
from botkit.types import Prompt, Role, Turn

SYSTEM = "You are the team's helpful assistant."
QUESTIONS = FACT_QUESTIONS[:6]
# The parts of an export's dataset card that a run's model card repeats.
DATASET_CARD = """---
license: cc-by-4.0
---

# botkit conversation export

## Date range

Messages from 2026-11-02T09:00:00+00:00 to 2026-11-20T17:30:00+00:00 (UTC).

## Sources

- Platforms: slack (7)
- Channels: 2

## Base model
"""
# Few, fast steps with a high learning rate: enough to move the loss, not a recipe.
QUICK = ["--lr", "2e-3", "--max-steps", "4", "--batch-size", "3", "--save-every", "2"]


def chat_record(question: str, answer: str = FACT) -> dict:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """A folder as `botkit export --format chat` writes it: six examples teaching one fact, one held out."""
    root = tmp_path_factory.mktemp("export")
    write_jsonl(root / "chat/train.jsonl", [chat_record(q) for q in QUESTIONS])
    write_jsonl(root / "chat/validation.jsonl", [chat_record("What's Project Zephyr's codename?")])
    (root / "README.md").write_text(DATASET_CARD, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    """[finetune] sets the rank; the flags in QUICK override the rest."""
    path = tmp_path_factory.mktemp("config") / "config.toml"
    path.write_text("[finetune]\nrank = 4\nalpha = 8\n", encoding="utf-8")
    return path


def botkit(config: Path, *args: str):
    return CliRunner().invoke(create_cli(), ["--config", str(config), *args])


@pytest.fixture(scope="module")
def run(export_dir, config, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("runs") / "zephyr"
    result = botkit(config, "finetune", "train", str(export_dir), "--out", str(out), *QUICK)
    assert result.exit_code == 0, result.output
    return {"out": out, "output": result.output}


# -- reading the data ------------------------------------------------------------


STYLE = PromptStyle("alpaca", None, "", "<eos>")


@pytest.mark.parametrize("variant", ["stanford", "alpaca-lora"])
def test_alpaca_training_prompts_are_what_the_bot_sends_its_model(tmp_path, variant):
    """An exported Alpaca record, read for training, gives the very text the backend renders at run time."""
    from botkit.backends.scripted import ScriptedBackend, ScriptedSettings

    backend = ScriptedBackend(ScriptedSettings(prompt_format="alpaca", alpaca_variant=variant))
    prompts = [
        Prompt("", [Turn(Role.USER, "Hi")]),  # no system prompt, no history: the template without input
        Prompt("Be brief.", [Turn(Role.USER, "Hi"), Turn(Role.ASSISTANT, "Hello"), Turn(Role.USER, "Bye")]),
    ]
    records = []
    for prompt in prompts:
        instruction, context = alpaca_fields(prompt)
        records.append({"instruction": instruction, "input": context, "output": "Ok."})
    write_jsonl(tmp_path / "alpaca-jsonl/train.jsonl", records)
    style = PromptStyle("alpaca", None, "", "<eos>", variant)
    texts, _ = read_examples(find_files(tmp_path, "alpaca-jsonl").train, "alpaca-jsonl", style)
    assert [t.prompt for t in texts] == [backend.render(p) for p in prompts] == [style.render(p) for p in prompts]
    assert "### Input:" not in texts[0].prompt and "### Input:\nBe brief.\n\nUser: Hi\nAssistant: Hello" in texts[1].prompt
    assert all(t.prompt.endswith("### Response:" + ("\n" if variant == "alpaca-lora" else "")) for t in texts)


def test_each_exported_format_is_found_and_read(tmp_path):
    write_jsonl(
        tmp_path / "sharegpt/train.jsonl",
        [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}],
    )
    (tmp_path / "alpaca").mkdir()
    (tmp_path / "alpaca/train.json").write_text(
        json.dumps([{"instruction": "Hi", "input": "", "output": "Hello"}])
    )
    for kind in ("sharegpt", "alpaca"):
        files = find_files(tmp_path, kind)
        texts, report = read_examples(files.train, files.format, STYLE)
        assert report.kept == 1 and not report.skipped
        assert texts[0].prompt.endswith("### Instruction:\nHi\n\n### Response:")  # Stanford's, exactly
        assert texts[0].answer == "Hello<eos>" and texts[0].reference == "Hello"
    # Without --format the richest format present is read.
    assert find_files(tmp_path).format == "sharegpt"


def test_unusable_records_are_skipped_and_counted_by_reason(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps(chat_record("Fine?", "Fine.")),
                "{not json",
                json.dumps({"messages": [{"role": "user", "content": "No answer"}]}),
                json.dumps(
                    {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": " "}]}
                ),
                json.dumps(
                    {"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}
                ),
                json.dumps({"text": "no messages"}),
            ]
        ),
        encoding="utf-8",
    )
    texts, report = read_examples(path, "chat", STYLE)
    assert [t.question for t in texts] == ["Fine?"]
    assert dict(report.skipped) == {
        "a line that is not JSON": 1,
        "not ending in a user message and the assistant's answer": 1,
        "an empty answer": 1,
        "a message of an unknown role, or a system message after the first": 1,
        "no messages list": 1,
    }


def test_a_folder_without_training_files_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(TrainingDataError, match=r"no training file .*botkit export --out"):
        find_files(tmp_path)
    with pytest.raises(TrainingDataError, match="does not exist"):
        find_files(tmp_path / "missing")


@pytest.fixture(scope="module")
def base():
    """The default target and its base model, loaded by transformers as training loads it."""
    from botkit.finetune.train import load_base

    target = target_from_config(load_settings(None), "default", None)
    return target, load_base(target, FinetuneSettings(device="cpu"))


@pytest.mark.model
def test_training_prompts_are_rendered_and_tokenized_as_the_bot_sends_them(base):
    """The chat template, BOS/EOS and token ids agree with the llama.cpp backend the adapter is deployed on."""
    import asyncio

    from botkit.finetune.train import bos_prefix, prompt_style

    target, loaded = base
    style = prompt_style(target, loaded)
    backend = LlamaCppBackend(LlamaCppSettings())
    asyncio.run(backend.start())
    try:
        prompt = Prompt(
            SYSTEM, [Turn(Role.USER, "Hi"), Turn(Role.ASSISTANT, "Hello!"), Turn(Role.USER, QUESTIONS[0])]
        )
        text = style.render(prompt)
        assert text == backend.render(prompt)
        ids = bos_prefix(target, loaded) + loaded.tokenizer.encode(text, add_special_tokens=False)
        assert ids == backend.tokenize(text)
        # The answer ends with the token llama.cpp stops at.
        assert loaded.tokenizer.convert_tokens_to_ids(style.eos_text) == backend._model.eos
    finally:
        asyncio.run(backend.close())


@pytest.mark.model
def test_only_answer_tokens_count_in_the_loss(base):
    """The loss equals transformers' own loss with every prompt and padding label masked out."""
    import torch

    from botkit.finetune.train import Encoded, batch_loss

    _, loaded = base
    batch = [Encoded([1, 504, 2683, 314, 253, 3158, 30, 2], 5, 0), Encoded([1, 9519, 30, 2], 2, 1)]
    with torch.no_grad():
        loss, tokens = batch_loss(loaded.model, batch, loaded)
    expected, count = 0.0, 0
    for example in batch:
        ids = torch.tensor([example.ids])
        labels = ids.clone()
        labels[0, : example.prompt_tokens] = -100
        with torch.no_grad():
            mean = loaded.model(input_ids=ids, labels=labels).loss
        answer_tokens = len(example.ids) - example.prompt_tokens
        expected += float(mean) * answer_tokens
        count += answer_tokens
    assert tokens == count == 5
    assert float(loss) == pytest.approx(expected, rel=1e-4)


# -- one training run -------------------------------------------------------------


@pytest.mark.model
def test_training_writes_a_peft_adapter_with_config_and_flag_settings(run):
    out = run["out"]
    adapter = json.loads((out / "adapter/adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 8  # from [finetune]
    assert adapter["lora_dropout"] == 0.05  # the default
    assert sorted(adapter["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert adapter["base_model_name_or_path"] == str(embedded_model_path())
    weights = read_safetensors(out / "adapter/adapter_model.safetensors")
    assert len(weights) == 30 * 4 * 2  # 30 layers, 4 projections, A and B
    # B starts at zero: a trained adapter has moved it.
    assert any(np.abs(w).max() > 0 for name, w in weights.items() if "lora_B" in name)


@pytest.mark.model
def test_training_reports_validation_loss_before_and_after(run):
    record = json.loads((run["out"] / "training.json").read_text())
    assert record["validation_after"] < record["validation_before"]
    assert f"validation loss {record['validation_before']:.4f} before" in run["output"]
    assert record["steps"] == 4 and [entry["step"] for entry in record["losses"]] == [1, 2, 3, 4]
    assert record["settings"]["learning_rate"] == 0.002 and record["settings"]["rank"] == 4
    assert record["base_model"]["name"] == "Smollm2 135M 8k Lc100K Mix1 Ep2"
    assert record["data"]["examples"] == 6 and record["data"]["validation_examples"] == 1


@pytest.mark.model
def test_the_run_folder_has_a_model_card_with_licence_data_settings_and_metrics(run):
    record = json.loads((run["out"] / "training.json").read_text())
    assert record["base_model"]["license"] == "apache-2.0"  # general.license of the embedded GGUF
    assert record["base_model"]["author"] == "HuggingFaceTB"  # its general.organization
    assert record["data"]["dataset_card"]["license"] == "cc-by-4.0"
    card = (run["out"] / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlicense: apache-2.0\n")
    assert "- Licence: apache-2.0" in card and "inherits its licence, `apache-2.0`" in card
    assert "declares the licence `cc-by-4.0`" in card
    assert "- Examples: 6 train, 1 validation" in card
    assert "### Sources\n\n- Platforms: slack (7)\n- Channels: 2" in card
    assert "Messages from 2026-11-02T09:00:00+00:00" in card
    assert "| rank | 4 |" in card and "| learning_rate | 0.002 |" in card
    before, after = record["validation_before"], record["validation_after"]
    assert f"| validation loss | {before:.4f} | {after:.4f} |" in card


@pytest.mark.model
def test_a_resumed_run_ends_where_the_uninterrupted_one_did(run, export_dir, config, tmp_path):
    """Checkpoints hold the adapter, optimizer, schedule and random state: resuming step 2 gives step 4's weights."""
    import shutil

    copy = tmp_path / "resumed"
    shutil.copytree(run["out"], copy)
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["step-000002"]
    shutil.rmtree(copy / "adapter")
    result = botkit(config, "finetune", "train", str(export_dir), "--out", str(copy), *QUICK, "--resume")
    assert result.exit_code == 0, result.output
    assert "resumed at step 2" in result.output
    original = read_safetensors(run["out"] / "adapter/adapter_model.safetensors")
    resumed = read_safetensors(copy / "adapter/adapter_model.safetensors")
    for name, weight in original.items():
        np.testing.assert_allclose(resumed[name], weight, atol=1e-6, err_msg=name)

    changed = botkit(
        config, "finetune", "train", str(export_dir), "--out", str(copy), *QUICK, "--rank", "8", "--resume"
    )
    assert changed.exit_code == 1
    assert "settings changed since it was saved (rank 4 -> 8)" in changed.output


@pytest.mark.model
def test_convert_writes_a_llama_cpp_adapter_for_the_base_model(run, config, tmp_path):
    result = botkit(config, "finetune", "convert", str(run["out"]), "--out", str(tmp_path / "zephyr.gguf"))
    assert result.exit_code == 0, result.output
    from botkit.backends.llamacpp_lora import ModelInfo, check_adapter

    check_adapter(tmp_path / "zephyr.gguf", "test", ModelInfo.read(embedded_model_path()))  # raises if unfit
    metadata = read_gguf_header(tmp_path / "zephyr.gguf").metadata
    assert metadata["general.license"] == "apache-2.0"  # the base model's licence travels with the adapter
    assert metadata["general.base_model.0.author"] == "HuggingFaceTB"
    again = botkit(config, "finetune", "convert", str(run["out"]), "--out", str(tmp_path / "zephyr.gguf"))
    assert again.exit_code == 1 and "exists: pass --overwrite" in again.output


@pytest.mark.model
def test_convert_refuses_another_base_model_naming_both(run, config, tmp_path):
    import gguf

    other = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(other, arch="llama")
    writer.add_name("Other Model 1B")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    result = botkit(config, "finetune", "convert", str(run["out"]), "--base-model", str(other))
    assert result.exit_code == 1
    assert "trained on base model 'Smollm2 135M 8k Lc100K Mix1 Ep2'" in result.output
    assert "is 'Other Model 1B'" in result.output
    assert not (run["out"] / "adapter.gguf").exists()


@pytest.mark.model
def test_eval_compares_the_adapter_with_its_base_model(run, config):
    result = botkit(
        config, "finetune", "eval", str(run["out"]), "--samples", "1", "--max-tokens", "12", "--json"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["adapter_loss"] < report["base_loss"]
    (sample,) = report["samples"]
    assert sample["question"] == "What's Project Zephyr's codename?" and sample["reference"] == FACT
    assert sample["base"] and sample["adapter"]
    card = (run["out"] / "README.md").read_text(encoding="utf-8")  # written again with the eval's numbers
    base_loss, adapter_loss = report["base_loss"], report["adapter_loss"]
    assert f"| eval loss (validation, 1 example) | {base_loss:.4f} | {adapter_loss:.4f} |" in card


# -- refusals before anything loads -----------------------------------------------


def test_an_existing_run_folder_is_refused_without_overwrite(export_dir, config, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run/keep.txt").write_text("mine")
    result = botkit(config, "finetune", "train", str(export_dir), "--out", str(tmp_path / "run"))
    assert result.exit_code == 1
    assert "exists: pass --overwrite to replace it, or --resume" in result.output
    assert (tmp_path / "run/keep.txt").read_text() == "mine"


def test_missing_data_is_refused_before_any_training_is_announced(config, tmp_path):
    result = botkit(config, "finetune", "train", str(tmp_path / "nosuch"), "--out", str(tmp_path / "run"))
    assert result.exit_code == 1
    assert "nosuch does not exist" in result.output
    assert "training a LoRA adapter" not in result.output


def test_resume_without_a_checkpoint_is_refused(export_dir, config, tmp_path):
    result = botkit(config, "finetune", "train", str(export_dir), "--out", str(tmp_path / "new"), "--resume")
    assert result.exit_code == 1 and "has no checkpoint to resume from" in result.output


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--rank", "0"], "--rank"),
        (["--dropout", "1.5"], "--dropout"),
        (["--target-modules", "q proj"], "--target-modules"),
        (["--lr", "-1"], "--learning-rate"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_flag_values_are_refused_naming_the_flag(export_dir, config, tmp_path, flags, named):
    result = botkit(config, "finetune", "train", str(export_dir), "--out", str(tmp_path / "r"), *flags)
    assert result.exit_code == 2
    assert named in result.output
    assert not (tmp_path / "r").exists()


def test_a_bad_finetune_table_in_the_config_is_refused(export_dir, tmp_path, write_config):
    config = write_config(textwrap.dedent("[finetune]\nrank = -1\n"))
    result = botkit(config, "finetune", "train", str(export_dir), "--out", str(tmp_path / "r"))
    assert result.exit_code == 2 and "finetune" in result.output and "rank" in result.output


def test_a_misspelled_finetune_table_is_refused_not_ignored(export_dir, tmp_path, write_config):
    config = write_config(textwrap.dedent("[finetun]\nrank = 4\n"))
    result = botkit(config, "finetune", "train", str(export_dir), "--out", str(tmp_path / "r"))
    assert result.exit_code == 2
    assert f"{config}: finetun: unknown key (check the spelling)" in result.output
    assert not (tmp_path / "r").exists()


def test_environment_variables_override_the_finetune_table(write_config, monkeypatch):
    config = write_config(textwrap.dedent("[finetune]\nrank = 4\nalpha = 8\n"))
    monkeypatch.setenv("BOTKIT_FINETUNE__RANK", "16")
    monkeypatch.setenv("BOTKIT_FINETUNE__TARGET_MODULES", '["q_proj", "v_proj"]')
    hyper = config_table(load_settings(config), "finetune", FinetuneSettings)
    assert (hyper.rank, hyper.alpha, hyper.target_modules) == (16, 8.0, ["q_proj", "v_proj"])
    monkeypatch.setenv("BOTKIT_FINETUNE__RANK", "0")
    with pytest.raises(ConfigError, match=r"BOTKIT_FINETUNE__RANK: \[finetune\] rank: Input should be greater"):
        config_table(load_settings(config), "finetune", FinetuneSettings)


def test_a_backend_whose_model_is_on_a_server_needs_base_model(export_dir, tmp_path, write_config):
    config = write_config('[backend]\ntype = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "m"\n')
    result = botkit(config, "finetune", "train", str(export_dir), "--out", str(tmp_path / "r"))
    assert result.exit_code == 2 and "give the model to train with --base-model" in result.output


@pytest.mark.model
def test_overwrite_keeps_the_old_run_when_training_cannot_start(export_dir, config, tmp_path):
    """An unknown projection is found once the model has loaded: the folder to overwrite is still intact."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run/keep.txt").write_text("mine")
    result = botkit(
        config, "finetune", "train", str(export_dir), "--out", str(tmp_path / "run"),
        "--target-modules", "q_proj,qkv_proj", "--overwrite",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "[finetune] target_modules: the model has no qkv_proj projection" in result.output
    assert "k_proj" in result.output  # the ones it has are listed
    assert (tmp_path / "run/keep.txt").read_text() == "mine"


def test_the_report_says_why_there_is_no_validation_loss(tmp_path):
    from botkit.finetune.train import TrainReport
    from botkit.finetune.training_data import ReadReport

    alone = TrainReport(tmp_path, "cpu", steps=3, seconds=1.0, examples=2, reads=[ReadReport(tmp_path / "t")])
    assert "no validation loss: the data has no validation split" in alone.lines()
    emptied = TrainReport(tmp_path, "cpu", reads=[ReadReport(tmp_path / "t"), ReadReport(tmp_path / "v")])
    assert "no validation loss: no usable validation example" in emptied.lines()


def test_train_says_when_the_adapter_made_the_validation_loss_worse(tmp_path):
    from botkit.finetune.train import TrainReport

    worse = TrainReport(
        tmp_path, "cpu", validation_examples=2, validation_before=0.6442, validation_after=0.6452
    )
    better = TrainReport(
        tmp_path, "cpu", validation_examples=2, validation_before=0.6452, validation_after=0.6442
    )
    assert (
        "warning: the adapter is worse than the base model: validation loss 0.6442 (base) -> 0.6452 (adapter)"
        in worse.lines()
    )
    assert not [line for line in better.lines() if "worse" in line]


def test_eval_says_when_the_adapter_answers_worse_than_its_base(tmp_path):
    from botkit.finetune.evaluate import EvalReport, Sample

    sample = Sample("Codename?", "Zephyr is the codename", base="Zephyr is the codename", adapter="Zephyr")
    report = EvalReport(tmp_path, base_loss=0.5, adapter_loss=0.4, samples=[sample])
    lines = report.lines()
    assert (
        "warning: the adapter is worse than the base model: mean token F1 1 (base) -> 0.4 (adapter)" in lines
    )
    assert not [line for line in lines if "validation loss" in line and "worse" in line]
    assert report.as_dict()["base_f1"] == 1.0


@pytest.mark.model
def test_eval_redteam_probes_the_converted_adapter_and_the_base_model_for_deploy(run, tmp_path):
    import shutil

    copy = tmp_path / "zephyr"
    shutil.copytree(run["out"], copy)  # convert writes into the run: the other tests' run stays as it was
    config = tmp_path / "config.toml"
    config.write_text("[finetune]\nrank = 4\nalpha = 8\n[backend]\nmax_tokens = 16\ntemperature = 0\n")
    missing = botkit(config, "finetune", "eval", str(copy), "--redteam")
    assert missing.exit_code == 1
    assert (
        f"{copy} has no adapter.gguf: --redteam probes the GGUF adapter that deploy would deploy"
        in missing.output
    )
    assert botkit(config, "finetune", "convert", str(copy)).exit_code == 0
    result = botkit(
        config, "finetune", "eval", str(copy), "--samples", "0", "--redteam", "--redteam-suite", "extraction",
        "--redteam-limit", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((copy / "redteam.json").read_text(encoding="utf-8"))
    assert report["adapter"] == str(copy / "adapter.gguf")
    assert report["baseline"]["adapter"] is None
    assert list(report["suites"]) == list(report["baseline"]["suites"]) == ["extraction"]
    assert "| extraction |" in result.output  # the report, after the eval's numbers
