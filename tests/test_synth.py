"""``botkit finetune synth`` against a scripted OpenAI-compatible server: kept tasks, counts, failures, resume."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_openai_backend
from click.testing import CliRunner
from openai_server import DROP, Failure, StubServer
from servers import free_port

from botkit.cli import create_cli

# ``python -m llama_cpp.server`` on the embedded SmolLM2, started once for this module.
engine = test_openai_backend.engine

TASKS = [
    ("Name three rivers that flow through Germany.", "", "The Rhine, the Elbe and the Danube."),
    ("Rewrite the sentence so that it sounds more polite.", "Send me the report now.", "Could you send me the report, please?"),
    ("Explain why the sky looks blue during the day.", "", "Air scatters blue light more than red light."),
    ("Count the vowels in the given word.", "banana", "3"),
    ("Suggest a title for a blog post about saving energy at home.", "", "Small Switches, Big Savings"),
    ("Translate the greeting into Spanish.", "Good morning, everyone!", "¡Buenos días a todos!"),
]  # fmt: skip


def answer(tasks, first: int = 4) -> tuple[str, ...]:
    """A teacher's answer listing ``tasks`` from number ``first``, as the prompt asks."""
    lines = []
    for number, (instruction, given, output) in enumerate(tasks, first):
        lines += [f"{number}. Instruction: {instruction}", f"{number}. Input: {given or '<noinput>'}"]
        lines += [f"{number}. Output: {output}", "###"]
    return ("\n".join(lines),)


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


def config(tmp_path: Path, base_url: str, timeout: int) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[backend]\ntype = "openai"\nbase_url = "{base_url}"\nmodel = "smollm2"\n'
        f"retries = 0\nconnect_timeout = {timeout}\nread_timeout = {timeout}\n",
        encoding="utf-8",
    )
    return path


def synth(tmp_path: Path, base_url: str, *args: str, timeout: int = 5):
    where = config(tmp_path, base_url, timeout)
    command = ["--config", str(where), "finetune", "synth", "--out", str(tmp_path / "out")]
    return CliRunner().invoke(create_cli(), [*command, "--retry-backoff", "0", "--seed", "1", *args])


def written(tmp_path: Path) -> list[dict]:
    return json.loads((tmp_path / "out" / "train.json").read_text(encoding="utf-8"))


def test_kept_tasks_are_written_as_alpaca_json_with_a_card(tmp_path, stub):
    malformed = "7. Instruction: Summarize the text.\n7. Input: <noinput>\n###\n"  # no output
    unsuitable = ("Draw a picture of a cat.", "", "I cannot.")
    stub.script.append((answer([*TASKS[:3], unsuitable])[0] + "\n" + malformed,))
    stub.script.append(answer([TASKS[0], *TASKS[3:]]))  # the first again: a duplicate
    result = synth(
        tmp_path, stub.base_url, "--num-instructions", "5", "--concurrency", "1", "--teacher-terms", "ours"
    )
    assert result.exit_code == 0, result.output
    records = written(tmp_path)
    assert [r["instruction"] for r in records] == [t[0] for t in TASKS[:5]]
    assert records[1]["input"] == "Send me the report now." and records[0]["input"] == ""
    assert all(set(r) == {"instruction", "input", "output"} for r in records)
    assert "requests: 2" in result.output
    assert "malformed items skipped: 1" in result.output
    consistent(json.loads((tmp_path / "out" / "progress.json").read_text()))
    assert "unsuitable 1" in result.output and "exact duplicate 1" in result.output
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "default (openai, model smollm2)" in card and "terms of use: ours" in card
    assert "| rejected: unsuitable | 1 |" in card and "| kept | 5 (written: 5) |" in card
    assert "List of {count} tasks:" in card  # the prompt template
    # The teacher saw the seed tasks: the built-in set's instructions are in the first prompt.
    first_prompt = stub.requests[0].body["messages"][-1]["content"]
    assert "1. Instruction:" in first_prompt and "Continue the list with tasks 4 to 10" in first_prompt


def test_a_teacher_that_answers_garbage_stops_after_max_failures(tmp_path, stub):
    stub.always = ("Sure! Here are some ideas: cats, dogs and more cats.",)
    result = synth(tmp_path, stub.base_url, "--max-failures", "3", "--concurrency", "1")
    assert result.exit_code == 1
    assert "3 requests in a row failed (--max-failures 3)" in result.output
    assert "held no task in the asked format" in result.output and "--resume" in result.output
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())
    assert progress["failed"] == {"no task in the answer": 3} and progress["requests"] == 3
    assert not (tmp_path / "out" / "train.json").exists()


def test_a_refusing_teacher_is_counted_as_refused(tmp_path, stub):
    stub.always = ("I'm sorry, but I can't help with generating tasks.",)
    result = synth(tmp_path, stub.base_url, "--max-failures", "2", "--concurrency", "1")
    assert result.exit_code == 1 and "the teacher refused the request" in result.output
    assert json.loads((tmp_path / "out" / "progress.json").read_text())["failed"] == {"refused": 2}


def test_a_failing_server_is_retried_and_then_the_run_goes_on(tmp_path, stub):
    stub.script.extend([Failure(503), DROP, answer(TASKS[:2])])
    result = synth(
        tmp_path, stub.base_url, "--num-instructions", "2", "--concurrency", "1", "--max-failures", "3"
    )
    assert result.exit_code == 0, result.output
    assert "failed: unreachable or failing 2" in result.output
    assert len(written(tmp_path)) == 2


def test_an_unreachable_teacher_is_named_at_start(tmp_path):
    result = synth(tmp_path, f"http://127.0.0.1:{free_port()}/v1")
    assert (
        result.exit_code == 1
        and "is not reachable" in result.output
        and "[backend] base_url" in result.output
    )


