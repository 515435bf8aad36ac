"""`botkit finetune deploy`: a GGUF LoRA adapter checked, written into config.toml, and taken by the running bot."""

from __future__ import annotations

import asyncio
import json
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from botkit.backends.llamacpp import embedded_model_path
from botkit.backends.llamacpp_lora import read_gguf_header
from botkit.bot import Bot
from botkit.cli import create_cli
from botkit.config_edit import edit_table
from botkit.control import ControlServer, request_sync
from botkit.finetune.gguf_adapter import base_model_identity, write_lora_gguf
from botkit.finetune.licence import Provenance, from_gguf_metadata
from botkit.settings import load_settings

SMOL_NAME = "Smollm2 135M 8k Lc100K Mix1 Ep2"  # general.name in the embedded GGUF
SMOL = f"'{SMOL_NAME}' (SmolLM2-135M-Instruct.Q4_1.gguf)"
NO_BOT = "it loads the adapter when it starts, or an admin can /reload"

CONFIG = """\
# The support bot.
[bot]
control_socket = "ctl.sock"   # beside this file

[backend]
type = "llamacpp"   # the embedded SmolLM2
temperature = 0
max_tokens = 12
n_ctx = 512
# lora_path: written by `botkit finetune deploy`

# Storage comes next.
[storage]
data_dir = "data"

[plugins.memory]
enabled = false   # every question is asked afresh
"""
# Backends that take no GGUF adapter (they are never started here).
OTHER_BACKENDS = """
[backends.remote]
type = "openai"
model = "served"

[backends.hf]
type = "transformers"

[backends.canned]
type = "scripted"
"""


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> Path:
    """``good.gguf`` for SmolLM2 (large random B: it changes greedy answers), ``other.gguf`` for another base.

    ``good.gguf`` carries SmolLM2's licence (apache-2.0) as ``convert`` writes it; ``unlicensed.gguf``
    is the same adapter made from a base model that declares no licence.
    """
    folder = tmp_path_factory.mktemp("adapters")
    architecture, name = base_model_identity(embedded_model_path())
    rng = np.random.default_rng(7)
    pairs = {}
    for tensor, shape in read_gguf_header(embedded_model_path()).tensors.items():
        if tensor.startswith("blk.") and tensor.split(".")[2] in ("attn_k", "attn_v"):
            n_in, n_out = shape
            a = rng.normal(0, 0.2, (4, n_in)).astype(np.float32)
            b = rng.normal(0, 0.2, (n_out, 4)).astype(np.float32)
            pairs[tensor] = (a, b)
    smol = from_gguf_metadata(read_gguf_header(embedded_model_path()).metadata)
    for file, provenance in (("good.gguf", smol), ("unlicensed.gguf", Provenance())):
        write_lora_gguf(
            folder / file,
            architecture=architecture,
            alpha=4,
            tensors=pairs,
            base_model=name,
            provenance=provenance,
        )
    write_lora_gguf(
        folder / "other.gguf", architecture=architecture, alpha=4, tensors=pairs, base_model="Another Model"
    )
    (folder / "notes.gguf").write_text("not an adapter\n", encoding="utf-8")
    return folder


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def deploy(config: Path | None, *args: str) -> Result:
    options = ["--config", str(config)] if config else []
    return CliRunner().invoke(create_cli(), [*options, "finetune", "deploy", *args])


def with_lora(text: str, *lines: str) -> str:
    """CONFIG with ``lines`` where deploy writes them: after the last key of [backend]."""
    return text.replace("n_ctx = 512\n", "n_ctx = 512\n" + "".join(f"{line}\n" for line in lines))


# -- the config file ------------------------------------------------------------------


def test_deploy_writes_lora_path_keeping_every_comment(config, adapters):
    adapter = adapters / "good.gguf"
    result = deploy(config, str(adapter), "--scale", "0.5")
    assert result.exit_code == 0, result.output
    assert config.read_text(encoding="utf-8") == with_lora(
        CONFIG, f'lora_path = "{adapter}"', "lora_scale = 0.5"
    )
    assert result.stdout.splitlines() == [
        f"{adapter}: a LoRA adapter for {SMOL}, the model of [backend]",
        f"{adapter}: licence apache-2.0",
        f'{config}: [backend] now has lora_path = "{adapter}", lora_scale = 0.5',
        f"no running bot found at {config.parent / 'ctl.sock'}; {NO_BOT}",
    ]
    assert load_settings(config).backend["lora_path"] == str(adapter)


