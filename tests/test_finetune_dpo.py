"""``botkit finetune dpo`` on the CPU, with the embedded SmolLM2 as the base model.

The preference pairs favour one answer style: the chosen answer starts with
"Ahoy!", the rejected one is the same answer without it. One short DPO run
(module fixture) is inspected by several tests: on held-out pairs the adapter's
log-probability margin of chosen over rejected rises, and its greedy answers
take the style. The loss is checked against TRL's on the same batch; the
refusals run before any model loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from botkit.cli import create_cli
from botkit.finetune.settings import FinetuneSettings
from botkit.finetune.training_data import PreferenceText, PromptStyle, find_preference_files, read_preferences
from botkit.prompts import ALPACA_WITHOUT_INPUT
from botkit.types import Prompt, Role, Turn

STYLE_WORD = "Ahoy!"
TRAIN_QA = [
    ("What is the capital of France?", "Paris."),
    ("How many legs does a spider have?", "Eight."),
    ("What colour is the sky on a clear day?", "Blue."),
    ("What is two plus two?", "Four."),
    ("Which planet is closest to the sun?", "Mercury."),
    ("What do bees make?", "Honey."),
    ("What is frozen water called?", "Ice."),
    ("How many days are in a week?", "Seven."),
]
HELD_OUT_QA = [
    ("What is the largest ocean?", "The Pacific."),
    ("What gas do plants take in?", "Carbon dioxide."),
    ("What is the opposite of hot?", "Cold."),
]
# Few, fast steps with a high learning rate: enough to move the adapter, not a recipe.
QUICK = ["--lr", "4e-3", "--max-steps", "4", "--batch-size", "4", "--save-every", "2", "--device", "cpu"]


def pair(question: str, answer: str) -> dict:
    """A pair as `botkit export --format preference` writes it (TRL's conversational format)."""
    return {
        "prompt": [{"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": f"{STYLE_WORD} {answer}"}],
        "rejected": [{"role": "assistant", "content": answer}],
    }


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def botkit(config: Path, *args: str):
    return CliRunner().invoke(create_cli(), ["--config", str(config), *args])


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """An export with preference pairs, and the held-out questions as chat records for `eval`."""
    root = tmp_path_factory.mktemp("export")
    write_jsonl(root / "preference/train.jsonl", [pair(q, a) for q, a in TRAIN_QA])
    write_jsonl(root / "preference/validation.jsonl", [pair(q, a) for q, a in HELD_OUT_QA])
    chat = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"{STYLE_WORD} {a}"}]}
        for q, a in HELD_OUT_QA
    ]
    write_jsonl(root / "chat/train.jsonl", chat)
    write_jsonl(root / "chat/validation.jsonl", chat)
    return root


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "config.toml"
    path.write_text("[finetune]\nrank = 4\nalpha = 8\ndropout = 0.0\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run(export_dir, config, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("runs") / "ahoy"
    result = botkit(config, "finetune", "dpo", str(export_dir), "--out", str(out), *QUICK)
    assert result.exit_code == 0, result.output
    return {"out": out, "output": result.output, "record": json.loads((out / "training.json").read_text())}


# -- reading the pairs ------------------------------------------------------------

STYLE = PromptStyle("alpaca", None, "", "<eos>")


def test_pairs_without_two_different_answers_are_skipped_and_counted(tmp_path):
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [
            pair("Capital of France?", "Paris."),
            {
                "prompt": [{"role": "user", "content": "No rejected"}],
                "chosen": [{"role": "assistant", "content": "x"}],
            },
            {"prompt": [{"role": "user", "content": "Same"}], "chosen": "Yes.", "rejected": " Yes. "},
            {"prompt": [{"role": "user", "content": "Q"}], "chosen": "A", "rejected": ""},
            {"prompt": "### Instruction:\nHi\n\n### Response:\n", "chosen": "Hello.", "rejected": "Go away."},
            {"chosen": "a", "rejected": "b"},
        ],
    )
    texts, report = read_preferences(path, STYLE)
    assert report.kept == 2
    assert dict(report.skipped) == {
        "no rejected answer": 1,
        "chosen and rejected are the same answer": 1,
        "an empty rejected answer": 1,
        "no prompt (a list of messages or a text)": 1,
    }
    assert texts[0] == PreferenceText(
        ALPACA_WITHOUT_INPUT.format(instruction="Capital of France?"),
        "Ahoy! Paris.<eos>",
        "Paris.<eos>",
        "Capital of France?",
    )
    # A text prompt (--preference-prompt alpaca) is the model's input as it is.
    assert texts[1].prompt == "### Instruction:\nHi\n\n### Response:\n" and texts[1].chosen == "Hello.<eos>"
    # A chat model cannot take an Alpaca text: counted, not guessed.
    _, chat_report = read_preferences(path, PromptStyle("chat", "{{ x }}", "", "<eos>"))
    assert (
        chat_report.skipped[
            'a text prompt, for prompt_format = "alpaca" (export with --preference-prompt chat)'
        ]
        == 1
    )