def test_an_interrupted_run_resumes_with_its_kept_tasks(tmp_path, stub):
    stub.script.append(answer(TASKS[:2]))
    stub.always = None
    stub.script.append(("nothing useful",))
    first = synth(
        tmp_path, stub.base_url, "--num-instructions", "4", "--concurrency", "1", "--max-failures", "1"
    )
    assert first.exit_code == 1
    generated = tmp_path / "out" / "generated.jsonl"
    with generated.open("a", encoding="utf-8") as file:
        file.write('{"instruction": "cut sho')  # the last line of a killed run
    refused = synth(tmp_path, stub.base_url, "--num-instructions", "4")
    assert refused.exit_code == 1 and "pass --resume" in refused.output
    stub.script.append(answer([TASKS[1], *TASKS[2:4]]))  # one already kept: an exact duplicate
    resumed = synth(tmp_path, stub.base_url, "--num-instructions", "4", "--concurrency", "1", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert [r["instruction"] for r in written(tmp_path)] == [t[0] for t in TASKS[:4]]
    assert "requests: 3" in resumed.output and "exact duplicate 1" in resumed.output


def test_concurrent_requests_stop_at_num_instructions(tmp_path, stub):
    stub.always = answer(TASKS)
    result = synth(tmp_path, stub.base_url, "--num-instructions", "3", "--concurrency", "3")
    assert result.exit_code == 0, result.output
    assert len(written(tmp_path)) == 3
    consistent(json.loads((tmp_path / "out" / "progress.json").read_text()))


def test_alpaca_seed_tasks_are_read_and_a_bad_line_is_named(tmp_path, stub):
    alpaca = {
        "id": "seed_task_0",
        "name": "breakfast_suggestion",
        "instruction": "Is there anything I can eat for a breakfast that doesn't include eggs?",
        "instances": [{"input": "", "output": "Yes, oatmeal."}],
        "is_classification": False,
    }
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps(alpaca) + "\n", encoding="utf-8")
    stub.always = answer(TASKS[:1])
    result = synth(
        tmp_path, stub.base_url, "--seeds", str(seeds), "--num-instructions", "1", "--concurrency", "1"
    )
    assert result.exit_code == 0, result.output
    assert alpaca["instruction"] in stub.requests[0].body["messages"][-1]["content"]
    seeds.write_text(json.dumps(alpaca) + "\n" + '{"instruction": "x", "output": 3}\n', encoding="utf-8")
    result = synth(tmp_path, stub.base_url, "--seeds", str(seeds), "--overwrite")
    assert result.exit_code == 1 and f"{seeds} line 2: 'output' must be a string" in result.output
    seeds.write_text("{not json\n", encoding="utf-8")
    result = synth(tmp_path, stub.base_url, "--seeds", str(seeds), "--overwrite")
    assert result.exit_code == 1 and f"{seeds} line 1: not JSON" in result.output


def test_an_unknown_teacher_is_refused_naming_the_configured_ones(tmp_path, stub):
    result = synth(tmp_path, stub.base_url, "--teacher", "big")
    assert result.exit_code == 2 and "no backend 'big'; configured: default" in result.output
    result = synth(tmp_path, stub.base_url, "--license", "no: yaml")
    assert result.exit_code == 2 and "--license" in result.output
    assert not stub.requests


def consistent(progress: dict) -> None:
    """Every task parsed was kept or rejected by one filter; every request succeeded or failed once."""
    assert progress["parsed"] == progress["kept"] + sum(progress["rejected"].values())
    assert sum(progress["failed"].values()) <= progress["requests"]


@pytest.mark.model
def test_a_real_server_on_the_embedded_model_as_teacher(tmp_path, engine):
    # SmolLM2-135M seldom writes a task in the asked format: whatever it writes, the run
    # ends with a kept task or with --max-failures' message, the counts add up, every
    # request reached the server, and what is written is complete Alpaca records.
    result = synth(
        tmp_path, engine.base_url, "--num-instructions", "1", "--batch-size", "5", "--max-tokens", "200",
        "--concurrency", "1", "--max-failures", "6", timeout=300,
    )  # fmt: skip
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())
    consistent(progress)
    assert progress["requests"] > 0 and progress["completion_tokens"] > 0 and progress["prompt_tokens"] > 0
    if result.exit_code == 1:  # six answers in a row held no task
        assert "6 requests in a row failed (--max-failures 6)" in result.output, result.output
        assert "run again with --resume" in result.output and progress["kept"] == 0
        assert not (tmp_path / "out" / "train.json").exists()  # written when a run ends, with its card
        records = [
            json.loads(line) for line in (tmp_path / "out" / "generated.jsonl").read_text().splitlines()
        ]
    else:
        assert result.exit_code == 0 and progress["kept"] == 1, result.output
        records = written(tmp_path)
    assert len(records) == progress["kept"]
    for record in records:
        assert set(record) == {"instruction", "input", "output"}
        assert record["instruction"].strip() and record["output"].strip()
    assert engine.log.read_text(errors="replace").count("POST /v1/chat/completions") == progress["requests"]


def test_a_run_killed_before_its_first_answer_can_be_resumed(tmp_path):
    from botkit.finetune.synth import SynthOptions, SynthRun, prepare_folder
    from botkit.finetune.synth_prompt import read_seeds

    seeds, source = read_seeds(None)
    options = SynthOptions(out=tmp_path / "out")
    started = SynthRun(options, seeds, source, teacher=None)  # type: ignore[arg-type]
    started._file.close()  # killed right after it started
    kept, counts = prepare_folder(SynthOptions(out=tmp_path / "out", resume=True))
    assert kept == [] and counts.requests == 0