def test_an_adapter_outside_allowed_licenses_is_refused_unless_accepted(config, adapters):
    config.write_text(CONFIG + '\n[finetune]\nallowed_licenses = ["mit", "bsd-3-clause"]\n', encoding="utf-8")
    before = config.read_bytes()
    adapter = adapters / "good.gguf"
    refused = deploy(config, str(adapter), "--no-reload")
    assert refused.exit_code == 1
    assert (
        f"{adapter}: not deployed: it is licensed apache-2.0, which [finetune] allowed_licenses "
        "(mit, bsd-3-clause) does not list; pass --accept-license" in refused.output
    )
    assert config.read_bytes() == before

    accepted = deploy(config, str(adapter), "--no-reload", "--accept-license")
    assert accepted.exit_code == 0, accepted.output
    assert f"{adapter}: licence apache-2.0" in accepted.stdout
    assert "deploying with --accept-license: it is licensed apache-2.0" in accepted.stderr
    assert f'lora_path = "{adapter}"' in config.read_text(encoding="utf-8")


def test_an_adapter_whose_licence_is_listed_deploys_without_a_warning(config, adapters):
    config.write_text(CONFIG + '\n[finetune]\nallowed_licenses = ["Apache-2.0"]\n', encoding="utf-8")
    result = deploy(config, str(adapters / "good.gguf"), "--no-reload")
    assert result.exit_code == 0, result.output
    assert "licence apache-2.0" in result.stdout and "warning" not in result.stderr


def test_an_adapter_without_a_licence_deploys_with_a_warning_or_is_refused_by_a_list(config, adapters):
    adapter = adapters / "unlicensed.gguf"
    result = deploy(config, str(adapter), "--no-reload")
    assert result.exit_code == 0, result.output
    assert f"{adapter}: licence unknown" in result.stdout
    assert f"warning: {adapter} declares no licence" in result.stderr

    config.write_text(CONFIG + '\n[finetune]\nallowed_licenses = ["apache-2.0"]\n', encoding="utf-8")
    refused = deploy(config, str(adapter), "--no-reload")
    assert refused.exit_code == 1
    assert (
        "it declares no licence (unknown), which [finetune] allowed_licenses (apache-2.0)" in refused.output
    )


def test_a_relative_adapter_path_is_taken_from_the_current_folder(config, adapters, monkeypatch):
    monkeypatch.chdir(adapters)
    result = deploy(config, "good.gguf", "--backend", "default", "--no-reload")
    assert result.exit_code == 0, result.output
    assert f'lora_path = "{adapters / "good.gguf"}"' in config.read_text(encoding="utf-8")
    assert result.stdout.splitlines()[-1] == f"not reloading the running bot (--no-reload): {NO_BOT}"


def test_a_training_run_folder_stands_for_its_converted_adapter(config, adapters, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "training.json").write_text("{}", encoding="utf-8")
    before = config.read_bytes()
    unconverted = deploy(config, str(run), "--no-reload")
    assert unconverted.exit_code == 1
    assert f"{run} is a training run without adapter.gguf: run `botkit finetune convert {run}` first" in (
        unconverted.stderr
    )
    assert config.read_bytes() == before
    (run / "adapter.gguf").write_bytes((adapters / "good.gguf").read_bytes())
    result = deploy(config, str(run), "--no-reload")
    assert result.exit_code == 0, result.output
    assert f'lora_path = "{run / "adapter.gguf"}"' in config.read_text(encoding="utf-8")


def test_an_adapter_for_another_base_model_is_refused_naming_both(config, adapters):
    before = config.read_bytes()
    result = deploy(config, str(adapters / "other.gguf"))
    assert result.exit_code == 1
    assert result.stderr == (
        f"botkit: error: [backend] lora_path: {adapters / 'other.gguf'} was made for base model "
        f"'Another Model', not for the loaded model {SMOL}\n"
    )
    assert config.read_bytes() == before