def test_a_folder_without_preference_pairs_is_refused_with_what_to_do(config, tmp_path):
    write_jsonl(tmp_path / "export/chat/train.jsonl", [])
    result = botkit(config, "finetune", "dpo", str(tmp_path / "export"), "--out", str(tmp_path / "run"))
    assert result.exit_code == 1
    assert "has no preference/train.jsonl" in result.output and "--format preference" in result.output
    assert "DPO of" not in result.output and not (tmp_path / "run").exists()


def test_a_pairs_file_given_finds_its_validation_file(export_dir):
    files = find_preference_files(export_dir / "preference/train.jsonl")
    assert files.validation == export_dir / "preference/validation.jsonl"


# -- the loss -------------------------------------------------------------------------


@pytest.mark.model
def test_the_dpo_loss_is_trls_on_the_same_batch(tmp_path):
    """botkit's loss and reward margin equal TRL's DPOTrainer's, with a policy that moved off its reference."""
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from botkit.finetune.base_model import target_from_config
    from botkit.finetune.dpo import dpo_loss, encode_pairs, pair_logps, reference_logps
    from botkit.finetune.train import bos_prefix, load_base, lora_model, prompt_style
    from botkit.finetune.training_data import ReadReport
    from botkit.settings import load_settings

    hyper = FinetuneSettings(rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"], device="cpu")
    target = target_from_config(load_settings(None), "default", None)
    loaded = load_base(target, hyper)
    style = prompt_style(target, loaded)
    texts = [
        PreferenceText(
            style.render(Prompt("", [Turn(Role.USER, q)])),
            f"{STYLE_WORD} {a}{style.eos_text}",
            a + style.eos_text,
            q,
        )
        for q, a in TRAIN_QA[:3]
    ]
    pairs = encode_pairs(loaded, texts, 256, ReadReport(Path("x"), kept=3), bos_prefix(target, loaded))
    # The GGUF's weights are dequantized to float32 at load, but transformers still marks the model
    # quantized, which TRL's Trainer refuses to train.
    loaded.model.is_quantized = False
    model, _, _ = lora_model(loaded.model, hyper)

    def move_adapter(seed: int) -> None:  # LoRA B off zero: the adapter changes the model
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B.default" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)

    # Where DPO starts (an SFT adapter, say): botkit's reference ("start") and TRL's alike.
    move_adapter(1)
    beta = 0.25
    references = reference_logps(model, pairs, loaded, batch_size=2, use_base=False)
    args = DPOConfig(
        output_dir=str(tmp_path), beta=beta, loss_type=["sigmoid"], report_to=[], use_cpu=True,
        bf16=False, per_device_train_batch_size=3,
    )  # fmt: skip
    # Given a peft model, TRL copies its adapter as the frozen reference ("ref").
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([{"prompt": "Hi", "chosen": " Hello.", "rejected": " Go."}]),
        processing_class=loaded.tokenizer,
    )
    assert "ref" in model.peft_config
    move_adapter(2)  # the policy after some training: no longer the reference
    with torch.no_grad():
        losses, margins = dpo_loss(*pair_logps(model, pairs, loaded), references, beta)
    assert float(margins.abs().min()) > 0.01  # the check below compares something
    batch = DataCollatorForPreference(pad_token_id=loaded.pad_token_id or 0)(
        [
            {
                "prompt_ids": p.chosen.ids[: p.chosen.prompt_tokens],
                "chosen_ids": p.chosen.ids[p.chosen.prompt_tokens :],
                "rejected_ids": p.rejected.ids[p.rejected.prompt_tokens :],
            }
            for p in pairs
        ]
    )
    trainer.model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch)
    assert float(losses.mean()) == pytest.approx(float(trl_loss), rel=1e-4)
    assert float(margins.mean()) == pytest.approx(trainer._metrics["eval"]["rewards/margins"][-1], rel=1e-4)


# -- one DPO run ------------------------------------------------------------------------


@pytest.mark.model
def test_dpo_raises_the_held_out_margin_of_chosen_over_rejected(run):
    dpo = run["record"]["dpo"]
    before, after = dpo["validation_before"], dpo["validation_after"]
    # The reference is the model DPO starts from: before any step, the policy is the reference.
    assert before["loss"] == pytest.approx(0.6931, abs=1e-3) and before["margin"] == pytest.approx(
        0.0, abs=1e-4
    )
    assert after["logp_margin"] > before["logp_margin"] + 1.0
    assert after["accuracy"] == 1.0 and after["loss"] < before["loss"]
    assert (dpo["beta"], dpo["reference"], dpo["from"]) == (0.1, "start", None)
    assert "validation after:" in run["output"] and "reward accuracy 1.00" in run["output"]


