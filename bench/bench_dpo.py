"""DPO benchmark: botkit's DPO step against TRL's DPOTrainer loss on the same batches, on the CPU.

Run from the repository root::

    .venv/bin/python bench/bench_dpo.py              # a few minutes on two cores
    .venv/bin/python bench/bench_dpo.py --rounds 5   # more rounds, a steadier median
    .venv/bin/python bench/bench_dpo.py --check      # exit 1 when botkit's step is the slower

The base model is the embedded SmolLM2-135M, loaded by transformers as
``botkit finetune dpo`` loads it (float32 on the CPU). Both sides train a LoRA
adapter with the default ``[finetune]`` settings (r 8, alpha 16, dropout 0.05
on q, k, v and o) on deep copies of those weights, on the same batches of 4
preference pairs read and encoded by ``botkit.finetune`` from a preference file
as ``botkit export`` writes it (the bench's questions, a chosen and a rejected
answer of a sentence or two), with the same AdamW and gradient clipping at 1.0.

- **botkit**: ``finetune/dpo.py``'s step: ``dpo_step`` (one forward pass over
  the batch's chosen and rejected answers, only the positions that predict an
  answer token through ``lm_head``, the sigmoid DPO loss against reference
  log-probabilities computed once before training), the AdamW step. The
  one-time reference pass is timed apart and reported per pair.
- **TRL**: ``DPOTrainer.compute_loss`` (TRL's collator's batch, its fused
  ``lm_head``, the reference forward pass with the adapter off at every step:
  its default, ``precompute_ref_log_probs=False``), backward, the same clipping and
  AdamW step. Needs ``trl`` (``pip install 'botkit[testing]'``); without it
  the bench says so and exits 2.

The first step of each side must give the same loss (to 1e-4 relative): LoRA's
B matrices start at zero, so both see policy = reference and a loss of log 2;
the check is that both run. Then a warm-up step, then rounds in which each
side trains on every batch once, alternating which side goes first. Rates are
the medians of the rounds; the ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _name in [name for name in os.environ if name.startswith("BOTKIT_")]:
    del os.environ[_name]

from bench_train import EXCHANGES

from botkit.finetune.base_model import target_from_config
from botkit.finetune.dpo import EncodedPair, dpo_step, encode_pairs, reference_logps
from botkit.finetune.settings import FinetuneSettings
from botkit.finetune.train import bos_prefix, import_torch, load_base, lora_model, prompt_style
from botkit.finetune.training_data import read_preferences
from botkit.settings import load_settings

TARGET_RATIO = 1.0  # botkit's steps/s over TRL's
LOSS_TOLERANCE = 1e-4
BATCH_SIZE = 4
clock = time.perf_counter


def preference_batches(target, loaded, hyper: FinetuneSettings, count: int) -> list[list[EncodedPair]]:
    """Pairs as ``botkit export --format preference`` writes them, read back and encoded as DPO does."""
    records = []
    for index in range(count):
        asked, answer = EXCHANGES[index % len(EXCHANGES)]
        worse = EXCHANGES[(index + 5) % len(EXCHANGES)][1]  # a fluent answer to another question
        records.append(
            {
                "prompt": [{"role": "user", "content": asked}],
                "chosen": [{"role": "assistant", "content": answer}],
                "rejected": [{"role": "assistant", "content": worse}],
            }
        )
    with tempfile.TemporaryDirectory(prefix="botkit-bench-dpo-") as folder:
        path = Path(folder) / "train.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        texts, read = read_preferences(path, prompt_style(target, loaded))
    pairs = encode_pairs(loaded, texts, hyper.max_length, read, bos_prefix(target, loaded))
    assert len(pairs) == count, read.lines()
    return [pairs[i : i + BATCH_SIZE] for i in range(0, count, BATCH_SIZE)]


def botkit_side(model, loaded, hyper, batches, torch):
    model, parameters, optimizer = lora_model(model, hyper)
    started = clock()
    references = [reference_logps(model, batch, loaded, BATCH_SIZE, use_base=False) for batch in batches]
    reference_seconds = clock() - started

    def step(index: int) -> float:
        model.train()
        scores = dpo_step(model, [batches[index]], [references[index]], loaded, hyper.dpo.beta, parameters)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return scores.loss

    return step, reference_seconds


def trl_side(model, loaded, hyper, batches, torch, scratch: str):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    # The GGUF's weights are dequantized to float32 at load, but transformers still marks the model
    # quantized, which TRL's Trainer refuses to train.
    model.is_quantized = False
    model, parameters, optimizer = lora_model(model, hyper)
    args = DPOConfig(
        output_dir=scratch, beta=hyper.dpo.beta, loss_type=["sigmoid"], report_to=[], use_cpu=True,
        bf16=False, per_device_train_batch_size=BATCH_SIZE, max_grad_norm=1.0,
    )  # fmt: skip
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([{"prompt": "Hi", "chosen": " Hello.", "rejected": " Go."}]),
        processing_class=loaded.tokenizer,
    )
    collate = DataCollatorForPreference(pad_token_id=loaded.pad_token_id or 0)
    inputs = [
        collate(
            [
                {
                    "prompt_ids": p.chosen.ids[: p.chosen.prompt_tokens],
                    "chosen_ids": p.chosen.ids[p.chosen.prompt_tokens :],
                    "rejected_ids": p.rejected.ids[p.rejected.prompt_tokens :],
                }
                for p in batch
            ]
        )
        for batch in batches
    ]

    def step(index: int) -> float:
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, inputs[index])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=2, help="batches of 4 pairs per round")
    parser.add_argument("--check", action="store_true", help=f"exit 1 below a ratio of {TARGET_RATIO}")
    args = parser.parse_args()
    try:
        import trl
    except ImportError:
        print("bench_dpo needs trl to compare with: pip install 'botkit[testing]'", file=sys.stderr)
        return 2
    torch, _ = import_torch()
    hyper = FinetuneSettings(device="cpu", dtype="float32")
    target = target_from_config(load_settings(None), "default", None)
    loaded = load_base(target, hyper)
    batches = preference_batches(target, loaded, hyper, BATCH_SIZE * args.batches)
    tokens = [len(e.ids) for batch in batches for p in batch for e in (p.chosen, p.rejected)]
    torch.manual_seed(0)
    botkit_step, reference_seconds = botkit_side(copy.deepcopy(loaded.model), loaded, hyper, batches, torch)
    with tempfile.TemporaryDirectory(prefix="botkit-bench-trl-") as scratch:
        trl_step = trl_side(copy.deepcopy(loaded.model), loaded, hyper, batches, torch, scratch)
        first = {"botkit": botkit_step(0), "TRL": trl_step(0)}
        if abs(first["botkit"] - first["TRL"]) > LOSS_TOLERANCE * abs(first["TRL"]):
            print(f"first-step losses differ: {first}", file=sys.stderr)
            return 1
        botkit_step(1 % len(batches))
        trl_step(1 % len(batches))
        seconds: dict[str, list[float]] = {"botkit": [], "TRL": []}
        sides = [("botkit", botkit_step), ("TRL", trl_step)]
        for round_number in range(args.rounds):
            for name, step in sides if round_number % 2 == 0 else sides[::-1]:
                started = clock()
                for index in range(len(batches)):
                    step(index)
                seconds[name].append(clock() - started)
    rates = {name: [len(batches) / s for s in values] for name, values in seconds.items()}
    ratio = statistics.median(b / t for b, t in zip(rates["botkit"], rates["TRL"], strict=True))
    print(
        f"DPO steps on {platform.processor() or platform.machine()}, torch {torch.__version__}, trl {trl.__version__}"
    )
    print(
        f"batches of {BATCH_SIZE} pairs, {min(tokens)}-{max(tokens)} tokens per sequence; first loss {first['botkit']:.5f}"
    )
    for name in ("botkit", "TRL"):
        print(f"  {name:7} {statistics.median(rates[name]):.3f} steps/s (median of {args.rounds} rounds)")
    pairs = BATCH_SIZE * len(batches)
    print(
        f"  botkit's reference pass, once before training: {reference_seconds / pairs * 1000:.0f} ms per pair"
    )
    print(f"ratio botkit / TRL: {ratio:.2f} (target >= {TARGET_RATIO})")
    return 1 if args.check and ratio < TARGET_RATIO else 0


if __name__ == "__main__":
    sys.exit(main())