@pytest.mark.parametrize(
    "name, problem",
    [
        ("missing.gguf", "does not exist; give the path of a GGUF LoRA adapter file"),
        ("notes.gguf", "is not a GGUF LoRA adapter (not a GGUF file)"),
        ("model", "is a GGUF model file, not a LoRA adapter"),
    ],
)
def test_what_is_not_an_adapter_is_refused(config, adapters, name, problem):
    before = config.read_bytes()
    path = embedded_model_path() if name == "model" else adapters / name
    result = deploy(config, str(path))
    assert result.exit_code == 1 and problem in result.stderr and str(path) in result.stderr
    assert config.read_bytes() == before


def test_a_file_that_is_not_gguf_gets_the_convert_command_not_a_python_function(config, adapters):
    result = deploy(config, str(adapters / "notes.gguf"))
    assert result.exit_code == 1
    assert "botkit finetune convert RUN" in result.stderr
    assert "convert_peft_adapter" not in result.stderr


def test_the_peft_folder_of_a_run_gets_the_convert_command_for_that_run(config, tmp_path):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "training.json").write_text("{}", encoding="utf-8")
    (run / "adapter/adapter_model.safetensors").write_bytes(b"\0" * 16)
    for given in (run / "adapter", run / "adapter/adapter_model.safetensors"):
        result = deploy(config, str(given))
        assert result.exit_code == 1
        assert f"`botkit finetune convert {run}`" in result.stderr, result.stderr


def test_a_run_that_scored_worse_than_its_base_is_deployed_with_a_warning(config, adapters, tmp_path):
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(adapters / "good.gguf", run / "adapter.gguf")
    record = {"validation_before": 0.6442, "validation_after": 0.6452}
    (run / "training.json").write_text(json.dumps(record), encoding="utf-8")
    (run / "evaluation.json").write_text(
        json.dumps(
            {
                "split": "validation",
                "base_loss": 0.6,
                "adapter_loss": 0.6,
                "base_f1": 0.76,
                "adapter_f1": 0.69,
            }
        ),
        encoding="utf-8",
    )
    result = deploy(config, str(run), "--no-reload")
    assert result.exit_code == 0, result.output
    assert (
        "warning: the adapter is worse than the base model: validation loss 0.6442 (base) -> 0.6452 (adapter)"
        in result.stderr
    )
    assert "mean token F1 0.76 (base) -> 0.69 (adapter)" in result.stderr
    assert f'lora_path = "{run / "adapter.gguf"}"' in config.read_text()


def test_none_removes_lora_path_and_leaves_the_rest(config, adapters):
    config.write_text(with_lora(CONFIG, 'lora_path = "/old/adapter.gguf"  # last week\'s'), encoding="utf-8")
    result = deploy(config, "none")
    assert result.exit_code == 0, result.output
    assert config.read_text(encoding="utf-8") == CONFIG
    assert result.stdout.splitlines()[-2:] == [
        f"{config}: [backend] now has no lora_path",
        f"no running bot found at {config.parent / 'ctl.sock'}; "
        "it answers with the base model when it starts, or an admin can /reload",
    ]
    assert deploy(config, "none", "--scale", "2").exit_code == 2  # nothing to scale


def test_an_unknown_backend_lists_the_configured_ones(config, adapters):
    config.write_text(CONFIG + OTHER_BACKENDS, encoding="utf-8")
    result = deploy(config, str(adapters / "good.gguf"), "--backend", "big")
    assert result.exit_code == 2
    assert f"{config}: no backend 'big'; configured: default, remote, hf, canned" in result.stderr


