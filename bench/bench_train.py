"""LoRA training benchmark: botkit's training step against the plain peft + transformers step, on CPU or a GPU.

Run from the repository root::

    .venv/bin/python bench/bench_train.py              # about 3 minutes on two cores
    .venv/bin/python bench/bench_train.py --rounds 9   # more rounds, a steadier median
    .venv/bin/python bench/bench_train.py --full       # and a full fine-tune for reference (+2 minutes)
    .venv/bin/python bench/bench_train.py --check      # exit 1 when botkit's step is the slower
    .venv/bin/python bench/bench_train.py --device cuda  # on the GPU (the dtype [finetune] picks there)
    .venv/bin/python bench/bench_train.py --grouping   # SFT examples/s with and without length grouping

``--grouping`` measures something else: botkit's step on one epoch of a chat
export of mixed lengths (no history to six earlier exchanges, answers of one to
four sentences), batched as ``botkit finetune train`` batches it with
``group_by_length`` on and off (``epoch_batches``, the same seed), alternating
in rounds; it prints examples per second, the share of padding in the batches,
and the ratio of the rates.

The base model is the embedded SmolLM2-135M, loaded from its GGUF by
transformers exactly as ``botkit finetune train`` loads it (``load_base`` with
the default backend's target, float32 on the CPU). The other sides train copies
of those very weights. Every side trains on the same batches of 4 examples:
chat records as ``botkit export`` writes them (the default system prompt, one
or two earlier exchanges, a question, an answer of a sentence or two), rendered
and tokenized by ``botkit.finetune`` as training renders them.

- **botkit**: the step of ``finetune/train.py``: peft LoRA with the default
  ``[finetune]`` settings (r 8, alpha 16, dropout 0.05 on q, k, v and o),
  ``optimizer_step`` (``batch_loss``, which sends only the positions that
  predict an answer token through ``lm_head``, backward, gradient clipping at
  1.0), then the AdamW step.
- **baseline**: what a peft user writes: the same LoRA config and batch,
  ``model(input_ids, attention_mask, labels=labels).loss`` with the prompt and
  padding labelled -100, backward, the same clipping, the same AdamW step.
- **full fine-tune** (a second reference, with ``--full``): the baseline's
  step with every parameter trainable and no LoRA.

The first step of each side must give the same loss (to 1e-4 relative). LoRA's
B matrices start at zero, so that loss is the base model's on every side: the
check is that the same tokens count and are averaged the same way. Warm-up
steps follow, then rounds in which each side trains on every batch once,
alternating which side goes first. Rates are the medians of the rounds; the
ratio is the median of the per-round ratios.

Memory is taken during the warm-up, one side after the other: freed heap
memory is given back (``malloc_trim``) and the peak RSS restarted from the RSS
then (``/proc/self/clear_refs``) before each side's warm-up, so one side's
leftovers neither count for the next nor hide what it allocates. "peak RSS" is
the process's (``resource.getrusage``, every side's model resident, and
the full fine-tune's AdamW state when it runs); "step MB" is how far it rose
during that side's warm-up: the activations, gradients and logits of a step.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

# BOTKIT_* variables (BOTKIT_CONFIG, BOTKIT_FINETUNE__...) would change what is measured.
for _name in [name for name in os.environ if name.startswith("BOTKIT_")]:
    del os.environ[_name]

from botkit.finetune.base_model import target_from_config
from botkit.finetune.examples import Example, Feedback
from botkit.finetune.formats import chat_record
from botkit.finetune.settings import DEVICE, FinetuneSettings
from botkit.finetune.train import (
    Encoded,
    bos_prefix,
    encode,
    epoch_batches,
    import_torch,
    load_base,
    lora_model,
    optimizer_step,
    prompt_style,
)
from botkit.finetune.training_data import read_examples
from botkit.settings import load_settings
from botkit.types import Role, Turn

TARGET_RATIO = 1.0  # botkit's steps/s over the baseline's
LOSS_TOLERANCE = 1e-4  # relative
BATCH_SIZE = 4
clock = time.perf_counter

# Questions a team asks its bot, and answers of a sentence or two.
EXCHANGES = [
    ("How do I reset my VPN password?",
     "Open the IT portal, choose VPN and then Reset password. The new password works within five minutes."),
    ("Where is the IT portal?", "It is at it.example.com, and you sign in with your usual work account."),
    ("When is the next release planned?",
     "Release 4.2 is planned for the last Thursday of the month, after the freeze on the Monday before."),
    ("Who reviews database migrations?", "The platform team reviews them; tag @platform on the pull request."),
    ("Can I work from another country for two weeks?",
     "Yes, for up to four weeks a year. Tell your manager and fill in the remote work form first."),
    ("What does the error 'quota exceeded' mean in the build?",
     "Your project used its monthly CI minutes. Ask in #ci for a temporary increase."),
    ("How many vacation days do I have left?",
     "The HR system shows your balance under Time off. I cannot see personal balances."),
    ("Which Python version do our services use?",
     "All services run Python 3.11; the upgrade to 3.12 is planned for next quarter."),
    ("How do I request a new laptop?",
     "File a hardware request in the IT portal. Laptops are replaced every three years."),
    ("Is the staging database reset every night?",
     "Yes, at 02:00 UTC it is restored from an anonymised copy of production."),
    ("Who is on call this week?", "The on-call rota is in PagerDuty; this week it is the payments team."),
    ("How do I add someone to the shared calendar?",
     "Open the calendar settings, choose Share and add their work email with edit rights."),
    ("What is the expense limit for team dinners?",
     "Up to 40 euros per person, approved by the team lead before the dinner."),
    ("Where are the design guidelines?",
     "They live in the Design space of the wiki, under Guidelines. The Figma library links from there."),
    ("How long are logs kept?", "Application logs are kept for 30 days and audit logs for one year."),
    ("Can I install my own browser extensions?",
     "Only those on the approved list in the IT portal. Ask IT to review any other extension first."),
]  # fmt: skip


@dataclass
class Side:
    """One way of taking a training step, and what it measured."""

    name: str
    step: Callable[[list[Encoded]], float]
    seconds: list[float] = field(default_factory=list)  # per round, all batches
    peak_mb: float = 0.0
    step_mb: float = 0.0
    first_loss: float = 0.0

    def steps_per_s(self, steps: int) -> list[float]:
        return [steps / seconds for seconds in self.seconds]


def chat_records(system: str, count: int) -> list[dict]:
    """``count`` records as ``botkit export --format chat`` writes them: one or two exchanges of history."""
    records = []
    for index in range(count):
        asked, answer = EXCHANGES[index % len(EXCHANGES)]
        earlier = [EXCHANGES[(index + offset) % len(EXCHANGES)] for offset in (3, 7)[: 1 + index % 2]]
        history = [
            Turn(role, text) for q, a in earlier for role, text in ((Role.USER, q), (Role.ASSISTANT, a))
        ]
        example = Example(
            conversation_id=index, reply_id=index, created_at=datetime.now(UTC), platform="bench",
            channel_id="c1", backend="default", model="SmolLM2-135M-Instruct", adapter=None,
            status="completed", system=system, history=history, instruction=asked, speaker=None,
            output=answer, feedback=Feedback(),
        )  # fmt: skip
        records.append(chat_record(example))
    return records


def training_batches(target, loaded, hyper: FinetuneSettings, system: str, count: int) -> list[list[Encoded]]:
    """The records written to a JSONL file, read back and encoded as ``botkit finetune train`` does."""
    with tempfile.TemporaryDirectory(prefix="botkit-bench-train-") as folder:
        path = Path(folder) / "chat-train.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in chat_records(system, count)), encoding="utf-8")
        texts, read = read_examples(path, "chat", prompt_style(target, loaded))
    encoded = encode(loaded, texts, hyper.max_length, read, bos_prefix(target, loaded))
    assert len(encoded) == count, read.lines()
    return [encoded[i : i + BATCH_SIZE] for i in range(0, count, BATCH_SIZE)]


def botkit_side(model, loaded, hyper: FinetuneSettings, torch) -> Side:
    model, parameters, optimizer = lora_model(model, hyper)

    def step(batch: list[Encoded]):
        model.train()
        loss = optimizer_step(model, [batch], loaded, parameters, torch)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss  # on the device, as the training loop keeps it

    return Side("botkit (LoRA, answer logits)", step)


def plain_step(model, parameters, optimizer, pad_id: int, torch) -> Callable[[list[Encoded]], float]:
    """The step a transformers user writes: pad, label the prompt -100, ``.loss``, backward, AdamW."""

    def step(batch: list[Encoded]) -> float:
        model.train()
        width = max(len(e.ids) for e in batch)
        ids = torch.tensor([e.ids + [pad_id] * (width - len(e.ids)) for e in batch])
        mask = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in batch])
        labels = torch.tensor(
            [
                [-100] * e.prompt_tokens + e.ids[e.prompt_tokens :] + [-100] * (width - len(e.ids))
                for e in batch
            ]
        )
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def baseline_side(model, loaded, hyper: FinetuneSettings, torch) -> Side:
    model, parameters, optimizer = lora_model(model, hyper)
    return Side(
        "baseline (peft + .loss)", plain_step(model, parameters, optimizer, loaded.pad_token_id, torch)
    )


def full_side(model, loaded, hyper: FinetuneSettings, torch) -> Side:
    parameters = list(model.parameters())
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=hyper.learning_rate, weight_decay=0.0)
    return Side(
        "full fine-tune (.loss)", plain_step(model, parameters, optimizer, loaded.pad_token_id, torch)
    )


def reset_peak_rss() -> None:
    """Give freed heap memory back, then start the peak RSS (what getrusage reports) from the RSS now."""
    ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def warm_up(side: Side, batches: list[list[Encoded]], torch, device: str) -> None:
    """Untimed steps, whose peak memory is the side's (the process's RSS; on a GPU, its memory)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        floor = torch.cuda.memory_allocated() / 2**20
    else:
        reset_peak_rss()
        floor = rss_mb()
    for batch in batches:
        side.step(batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        side.peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        side.peak_mb = peak_rss_mb()
    side.step_mb = side.peak_mb - floor


def timed_steps(side: Side, batches: list[list[Encoded]], torch, device: str) -> float:
    """Seconds for ``batches``, the device's queue drained at both ends (the losses are read once, after)."""
    wait = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    wait()
    started = clock()
    for batch in batches:
        side.step(batch)
    wait()
    return clock() - started


def benchmark(args: argparse.Namespace) -> tuple[list[Side], list[list[Encoded]], dict[str, object]]:
    load_before = os.getloadavg()[0]
    torch, engine = import_torch()
    settings = load_settings(None)
    target = target_from_config(settings, "default", None)
    hyper = FinetuneSettings(device=args.device)  # the defaults: r 8, alpha 16, dropout 0.05, q k v o
    started = clock()
    loaded = load_base(target, hyper, engine)
    load_seconds = clock() - started
    if args.grouping:
        return grouping_benchmark(args, target, loaded, hyper, settings.bot.system_prompt, torch), {
            "model": f"{target.base.name}, {next(loaded.model.parameters()).dtype} on {loaded.device}",
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_before": load_before,
        }
    batches = training_batches(target, loaded, hyper, settings.bot.system_prompt, args.batches * BATCH_SIZE)
    # botkit trains the loaded model, as train() does; the other sides train copies of its weights.
    copies = [copy.deepcopy(loaded.model) for _ in range(2 if args.full else 1)]
    sides = [botkit_side(loaded.model, loaded, hyper, torch), baseline_side(copies[0], loaded, hyper, torch)]
    if args.full:
        sides.append(full_side(copies[1], loaded, hyper, torch))
    setup = {
        "model": f"{target.base.name} ({target.base.path.name}), {next(loaded.model.parameters()).dtype} "
        f"on {loaded.device}",
        "load_seconds": load_seconds,
        "hyper": hyper,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_before": load_before,
    }
    for side in sides:
        torch.manual_seed(hyper.seed)  # the same dropout masks on every side
        side.first_loss = float(side.step(batches[0]))
    reference = sides[1].first_loss
    for side in sides:
        assert abs(side.first_loss - reference) <= LOSS_TOLERANCE * abs(reference), (
            f"{side.name}: first-step loss {side.first_loss:.6f}, baseline {reference:.6f}"
        )
    for side in sides:
        warm_up(side, [batches[i % len(batches)] for i in range(args.warmup)], torch, args.device)
    for round_number in range(args.rounds):
        order = sides if round_number % 2 == 0 else sides[::-1]
        for side in order:
            side.seconds.append(timed_steps(side, batches, torch, args.device))
    return sides, batches, setup


def mixed_records(system: str, count: int) -> list[dict]:
    """Chat records of mixed lengths: 0 to 6 earlier exchanges, answers of one to four sentences."""
    records = chat_records(system, count)
    for index, record in enumerate(records):
        *history, question, answer = record["messages"][1:]
        extra = [EXCHANGES[(index + k) % len(EXCHANGES)] for k in range(1, 1 + (index * 5) % 7)]
        earlier = [{"role": r, "content": t} for q, a in extra for r, t in (("user", q), ("assistant", a))]
        sentences = [EXCHANGES[(index + k) % len(EXCHANGES)][1] for k in range(1 + (index * 3) % 4)]
        answer = {"role": "assistant", "content": " ".join(sentences)}
        record["messages"] = [record["messages"][0], *earlier, question, answer]
    return records


@dataclass
class Grouping:
    """One epoch's batches with or without length grouping, and their timings."""

    name: str
    batches: list[list[Encoded]]
    seconds: list[float] = field(default_factory=list)

    @property
    def padding(self) -> float:
        padded = sum(max(len(e.ids) for e in batch) * len(batch) for batch in self.batches)
        return 1 - sum(len(e.ids) for batch in self.batches for e in batch) / padded


def grouping_benchmark(args, target, loaded, hyper: FinetuneSettings, system: str, torch) -> list[Grouping]:
    """botkit's step over one epoch, batched without and with ``group_by_length``, alternating in rounds."""
    with tempfile.TemporaryDirectory(prefix="botkit-bench-train-") as folder:
        path = Path(folder) / "chat-train.jsonl"
        records = mixed_records(system, args.examples)
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        texts, read = read_examples(path, "chat", prompt_style(target, loaded))
    encoded = encode(loaded, texts, hyper.max_length, read, bos_prefix(target, loaded))
    lengths = [len(e.ids) for e in encoded]
    sides = [
        Grouping(
            name, [[encoded[i] for i in b] for b in epoch_batches(lengths, BATCH_SIZE, hyper.seed, grouped)]
        )
        for name, grouped in (("random batches", False), ("length-grouped", True))
    ]
    runner = botkit_side(loaded.model, loaded, hyper, torch)
    warm_up(runner, sides[0].batches[: args.warmup], torch, args.device)
    for round_number in range(args.rounds):
        for side in sides if round_number % 2 == 0 else sides[::-1]:
            side.seconds.append(timed_steps(runner, side.batches, torch, args.device))
    return sides


def report_grouping(args: argparse.Namespace, sides: list[Grouping], setup: dict) -> int:
    examples = sum(len(b) for b in sides[0].batches)
    lengths = sorted(len(e.ids) for b in sides[0].batches for e in b)
    print("botkit LoRA training benchmark: length grouping (SFT examples/s, one epoch, botkit's step)")
    print(
        f"  python {platform.python_version()}, {os.cpu_count()} CPUs, torch {setup['torch']} with "
        f"{setup['threads']} threads, load average {setup['load_before']:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end"
    )
    print(f"  base model {setup['model']}; {args.rounds} rounds, alternating which side goes first")
    print(
        f"  {examples} examples in batches of {BATCH_SIZE}: {statistics.mean(lengths):.0f} tokens each "
        f"(median {statistics.median(lengths):.0f}, {lengths[0]}-{lengths[-1]})"
    )
    print()
    print(f"  {'batches':<16} {'examples/s':>10} {'(min-max)':>11} {'padding':>8}")
    for side in sides:
        rates = [examples / seconds for seconds in side.seconds]
        print(f"  {side.name:<16} {statistics.median(rates):>10.2f} {spread(rates):>11} {side.padding:>8.1%}")
    ratios = [plain / grouped for plain, grouped in zip(sides[0].seconds, sides[1].seconds, strict=True)]
    print()
    print(f"  examples/s length-grouped / random (median of per-round ratios): "
          f"{statistics.median(ratios):.3f} ({spread(ratios)})")  # fmt: skip
    return 0 if statistics.median(ratios) >= 1.0 or not args.check else 1


def lm_head_positions(batch: list[Encoded]) -> tuple[int, int, int]:
    """Positions the output layer computes per step: every one, the columns batch_loss keeps, the answers."""
    width = max(len(e.ids) for e in batch)
    columns = set().union(*(range(e.prompt_tokens - 1, len(e.ids) - 1) for e in batch))
    return len(batch) * width, len(batch) * len(columns), sum(len(e.ids) - e.prompt_tokens for e in batch)


def spread(values: Sequence[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def report(args: argparse.Namespace, sides: list[Side], batches: list[list[Encoded]], setup: dict) -> bool:
    hyper: FinetuneSettings = setup["hyper"]
    examples = [e for batch in batches for e in batch]
    tokens = [len(e.ids) for e in examples]
    answers = [len(e.ids) - e.prompt_tokens for e in examples]
    steps = len(batches)
    positions = [lm_head_positions(batch) for batch in batches]
    print("botkit LoRA training benchmark")
    print(
        f"  python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{setup['torch']} with {setup['threads']} threads, "
        f"load average {setup['load_before']:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    )
    print(f"  base model {setup['model']}, loaded by load_base in {setup['load_seconds']:.1f} s")
    print(
        f"  LoRA r {hyper.rank}, alpha {hyper.alpha:g}, dropout {hyper.dropout:g} on "
        f"{','.join(hyper.target_modules)}; AdamW lr {hyper.learning_rate:g}, gradient clipping 1.0"
    )
    print(
        f"  {len(examples)} examples in {steps} batches of {BATCH_SIZE}: {statistics.mean(tokens):.0f} tokens "
        f"each ({min(tokens)}-{max(tokens)}), {statistics.mean(answers):.0f} of them answer"
    )
    print(
        f"  lm_head positions per step: baseline {statistics.mean(p[0] for p in positions):.0f}, "
        f"botkit {statistics.mean(p[1] for p in positions):.0f} (the columns where any row predicts an answer "
        f"token); answer tokens {statistics.mean(p[2] for p in positions):.0f}"
    )
    print(
        f"  1 check step + {args.warmup} warm-up steps per side, then {args.rounds} rounds of {steps} steps"
    )
    print()
    print(
        f"  {'side':<30} {'steps/s':>8} {'(min-max)':>11} {'examples/s':>10} {'first loss':>11} "
        f"{'peak RSS MB':>11} {'step MB':>8}"
    )
    for side in sides:
        rates = side.steps_per_s(steps)
        print(
            f"  {side.name:<30} {statistics.median(rates):>8.2f} {spread(rates):>11} "
            f"{statistics.median(rates) * BATCH_SIZE:>10.2f} {side.first_loss:>11.6f} {side.peak_mb:>11.0f} "
            f"{side.step_mb:>8.0f}"
        )
    botkit, baseline = sides[0], sides[1]
    ratios = [b / t for b, t in zip(baseline.seconds, botkit.seconds, strict=True)]
    ratio = statistics.median(ratios)
    print()
    print(f"  steps/s botkit / baseline (median of per-round ratios): {ratio:.3f} ({spread(ratios)})")
    if len(sides) > 2:
        full = [f / t for f, t in zip(sides[2].seconds, botkit.seconds, strict=True)]
        print(f"  steps/s botkit / full fine-tune: {statistics.median(full):.3f} ({spread(full)})")
    passed = ratio >= TARGET_RATIO
    print(f"  target: ratio >= {TARGET_RATIO:g}: {'PASS' if passed else 'FAIL'} ({ratio:.3f})")
    return passed


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per side (default 5)")
    parser.add_argument("--batches", type=int, default=4, help="batches of 4 per round (default 4)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed steps per side first, memory taken (default 1)"
    )
    parser.add_argument("--full", action="store_true", help="also time a full fine-tune (all parameters)")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when the target is missed")
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), cuda or cuda:N; the dtype is what [finetune] picks there",
    )
    parser.add_argument(
        "--grouping", action="store_true", help="time SFT examples/s with and without length grouping instead"
    )
    parser.add_argument(
        "--examples",
        type=int,
        default=48,
        help="examples of mixed length in the --grouping epoch (default 48)",
    )
    args = parser.parse_args(argv)
    if min(args.rounds, args.batches, args.warmup, args.examples) < 1:
        parser.error("--rounds, --batches, --warmup and --examples must be at least 1")
    if not DEVICE.fullmatch(args.device) or args.device == "auto":
        parser.error("--device must be cpu, cuda or cuda:N")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.grouping:
        measured, setup = benchmark(args)
        return report_grouping(args, measured, setup)
    sides, batches, setup = benchmark(args)
    passed = report(args, sides, batches, setup)
    return 0 if passed or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
