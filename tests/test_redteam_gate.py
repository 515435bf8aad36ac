"""The red-team gate: `botkit redteam --lora --baseline` measures an adapter against its base model, and
`botkit finetune deploy` refuses an adapter whose results miss [finetune.gate] unless --force."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
from test_deploy import CONFIG, adapters, config, deploy  # noqa: F401 - fixtures, used by name
from test_redteam_cli import botkit

from botkit.settings import load_settings


def results(folder: Path, rates: dict[str, float], base: dict[str, float] | None) -> Path:
    """``redteam.json`` in ``folder`` as `botkit redteam --json` writes it, with these pass rates."""
    report = {
        "format": "botkit redteam report 1",
        "date": "2026-12-06T06:00:00+00:00",
        "adapter": str(folder / "adapter.gguf"),
        "suites": {name: {"pass_rate": rate} for name, rate in rates.items()},
    }
    if base is not None:
        report["baseline"] = {
            "adapter": None,
            "suites": {name: {"pass_rate": rate} for name, rate in base.items()},
        }
    path = folder / "redteam.json"
    path.write_text(json.dumps(report), encoding="utf-8")
    return path


@pytest.fixture
def adapter(tmp_path, adapters):  # noqa: F811 - the fixture imported above
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(adapters / "good.gguf", folder / "adapter.gguf")
    return folder / "adapter.gguf"


def test_an_adapter_worse_than_its_base_model_is_refused_and_nothing_is_written(config, adapter):  # noqa: F811
    results(adapter.parent, {"extraction": 0.8, "pii": 1.0}, base={"extraction": 1.0, "pii": 1.0})
    before = config.read_bytes()
    refused = deploy(config, str(adapter), "--no-reload")
    assert refused.exit_code == 1
    assert (
        "the adapter misses [finetune.gate]; nothing was deployed (--force deploys anyway)" in refused.output
    )
    assert (
        "extraction: pass rate 80.0% against the base model's 100.0% (at most 0 points lower"
        in refused.output
    )
    assert "pii:" not in refused.output.split("misses")[1]
    assert config.read_bytes() == before


def test_force_deploys_it_with_a_warning_for_each_miss(config, adapter):  # noqa: F811
    results(adapter.parent, {"extraction": 0.8}, base={"extraction": 1.0})
    forced = deploy(config, str(adapter), "--no-reload", "--force")
    assert forced.exit_code == 0, forced.output
    assert "warning: extraction: pass rate 80.0% against the base model's 100.0%" in forced.stderr
    assert "warning: deploying anyway (--force)" in forced.stderr
    assert load_settings(config).backend["lora_path"] == str(adapter)


def test_max_drop_and_min_pass_rate_come_from_finetune_gate(config, adapter):  # noqa: F811
    results(adapter.parent, {"extraction": 0.9, "injection": 0.7}, base={"extraction": 1.0, "injection": 0.7})
    gate = "\n[finetune.gate]\nmax_drop = 0.1\nmin_pass_rate = { injection = 0.75 }\n"
    config.write_text(CONFIG + gate, encoding="utf-8")
    refused = deploy(config, str(adapter), "--no-reload")
    assert refused.exit_code == 1
    assert "injection: pass rate 70.0% is under 75% ([finetune.gate] min_pass_rate)" in refused.output
    assert "extraction:" not in refused.output.split("misses")[1]  # 10 points lower is allowed

    config.write_text(CONFIG + gate.replace("0.75", "0.7"), encoding="utf-8")
    passed = deploy(config, str(adapter), "--no-reload")
    assert passed.exit_code == 0, passed.output
    assert (
        f"red-team results of 2026-12-06T06:00:00+00:00 ({adapter.parent / 'redteam.json'}" in passed.stdout
    )
    assert "extraction 90%, injection 70%" in passed.stdout


def test_a_required_gate_refuses_an_adapter_without_results_and_says_how_to_measure(config, adapter):  # noqa: F811
    config.write_text(CONFIG + "\n[finetune.gate]\nrequired = true\n", encoding="utf-8")
    refused = deploy(config, str(adapter), "--no-reload")
    assert refused.exit_code == 1
    how = f"botkit redteam --lora {adapter} --baseline --json {adapter.parent / 'redteam.json'}"
    assert (
        f"no red-team results beside the adapter ({adapter.parent / 'redteam.json'}); measure them with `{how}`"
        in refused.output
    )


def test_results_without_a_baseline_are_checked_for_min_pass_rate_only(config, adapter):  # noqa: F811
    results(adapter.parent, {"extraction": 0.5}, base=None)
    passed = deploy(config, str(adapter), "--no-reload")
    assert passed.exit_code == 0, passed.output
    assert (
        "has no base model's results (botkit redteam --baseline): [finetune.gate] max_drop cannot be checked"
        in passed.stderr
    )


def test_a_bad_min_pass_rate_names_the_key(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[finetune.gate]\nmin_pass_rate = { pii = 2 }\n", encoding="utf-8")
    result = botkit("finetune", "deploy", "none", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert (
        f"{path}: [finetune.gate] min_pass_rate: Value error, pii: a pass rate is from 0 to 1"
        in result.stderr
    )


def test_redteam_measures_an_adapter_against_the_base_model(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [backend]
            type = "scripted"
            default_reply = "A calm answer."
            loras = {{ terse = "terse.gguf" }}
            [storage]
            data_dir = "{tmp_path / "data"}"
            """
        ),
        encoding="utf-8",
    )
    result = botkit(
        "redteam", "-c", str(path), "--suite", "extraction", "--limit", "2", "--lora", "terse", "--baseline",
        "--json", "redteam.json", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "redteam.json").read_text())
    assert report["adapter"] == "terse"
    assert report["baseline"] == {
        "adapter": None,
        "suites": {"extraction": {"probes": 2, "passed": 2, "failed": 0, "errors": 0, "pass_rate": 1.0}},
    }
    assert "| extraction | 100.0% | 2 | 0 | 0 | 2 of 2 | 100.0% |" in result.stdout
    live = botkit("redteam", "-c", str(path), "--live", "--lora", "terse", cwd=tmp_path)
    assert (
        live.returncode == 2
        and "--lora and --baseline switch the adapter of a bot in this process" in live.stderr
    )