@pytest.mark.parametrize(
    "backend, says",
    [
        ("remote", "[backends.remote] is a openai backend, and deploy puts GGUF adapters into llamacpp "
         "backends; the model runs on its server: load the adapter there"),
        ("hf", "[backends.hf] is a transformers backend, and deploy puts GGUF adapters into llamacpp "
         "backends; it takes peft adapter folders, not GGUF files: set its lora_path to the peft folder"),
        ("canned", "[backends.canned] is a scripted backend, and deploy puts GGUF adapters into llamacpp "
         "backends; it takes no LoRA adapters"),
    ],
)  # fmt: skip
def test_a_backend_that_takes_no_gguf_adapter_says_what_to_do(config, adapters, backend, says):
    config.write_text(CONFIG + OTHER_BACKENDS, encoding="utf-8")
    before = config.read_bytes()
    result = deploy(config, str(adapters / "good.gguf"), "--backend", backend)
    assert result.exit_code == 2 and says in result.stderr
    assert config.read_bytes() == before


def test_a_named_llamacpp_backend_gets_its_own_table(config, adapters):
    config.write_text(CONFIG + '\n[backends.second]\ntype = "llamacpp"\n', encoding="utf-8")
    result = deploy(config, str(adapters / "good.gguf"), "--backend", "second", "--no-reload")
    assert result.exit_code == 0, result.output
    assert config.read_text(encoding="utf-8").endswith(
        f'[backends.second]\ntype = "llamacpp"\nlora_path = "{adapters / "good.gguf"}"\n'
    )


