"""``botkit export`` and ``botkit finetune review`` as an operator runs them: formats, card, split, refusals.

Conversations are stored by the real bot (memory plugin, scripted backend);
the commands run through click's CliRunner on the same database.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from export_helpers import (
    SEED_CONFIG,
    give_feedback,
    load_with_datasets,
    read_records,
    reply_to,
    settle,
    talk,
)
from sqlalchemy import select

from botkit.cli import create_cli
from botkit.storage import FeedbackRecord, MessageRecord, ModerationEventRecord, utcnow


@pytest.fixture
def project(tmp_path, write_config):
    """A config.toml whose database the seeding bot and the commands share."""
    data = tmp_path / "data"
    config = write_config(
        textwrap.dedent(
            f"""
            [bot]
            system_prompt = "You are the team's helpful assistant."
            [backend]
            type = "scripted"
            [storage]
            data_dir = "{data}"
            """
        )
    )
    return {"config": config, "storage": {"storage": {"data_dir": str(data)}}, "root": tmp_path}


def seed(make_bot, project, conversation) -> None:
    async def run() -> None:
        async with make_bot({**SEED_CONFIG, **project["storage"]}) as bot:
            await conversation(bot)
            await settle(bot)

    asyncio.run(run())


def botkit(project, *args: str):
    result = CliRunner().invoke(create_cli(), ["--config", str(project["config"]), *args])
    return result


async def team_chat(bot) -> None:
    """A multi-turn conversation, a correction, and two rated answers to the same first message."""
    await talk(bot, "How do I deploy?", "Run make deploy.", channel="ops")
    await talk(bot, "And roll back?", "Run make rollback.", channel="ops")
    await talk(bot, "What port does the API use?", "Port 80.", channel="dev")
    await give_feedback(bot, "What port does the API use?", "correction", correction="Port 8443.")
    await talk(bot, "Who maintains the wiki?", "The platform team.", channel="help-1")
    await talk(bot, "Who maintains the wiki?", "Nobody knows.", channel="help-2")
    await give_feedback(bot, "Who maintains the wiki?", "reaction", value="👍")  # the first answer
    async with bot.db.session() as session:
        other = await session.scalar(select(MessageRecord.id).where(MessageRecord.text == "Nobody knows."))
        session.add(FeedbackRecord(message_id=other, kind="reaction", value="👎", created_at=utcnow()))


def test_every_format_loads_with_datasets_with_exactly_the_expected_columns(make_bot, project, tmp_path):
    seed(make_bot, project, team_chat)
    out = tmp_path / "dataset"
    result = botkit(
        project,
        "export",
        "--out", str(out),
        "--format", "alpaca,alpaca-jsonl",
        "--format", "chat",
        "--format", "sharegpt",
        "--format", "preference",
        "--validation-fraction", "0",
        "--feedback-policy", "off",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cache = tmp_path / "hf-cache"
    expected = {
        "alpaca/train.json": ["instruction", "input", "output"],
        "alpaca-jsonl/train.jsonl": ["instruction", "input", "output"],
        "chat/train.jsonl": ["messages"],
        "sharegpt/train.jsonl": ["conversations"],
        "preference/train.jsonl": ["prompt", "chosen", "rejected"],
    }
    for path, columns in expected.items():
        loaded = load_with_datasets(out / path, cache)
        assert loaded.column_names == columns, path
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(
        [*expected, "README.md"]
    )

    alpaca = {r["instruction"]: r for r in load_with_datasets(out / "alpaca/train.json", cache)}
    assert alpaca["And roll back?"] == {
        "instruction": "And roll back?",
        "input": "You are the team's helpful assistant.\n\nUser: How do I deploy?\nAssistant: Run make deploy.",
        "output": "Run make rollback.",
    }
    assert alpaca["What port does the API use?"]["output"] == "Port 8443."
    assert read_records(out / "alpaca-jsonl/train.jsonl") == read_records(out / "alpaca/train.json")

    chat = [r["messages"] for r in read_records(out / "chat/train.jsonl")]
    assert chat[1] == [
        {"role": "system", "content": "You are the team's helpful assistant."},
        {"role": "user", "content": "How do I deploy?"},
        {"role": "assistant", "content": "Run make deploy."},
        {"role": "user", "content": "And roll back?"},
        {"role": "assistant", "content": "Run make rollback."},
    ]
    sharegpt = [r["conversations"] for r in read_records(out / "sharegpt/train.jsonl")]
    assert [turn["from"] for turn in sharegpt[1]] == ["system", "human", "gpt", "human", "gpt"]
    assert [turn["value"] for turn in sharegpt[1]] == [m["content"] for m in chat[1]]

    pairs = read_records(out / "preference/train.jsonl")
    system = {"role": "system", "content": "You are the team's helpful assistant."}
    assert pairs == [
        {
            "prompt": [system, {"role": "user", "content": "What port does the API use?"}],
            "chosen": [{"role": "assistant", "content": "Port 8443."}],
            "rejected": [{"role": "assistant", "content": "Port 80."}],
        },
        {
            "prompt": [system, {"role": "user", "content": "Who maintains the wiki?"}],
            "chosen": [{"role": "assistant", "content": "The platform team."}],
            "rejected": [{"role": "assistant", "content": "Nobody knows."}],
        },
    ]

    card = (out / "README.md").read_text()
    for expected_text in [
        "| consent | 0 |",
        "| exact duplicates | 0 |",
        "| **examples kept** | 5 |",
        "Preference pairs: 1 from corrections",
        "1 from rated alternative answers",
        "- Models that wrote the answers: scripted (5)",
        "- Platforms: test (5)",
        "`scripted`: the model these examples are meant to fine-tune.",
        "Its licence could not be read (pass `--base-model` as the model's file or folder).",
        "### Instruction:\n{instruction}\n\n### Input:\n{input}",
        "You are the team's helpful assistant.",
        "| `chat/train.jsonl` | 5 |",
        "Declared licence of this dataset: `other`",
        "Conversations: train 4, validation 0.",
    ]:
        assert expected_text in card, expected_text
    assert "Messages from 20" in card
    # The card's own metadata lets `datasets` find each format by name.
    import datasets

    by_name = datasets.load_dataset(str(out), "sharegpt", split="train", cache_dir=str(cache))
    assert by_name.num_rows == 5

    text_pairs = tmp_path / "text-pairs"
    result = botkit(
        project, "export", "--out", str(text_pairs), "--format", "preference", "--preference-prompt", "alpaca"
    )
    assert result.exit_code == 0, result.output
    first = read_records(text_pairs / "preference/train.jsonl")[0]
    assert first["prompt"].endswith(
        "### Instruction:\nWhat port does the API use?\n\n"
        "### Input:\nYou are the team's helpful assistant.\n\n### Response:"  # Stanford's: no newline
    )
    assert (first["chosen"], first["rejected"]) == ("Port 8443.", "Port 80.")


async def many_conversations(bot) -> None:
    for number in range(40):
        await talk(
            bot, f"Question one in room {number}?", f"Answer one for room {number}.", channel=f"room-{number}"
        )
        await talk(
            bot, f"Question two in room {number}?", f"Answer two for room {number}.", channel=f"room-{number}"
        )


def rooms(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {r["instruction"].split("room ")[1].rstrip("?") for r in read_records(path)}


def test_the_split_is_deterministic_and_keeps_each_conversation_whole(make_bot, project, tmp_path):
    seed(make_bot, project, many_conversations)
    outputs = {}
    for name, seed_value in [("a", "7"), ("b", "7"), ("c", "8")]:
        out = tmp_path / name
        result = botkit(
            project, "export", "--out", str(out), "--format", "alpaca-jsonl", "--seed", seed_value,
            "--validation-fraction", "0.3", "--no-near-dedup",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        outputs[name] = out
    a, b, c = (outputs[name] / "alpaca-jsonl" for name in "abc")
    assert (a / "train.jsonl").read_bytes() == (b / "train.jsonl").read_bytes()
    assert (a / "validation.jsonl").read_bytes() == (b / "validation.jsonl").read_bytes()
    train, validation = rooms(a / "train.jsonl"), rooms(a / "validation.jsonl")
    assert train and validation and not train & validation
    assert train | validation == {str(n) for n in range(40)}
    assert len(read_records(a / "validation.jsonl")) == 2 * len(validation)  # both exchanges of each room
    assert 4 <= len(validation) <= 20  # about 30% of 40
    assert rooms(c / "validation.jsonl") != validation  # another seed, another split


def test_dry_run_prints_the_counts_and_writes_nothing(make_bot, project, tmp_path):
    seed(make_bot, project, team_chat)
    out = tmp_path / "never"
    result = botkit(project, "export", "--out", str(out), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "messages read: 10" in result.output
    assert "feedback          -1" in result.output  # the thumbs-down answer
    assert "examples kept: 4" in result.output
    assert "dry run: nothing written" in result.output
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_dry_run_counts_answers_cut_at_max_tokens_dropped_or_kept(make_bot, project):
    async def run() -> None:
        config = {**SEED_CONFIG, **project["storage"], "overrides": {"test:cut": {"max_tokens": 2}}}
        async with make_bot(config) as bot:
            await talk(bot, "Tell me a story.", "Once upon a time.", channel="cut")
            await talk(bot, "How do I deploy?", "Run make deploy.", channel="ops")
            await settle(bot)

    asyncio.run(run())
    dropped = botkit(project, "export", "--dry-run")
    kept = botkit(project, "export", "--dry-run", "--keep-truncated")
    assert dropped.exit_code == kept.exit_code == 0, dropped.output + kept.output
    assert "  truncated         -1\n" in dropped.output and "examples kept: 1" in dropped.output
    assert "  truncated         -0  (changed 1)\n" in kept.output and "examples kept: 2" in kept.output


def test_a_cut_answer_is_listed_for_review_marked_and_exported_once_corrected(make_bot, project, tmp_path):
    async def run() -> None:
        config = {**SEED_CONFIG, **project["storage"], "overrides": {"test:cut": {"max_tokens": 2}}}
        async with make_bot(config) as bot:
            await talk(bot, "Tell me a story.", "Once upon a time.", channel="cut")
            await settle(bot)

    asyncio.run(run())
    listed = botkit(project, "finetune", "review", "list")
    assert "bot:  Once upon  [cut at max_tokens: the export drops it unless corrected]" in listed.output
    [reply_id] = [int(line.split()[0][1:]) for line in listed.output.splitlines() if line.startswith("#")]
    assert botkit(project, "finetune", "review", "approve", str(reply_id)).exit_code == 0
    assert "examples kept: 0" in botkit(project, "export", "--dry-run").output  # approving is not enough
    corrected = botkit(project, "finetune", "review", "correct", str(reply_id), "A dragon slept. The end.")
    assert corrected.exit_code == 0, corrected.output
    out = tmp_path / "corrected"
    result = botkit(project, "export", "--out", str(out), "--format", "alpaca-jsonl", "--validation-fraction", "0")
    assert result.exit_code == 0, result.output
    [record] = {r["output"]: r for r in read_records(out / "alpaca-jsonl" / "train.jsonl")}.values()
    assert record == {"instruction": "Tell me a story.", "input": "You are the team's helpful assistant.",
                      "output": "A dragon slept. The end."}  # fmt: skip


def test_unique_examples_and_weighted_records_are_counted_apart(make_bot, project):
    seed(make_bot, project, team_chat)
    result = botkit(project, "export", "--dry-run", "--format", "chat,alpaca")
    assert result.exit_code == 0, result.output
    # four examples kept; the voted-up answer is written twice into train
    assert "examples kept: 4 unique (train 3, validation 1)" in result.output
    for name in ("chat", "alpaca"):
        assert (
            f"{name}: train 4 records (3 examples + 1 extra copy of voted-up ones, --feedback-policy "
            "weighted), validation 1 records"
        ) in result.output


def test_an_existing_folder_is_refused_without_overwrite_and_replaced_with_it(make_bot, project, tmp_path):
    seed(make_bot, project, team_chat)
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    refused = botkit(project, "export", "--out", str(out))
    assert refused.exit_code == 1
    assert "--out" in refused.output and "--overwrite" in refused.output
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    replaced = botkit(project, "export", "--out", str(out), "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "chat"]


def test_the_card_names_the_licence_of_a_base_model_given_as_a_file(make_bot, project, tmp_path):
    from botkit.backends.llamacpp import embedded_model_path

    seed(make_bot, project, team_chat)
    out = tmp_path / "dataset"
    result = botkit(project, "export", "--out", str(out), "--base-model", str(embedded_model_path()))
    assert result.exit_code == 0, result.output
    card = (out / "README.md").read_text()
    assert "Its licence (from its metadata): `apache-2.0`." in card
    assert "- Fine-tuning inherits the base model's licence (`apache-2.0`)" in card


def test_an_empty_selection_fails_clearly_and_writes_no_file(make_bot, project, tmp_path):
    seed(make_bot, project, team_chat)
    out = tmp_path / "dataset"
    result = botkit(project, "export", "--out", str(out), "--since", "2999-01-01")
    assert result.exit_code == 1
    assert "nothing to export: no stored message matches the selection" in result.output
    assert "--since" in result.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["config.toml", "data"]
    filtered = botkit(
        project, "export", "--out", str(out), "--select-feedback", "unrated", "--feedback-policy", "approved"
    )
    assert filtered.exit_code == 1
    assert "selection         -3" in filtered.output and "feedback          -2" in filtered.output
    assert "every one was removed" in filtered.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--since", "yesterday"], "--since"),
        (["--since", "2026-02-01", "--until", "2026-01-01"], "--until"),
        (["--validation-fraction", "1.5"], "--validation-fraction"),
        (["--near-dedup", "2"], "--near-dedup"),
        (["--format", "csv"], "--format"),
        (["--max-weight", "0"], "--max-weight"),
        (["--license", "my licence!"], "--license"),
    ],
)
def test_bad_flag_values_are_refused_naming_the_flag(project, tmp_path, flags, named):
    result = botkit(project, "export", "--out", str(tmp_path / "x"), *flags)
    assert result.exit_code == 2
    assert named in result.output
    assert not (tmp_path / "x").exists()


def test_the_review_queue_from_the_cli(make_bot, project, tmp_path):
    async def chat(bot) -> None:
        await talk(bot, "Is the VPN down?", "Yes, since noon.", channel="a")
        await talk(bot, "Where is the handbook?", "On the wiki, mail hr@example.com.", channel="b")
        await talk(bot, "Who is on call?", "Ann is.", channel="c")

    seed(make_bot, project, chat)
    listed = botkit(project, "finetune", "review", "list")
    assert listed.exit_code == 0, listed.output
    ids = [int(line.split()[0][1:]) for line in listed.output.splitlines() if line.startswith("#")]
    assert len(ids) == 3 and ids == sorted(ids, reverse=True)
    assert "bot:  On the wiki, mail [email removed]." in listed.output  # scrubbed for display
    oncall, handbook, vpn = ids
    assert botkit(project, "finetune", "review", "reject", str(vpn)).output.strip() == f"#{vpn} rejected"
    assert botkit(project, "finetune", "review", "approve", str(oncall)).exit_code == 0
    corrected = botkit(project, "finetune", "review", "correct", str(handbook), "In the shared drive.")
    assert corrected.exit_code == 0, corrected.output
    assert f"#{vpn}" not in botkit(project, "finetune", "review", "list").output
    assert "no pending pairs" in botkit(project, "finetune", "review", "list").output
    rejected = botkit(project, "finetune", "review", "list", "--state", "rejected").output
    assert f"#{vpn}" in rejected and "Is the VPN down?" in rejected
    assert (
        "correction: In the shared drive."
        in botkit(project, "finetune", "review", "list", "--state", "corrected").output
    )
    unknown = botkit(project, "finetune", "review", "approve", "999999")
    assert unknown.exit_code == 1 and "no bot reply with id 999999" in unknown.output

    out = tmp_path / "reviewed"
    result = botkit(
        project,
        "export",
        "--out",
        str(out),
        "--format",
        "alpaca-jsonl",
        "--feedback-policy",
        "approved",
        "--validation-fraction",
        "0",
    )
    assert result.exit_code == 0, result.output
    assert "review            -1" in result.output
    records = read_records(out / "alpaca-jsonl" / "train.jsonl")
    assert [(r["instruction"], r["output"]) for r in records] == [
        ("Where is the handbook?", "In the shared drive."),
        ("Who is on call?", "Ann is."),
    ]


def test_the_review_queue_lists_only_what_its_filters_keep(make_bot, project):
    async def chat(bot) -> None:
        await talk(bot, "Is the VPN down?", "Yes, since noon.", channel="a")
        await give_feedback(bot, "Is the VPN down?", "reaction", value="👍")
        await talk(bot, "Who is on call?", "Ann is.", channel="b")
        await give_feedback(bot, "Who is on call?", "reaction", value="👎")
        await talk(bot, "Where is the handbook?", "On the wiki.", channel="c")
        reply = await reply_to(bot, "Where is the handbook?")
        async with bot.db.session() as session:
            session.add(
                ModerationEventRecord(message_id=reply.id, direction="out", category="profanity", action="flag")
            )

    seed(make_bot, project, chat)

    def listed(*flags: str) -> list[str]:
        result = botkit(project, "finetune", "review", "list", *flags)
        assert result.exit_code == 0, result.output
        return [line.split("user: ")[1] for line in result.output.splitlines() if "user: " in line]

    assert listed("--votes", "up") == ["Is the VPN down?"]
    assert listed("--votes", "down") == ["Who is on call?"]
    assert listed("--votes", "none") == ["Where is the handbook?"]
    assert listed("--moderation", "with") == ["Where is the handbook?"]
    assert listed("--moderation", "without", "--votes", "down") == ["Who is on call?"]
    assert listed("--truncated", "with") == []
    assert len(listed("--truncated", "without")) == 3
    output = botkit(project, "finetune", "review", "list").output
    assert "moderation: out: flag profanity" in output and "  +1 -0" in output and "  +0 -1" in output
