"""The dataset card of ``botkit finetune synth`` (README.md beside train.json): teacher, prompt, counts, terms."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from botkit import __version__

from .synth_filter import FILTERS, UNSUITABLE_WORDS
from .synth_prompt import NO_INPUT, PROMPT_TEMPLATE

if TYPE_CHECKING:
    from .synth import SynthRun

TERMS_NOT_GIVEN = (
    "not given (`--teacher-terms`). Check the terms of the model and the service that wrote "
    "this data before you use it: Stanford Alpaca's data was for research only because the "
    "terms of use of the model that wrote it forbade building competing models with it."
)


def render_synth_card(run: SynthRun, records: int) -> str:
    options, counts = run.options, run.counts
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    out = [
        "---",
        f"license: {options.license}",
        "task_categories:",
        "- text-generation",
        "configs:",
        "- config_name: alpaca",
        "  data_files:",
        "  - split: train",
        "    path: train.json",
        "---",
        "",
        "# botkit synthetic instructions",
        "",
        f"Written by botkit {__version__} on {now} (`botkit finetune synth`, Self-Instruct as "
        f"Stanford Alpaca ran it): `train.json` holds {records:,} tasks as Alpaca JSON "
        "(`instruction`, `input`, `output`).",
        "",
        "## Teacher",
        "",
        f"- backend: {run.teacher.description}",
        f"- terms of use: {options.teacher_terms or TERMS_NOT_GIVEN}",
        f"- sampling: temperature {options.temperature:g}, top_p 1, at most {options.max_tokens:,} tokens a request"
        + (f", seed {options.seed}" if options.seed is not None else ""),
        "",
        "## Seed tasks",
        "",
        f"{len(run.seeds):,} tasks from {run.seed_source}. Each request showed "
        f"{options.seed_examples} of them and {options.generated_examples} tasks written before "
        f"(once there were some), and asked for tasks up to number {options.batch_size}.",
        "",
        "## Counts",
        "",
        "| | |",
        "|---|---|",
        f"| requests | {counts.requests:,} |",
    ]
    out += [f"| failed requests: {name} | {count:,} |" for name, count in counts.failed.items()]
    out += [
        f"| tasks parsed | {counts.parsed:,} |",
        f"| malformed items skipped | {counts.malformed:,} |",
    ]
    out += [f"| rejected: {name} | {counts.rejected.get(name, 0):,} |" for name in FILTERS]
    out += [
        f"| kept | {counts.kept:,} (written: {records:,}) |",
        f"| prompt tokens | {counts.prompt_tokens:,} |",
        f"| completion tokens | {counts.completion_tokens:,} |",
        f"| time | {counts.seconds:,.1f} s |",
        "",
        "## Filters",
        "",
        f"- length: {options.min_words} to {options.max_words} words;",
        f"- unsuitable for a text model: an instruction with any of {', '.join(UNSUITABLE_WORDS)};",
        "- exact duplicates (case and spacing ignored) and near duplicates (MinHash similarity of "
        f"character 5-grams at least {options.near_duplicate}) of an instruction seen before"
        if options.near_duplicate is not None
        else "- exact duplicates (case and spacing ignored) of an instruction seen before; no near-duplicate filter",
        f"- ROUGE-L F-measure (rouge-score, no stemming) below {options.rouge_threshold:g} against every "
        "kept instruction and every seed task.",
        "",
        "## Prompt template",
        "",
        f"Examples are numbered `N. Instruction:`, `N. Input:` (`{NO_INPUT}` when empty), "
        "`N. Output:`, each followed by `###`; the teacher gets it as one user message.",
        "",
        "```text",
        PROMPT_TEMPLATE,
        "```",
        "",
    ]
    return "\n".join(out)