def test_without_a_config_file_deploy_says_how_to_name_one(tmp_path, adapters, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = deploy(None, str(adapters / "good.gguf"))
    assert result.exit_code == 2
    assert "no config file was given: pass --config PATH" in result.stderr


def test_with_the_control_socket_off_the_bot_is_not_asked(config, adapters):
    config.write_text(CONFIG.replace('"ctl.sock"', '"off"'), encoding="utf-8")
    result = deploy(config, str(adapters / "good.gguf"))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == (
        f'[bot] control_socket is "off", so the running bot cannot be asked: {NO_BOT}'
    )


def test_an_edit_can_be_taken_back_byte_for_byte(tmp_path):
    path = tmp_path / "crlf.toml"
    text = '[backend]\r\ntype = "llamacpp"  # engine\r\n\r\n# next\r\n[bot]\r\nname = "a"\r\n'
    path.write_bytes(text.encode())
    path.chmod(0o640)
    edit = edit_table(path, ("backend",), {"lora_path": "/a.gguf", "lora_scale": None})
    assert path.read_bytes() == text.replace("# engine\r\n", '# engine\r\nlora_path = "/a.gguf"\r\n').encode()
    assert path.stat().st_mode & 0o777 == 0o640
    edit.restore()
    assert path.read_bytes() == text.encode()


# -- the running bot -------------------------------------------------------------------


@contextmanager
def bot_in_thread(config: Path) -> Iterator[Bot]:
    """A bot with its control socket on an event loop of its own, while deploy runs in this thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def call(awaitable):
        return asyncio.run_coroutine_threadsafe(awaitable, loop).result(60)

    bot = Bot.load(load_settings(config))
    control = ControlServer(bot)
    try:
        call(control.open())
        call(bot.start())
        call(control.start_serving())
        yield bot
    finally:
        call(control.close())
        call(bot.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def test_when_the_bot_refuses_the_new_config_the_file_is_restored(config, adapters):
    # The bot runs the scripted backend; the file has since been changed to llamacpp, which
    # /reload cannot switch to without a restart.
    scripted = CONFIG.replace('type = "llamacpp"   #', 'type = "scripted"   #').replace("n_ctx = 512\n", "")
    config.write_text(scripted, encoding="utf-8")
    with bot_in_thread(config) as bot:
        config.write_text(CONFIG, encoding="utf-8")
        result = deploy(config, str(adapters / "good.gguf"))
        assert bot.backend_name == "scripted"
    assert result.exit_code == 1
    assert f"the running bot refused the new config, so {config} has its previous text again" in result.stderr
    assert "[backend] type: switching to 'llamacpp' needs a restart" in result.stderr
    assert config.read_text(encoding="utf-8") == CONFIG


class FakeBot(socketserver.ThreadingUnixStreamServer):
    """A control socket with canned answers, recording the commands it was sent; silent on others."""

    daemon_threads, block_on_close = True, False

    def __init__(self, path: Path, answers: dict[str, dict]) -> None:
        self.answers, self.commands = answers, []
        self.stopping = threading.Event()

        class Handler(socketserver.StreamRequestHandler):
            def handle(handler) -> None:
                for line in handler.rfile:
                    command = json.loads(line)["command"]
                    self.commands.append(command)
                    if command not in self.answers:
                        self.stopping.wait(60)  # busy: answers nothing while the test runs
                        return
                    handler.wfile.write(json.dumps(self.answers[command]).encode() + b"\n")

        super().__init__(str(path), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def shutdown(self) -> None:
        self.stopping.set()
        super().shutdown()


def test_a_bot_that_keeps_its_adapter_gets_the_file_restored(config, adapters):
    status = {"default": {"type": "llamacpp", "model": "m", "adapter": None, "adapters": []}}
    fake = FakeBot(
        config.parent / "ctl.sock",
        {
            "reload": {
                "ok": True,
                "notes": ["[backend] lora_path not applied, the adapter in use stays: ..."],
            },
            "status": {"ok": True, "pid": 1, "backends": status},
        },
    )
    try:
        result = deploy(config, str(adapters / "good.gguf"))
    finally:
        fake.shutdown()
        fake.server_close()
    assert result.exit_code == 1
    assert "  [backend] lora_path not applied, the adapter in use stays: ..." in result.stdout
    assert (
        f"backend default of the running bot still answers with no adapter, not adapter "
        f"{adapters / 'good.gguf'} (its notes above say why); {config} has its previous text again"
    ) in result.stderr
    assert fake.commands == ["reload", "status", "reload"]  # the bot re-reads the restored file
    assert config.read_text(encoding="utf-8") == CONFIG


def test_a_bot_that_does_not_answer_in_time_leaves_the_deployment_in_the_file(config, adapters):
    fake = FakeBot(config.parent / "ctl.sock", {})
    try:
        result = deploy(config, str(adapters / "good.gguf"), "--timeout", "0.2")
    finally:
        fake.shutdown()
        fake.server_close()
    assert result.exit_code == 1
    assert (
        f"the bot at {config.parent / 'ctl.sock'} did not answer within 0.2 s; {config} names"
        in result.stderr
    )
    assert config.read_text(encoding="utf-8") == with_lora(CONFIG, f'lora_path = "{adapters / "good.gguf"}"')


@pytest.mark.model
def test_the_running_bot_answers_with_the_deployed_adapter_without_a_restart(config, adapters, tmp_path):
    bot = subprocess.Popen(
        [sys.executable, "-m", "botkit", "--config", str(config), "chat"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    assert bot.stdin is not None and bot.stdout is not None

    def ask(question: str) -> str:
        """The reply, read up to the line the console prints for ':who' (a reply may span lines)."""
        bot.stdin.write(f"{question}\n:who\n")
        bot.stdin.flush()
        lines = []
        while not (line := bot.stdout.readline()).startswith("(now "):
            assert line, "the bot exited"
            lines.append(line)
        return "".join(lines)

    def botkit_deploy(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "botkit", "finetune", "deploy", "--config", str(config), *args]
        return subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=60)

    socket_path = config.parent / "ctl.sock"
    adapter = adapters / "good.gguf"
    try:
        base = ask("What is the capital of France?")
        assert "Paris" in base
        deployed = botkit_deploy(str(adapter))
        assert deployed.returncode == 0, deployed.stderr
        assert f"backend default of the running bot (pid {bot.pid}) now answers with adapter {adapter}" in (
            deployed.stdout
        )
        status = request_sync(socket_path, {"command": "status"})
        assert status["backends"]["default"]["adapter"] == str(adapter)
        assert ask("What is the capital of France?") != base
        assert botkit_deploy("none").returncode == 0
        assert ask("What is the capital of France?") == base
    finally:
        bot.stdin.close()
        assert bot.wait(timeout=60) == 0, bot.stderr.read() if bot.stderr else ""
    assert not socket_path.exists()
    assert config.read_text(encoding="utf-8") == CONFIG