@pytest.mark.model
def test_the_run_folder_is_a_training_run(run):
    out, record = run["out"], run["record"]
    config = json.loads((out / "adapter/adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (4, 8)
    assert (out / "adapter/adapter_model.safetensors").is_file()
    assert [entry["step"] for entry in record["losses"]] == [1, 2, 3, 4]
    assert {"loss", "accuracy", "margin", "logp_margin", "lr"} <= set(record["losses"][0])
    assert record["settings"]["learning_rate"] == 4e-3 and record["data"]["examples"] == len(TRAIN_QA)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000002"]
    assert record["command"] == "dpo" and record["base_model"]["license"] == "apache-2.0"
    card = (out / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlicense: apache-2.0\n") and "(`botkit finetune dpo`)" in card


@pytest.mark.model
def test_eval_shows_the_adapters_greedy_answers_take_the_preferred_style(run, config, export_dir):
    result = botkit(
        config, "finetune", "eval", str(run["out"]), "--data", str(export_dir), "--samples", "3",
        "--max-tokens", "4", "--device", "cpu", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    samples = json.loads(result.output[result.output.index("{") :])["samples"]
    assert [s["adapter"].startswith("Ahoy") for s in samples] == [True, True, True], samples
    assert not any(s["base"].startswith("Ahoy") for s in samples)


@pytest.mark.model
def test_convert_takes_a_dpo_run(run, config, tmp_path):
    result = botkit(config, "finetune", "convert", str(run["out"]), "--out", str(tmp_path / "a.gguf"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a.gguf").stat().st_size > 0


@pytest.mark.model
def test_dpo_from_an_sft_run_trains_its_adapter_further_against_it(export_dir, config, tmp_path):
    """--from: the SFT run's LoRA shape and base model, and the SFT model as the reference."""
    from safetensors.torch import load_file

    sft = tmp_path / "sft"
    result = botkit(config, "finetune", "train", str(export_dir), "--out", str(sft), "--rank", "2",
                    "--max-steps", "1", "--batch-size", "3", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    out = tmp_path / "dpo"
    result = botkit(config, "finetune", "dpo", str(export_dir), "--out", str(out), "--from", str(sft),
                    "--lr", "2e-3", "--max-steps", "1", "--batch-size", "4", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"DPO of the adapter of {sft}" in result.output
    record = json.loads((out / "training.json").read_text())
    assert record["dpo"]["from"] == str(sft) and record["settings"]["rank"] == 2  # the config says 4
    assert json.loads((out / "adapter/adapter_config.json").read_text())["r"] == 2
    # The SFT model is the reference: before the first step, the policy equals it.
    assert record["dpo"]["validation_before"]["loss"] == pytest.approx(0.6931, abs=1e-3)
    started, trained = (
        load_file(sft / "adapter/adapter_model.safetensors"),
        load_file(out / "adapter/adapter_model.safetensors"),
    )
    assert started.keys() == trained.keys()
    assert any(not started[key].equal(trained[key]) for key in started)


# -- refusals ---------------------------------------------------------------------------


def test_from_refuses_a_folder_that_is_no_training_run(export_dir, config, tmp_path):
    (tmp_path / "notarun").mkdir()
    result = botkit(config, "finetune", "dpo", str(export_dir), "--out", str(tmp_path / "r"), "--from",
                    str(tmp_path / "notarun"))  # fmt: skip
    assert result.exit_code == 1
    assert "--from" in result.output and "not a finished `botkit finetune train` run" in result.output


def test_from_keeps_the_runs_lora_shape(export_dir, config, tmp_path):
    result = botkit(config, "finetune", "dpo", str(export_dir), "--out", str(tmp_path / "r"), "--from",
                    str(tmp_path), "--rank", "8")  # fmt: skip
    assert result.exit_code == 2 and "--rank: with --from, the adapter keeps" in result.output


@pytest.mark.parametrize(
    "flags, named", [(["--beta", "0"], "--beta"), (["--reference", "ref"], "--reference")]
)
def test_bad_dpo_flags_are_refused_naming_the_flag(export_dir, config, tmp_path, flags, named):
    result = botkit(config, "finetune", "dpo", str(export_dir), "--out", str(tmp_path / "r"), *flags)
    assert result.exit_code == 2 and named in result.output


@pytest.mark.model
def test_resume_refuses_a_changed_beta(run, export_dir, config, tmp_path):
    result = botkit(config, "finetune", "dpo", str(export_dir), "--out", str(run["out"]), "--resume",
                    "--beta", "0.5", *QUICK)  # fmt: skip
    assert result.exit_code == 1
    assert "DPO settings changed since it began (beta 0.1 -> 0.5)" in result.output
