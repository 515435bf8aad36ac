"""The dataset card (README.md beside the data): counts per filter, dates, sources, model, licence, template."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from botkit import __version__
from botkit.prompts import alpaca_text

from .formats import SPLITS, file_name

if TYPE_CHECKING:
    from .export import ExportReport

SYSTEM_PROMPTS_SHOWN = 5


def front_matter(report: ExportReport) -> list[str]:
    """Hugging Face card metadata: ``load_dataset(folder, "<format>")`` finds each format's files."""
    lines = ["---", f"license: {report.options.license}", "task_categories:", "- text-generation", "configs:"]
    written = {path for path, _ in report.files}
    for name in report.options.formats:
        paths = [(split, file_name(name, split)) for split in SPLITS if file_name(name, split) in written]
        if not paths:
            continue
        lines += [f"- config_name: {name}", "  data_files:"]
        for split, path in paths:
            lines += [f"  - split: {split}", f"    path: {path}"]
    lines.append("---")
    return lines


def _counter_line(counter: dict[str, int]) -> str:
    return ", ".join(f"{name} ({count:,})" for name, count in sorted(counter.items(), key=lambda i: -i[1]))


def render_card(report: ExportReport) -> str:
    options = report.options
    sources = report.sources
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    out: list[str] = [*front_matter(report), "", "# botkit conversation export", ""]
    out.append(
        f"Exported by botkit {__version__} on {now} from the bot's stored conversations "
        f"(`botkit export`, seed {options.seed}). Formats: {', '.join(options.formats)}."
    )

    out += ["", "## Files", "", "| file | records |", "|---|---|"]
    out += [f"| `{path}` | {count:,} |" for path, count in report.files]
    missing = [name for name in options.formats if not any(report.written.get(name, {}).values())]
    if missing:
        out += ["", f"Nothing was written for: {', '.join(missing)}."]
    out += [
        "",
        "Load a format with the `datasets` library:",
        "",
        "```python",
        "import datasets",
        f'data = datasets.load_dataset("path/to/this/folder", "{options.formats[0]}")',
        "```",
    ]

    out += [
        "",
        "## Counts per filter",
        "",
        "Each step removes exchanges (a user's message and the bot's reply) ",
    ]
    out[-1] += "or changes them; the steps run in this order (docs/finetune.md)."
    out += ["", "| step | removed | changed | what it removes |", "|---|---|---|---|"]
    out.append(f"| messages read | | | {report.messages:,} stored messages matched the selection |")
    for reason, count in sorted(report.skipped.items()):
        out.append(f"| skipped: {reason} | {count:,} | | rows that cannot form an exchange |")
    for step in report.counts.steps.values():
        if step.enabled:
            out.append(f"| {step.name} | {step.removed:,} | {step.changed or ''} | {step.description} |")
        else:
            out.append(f"| {step.name} | off | | {step.description} |")
    out.append(f"| **examples kept** | {report.counts.kept:,} | | of {report.counts.exchanges:,} exchanges |")
    if "preference" in options.formats:
        out += [
            "",
            f"Preference pairs: {report.pairs_from_corrections:,} from corrections (chosen: the correction, "
            f"rejected: the bot's answer), {report.pairs_from_feedback:,} from rated alternative answers "
            "to the same prompt (chosen: voted up or approved, rejected: voted down or rejected).",
        ]

    curation = options.curation
    out += ["", "## Selection and curation", ""]
    out += [f"- Selection: {part}" for part in options.selection.describe()]
    out += [
        f"- Moderation-clean only: {'yes' if curation.moderation_clean else 'no'}",
        f"- Corrections replace answers: {'yes' if curation.corrections else 'no'}",
        f"- PII and secrets: {curation.pii}",
        f"- Feedback: {curation.feedback}"
        + (f" (up to {curation.max_weight} copies in train)" if curation.feedback == "weighted" else ""),
        f"- Length: answers of at least {curation.min_chars} characters, examples of at most "
        f"{curation.max_chars:,}",
        f"- Languages: {', '.join(curation.languages) or 'any'}",
        f"- Exact duplicates removed: {'yes' if curation.exact_duplicates else 'no'}",
        "- Near duplicates removed: "
        + (f"MinHash similarity of {curation.near_duplicates} or more" if curation.near_duplicates else "no"),
        f"- History: up to {curation.history} earlier exchanges of the conversation before each example",
        "- Answers cut at max_tokens: "
        + ('kept, each record labelled `"truncated": true`' if curation.keep_truncated else "dropped"),
    ]

    out += ["", "## Split", ""]
    out.append(
        f"Deterministic by conversation (seed {options.seed}, validation fraction "
        f"{options.validation_fraction}): a conversation's examples are all in one split."
    )
    out.append(
        f"Conversations: train {report.conversations.get('train', 0):,}, "
        f"validation {report.conversations.get('validation', 0):,}."
    )

    out += ["", "## Date range", ""]
    if sources.first and sources.last:
        out.append(f"Messages from {sources.first.isoformat()} to {sources.last.isoformat()} (UTC).")
    else:
        out.append("No example was kept (only preference pairs).")
    if options.selection.since or options.selection.until:
        out.append(f"Requested: {'; '.join(options.selection.describe()[:1])}.")

    out += ["", "## Sources", ""]
    out += [
        f"- Platforms: {_counter_line(sources.platforms) or 'none'}",
        f"- Channels: {len(sources.channels):,}",
        f"- Backends: {_counter_line(sources.backends) or 'none'}",
        f"- Models that wrote the answers: {_counter_line(sources.models) or 'none'}",
        f"- LoRA adapters: {_counter_line(sources.adapters) or 'none'}",
    ]

    if report.mixed:
        out += [
            "",
            "## Mixed-in data",
            "",
            "Examples of other sources (`--mix`), written into the train file of each format but "
            "preference, never into validation. They are written as they are: the selection and "
            "curation above apply to the stored conversations only. A `botkit finetune synth` folder's "
            "own README.md names its teacher model and the teacher's terms of use, which bind this "
            "dataset too.",
            "",
            "| source | format | weight | examples | records in train | skipped |",
            "|---|---|---|---|---|---|",
        ]
        for mixed in report.mixed:
            skipped = "; ".join(f"{reason}: {count:,}" for reason, count in sorted(mixed.skipped.items()))
            out.append(
                f"| `{mixed.source.path}` | {mixed.format} | {mixed.source.weight:g} | {mixed.read:,} | "
                f"{mixed.written:,} | {skipped or 'none'} |"
            )

    out += ["", "## Base model", ""]
    out.append(
        f"`{options.base_model}`: the model these examples are meant to fine-tune."
        if options.base_model
        else "Not named (pass `--base-model`)."
    )
    if options.base_model_license:
        out.append(f"Its licence (from its metadata): `{options.base_model_license}`.")
    else:
        out.append("Its licence could not be read (pass `--base-model` as the model's file or folder).")

    out += ["", "## Licence notes", ""]
    out += [
        f"- Declared licence of this dataset: `{options.license}`.",
        "- The messages were written by the bot's users and the answers by the models above: "
        "whoever publishes or trains on this data must hold the rights to do so and respect the "
        "platforms' terms and the users' consent.",
        "- Users who opted out (`/optout`) and messages their authors deleted are excluded; "
        "speakers are pseudonymised (User 1, User 2); PII and secrets were handled as listed above.",
        "- Fine-tuning inherits the base model's licence"
        + (f" (`{options.base_model_license}`)" if options.base_model_license else "")
        + ": check it before distributing an adapter.",
    ]

    out += ["", "## Prompt template", ""]
    out += [
        "Alpaca records follow the Stanford Alpaca template. The newest user message is the "
        "`instruction`; the system prompt and the earlier turns, one `Speaker: text` line each "
        "(`User`, or `User 1`, `User 2` when several people spoke, and `Assistant`), form the `input`. "
        "Without either, `input` is empty and the template without input applies.",
        "",
        f"Variant `{options.alpaca_variant}` (the backend's `alpaca_variant`): the answer follows "
        + (
            "`### Response:` directly, as in Stanford's training code."
            if options.alpaca_variant == "stanford"
            else "`### Response:` and a newline, as in alpaca-lora."
        ),
        "",
        "With input:",
        "",
        "```text",
        alpaca_text("{instruction}", "{input}", options.alpaca_variant).rstrip("\n"),
        "```",
        "",
        "Without input:",
        "",
        "```text",
        alpaca_text("{instruction}", "", options.alpaca_variant).rstrip("\n"),
        "```",
        "",
        "Chat and ShareGPT records hold the same turns as messages: the system prompt, then user and "
        "assistant turns (a named speaker's message starts with `User N: `), the answer last.",
    ]
    if "preference" in options.formats:
        out.append(
            "Preference prompts are "
            + (
                "rendered with the Alpaca template above."
                if options.preference_prompt == "alpaca"
                else "chat messages; the trainer applies the model's chat template."
            )
        )
    out += ["", "System prompts used:", ""]
    for prompt, count in sources.system_prompts.most_common(SYSTEM_PROMPTS_SHOWN):
        if not prompt.strip():
            out.append(f"- {count:,} examples: none")
            continue
        out += [
            f"- {count:,} examples:",
            "",
            "  ```text",
            *(f"  {line}" for line in prompt.splitlines()),
            "  ```",
        ]
    if len(sources.system_prompts) > SYSTEM_PROMPTS_SHOWN:
        out.append(f"- and {len(sources.system_prompts) - SYSTEM_PROMPTS_SHOWN} more")
    return "\n".join(out) + "\n"
