"""``botkit finetune deploy``: put a GGUF LoRA adapter into a llama.cpp backend of the config, checked
against that backend's base model, and have the running bot switch to it without a restart.

Steps: find the backend's table; check the adapter against the model file (read, not
loaded), its licence against ``[finetune] allowed_licenses`` and the red-team results beside
it against ``[finetune.gate]`` (``finetune/gate.py``); write ``lora_path``
(and ``lora_scale``) into the config, keeping its comments; ask the running bot over
its control socket (botkit/control.py), or in-process (the web console inside the bot), to
reload; confirm with its status that the adapter is active. When the bot refuses, the
config file gets its previous text back. A change the file keeps is recorded
(``finetune/rollback.py``), for ``botkit finetune rollback``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botkit import NO_LORA, ConfigError, ControlError, ModelLoadError, NoRunningBot
from botkit.ops import (
    Ask,
    BackendSlot,
    Bot,
    ConfigEdit,
    LlamaCppSettings,
    LoraError,
    ModelInfo,
    Settings,
    check_adapter,
    check_backend_table,
    config_table,
    control_socket_path,
    edit_table,
    embedded_model_path,
    env_name,
    load_bot,
    load_settings,
    read_gguf_header,
    request_sync,
    table_path,
    toml_value,
)

from .gate import check_gate
from .licence import LicenceRefused, from_adapter_metadata, licence_problem
from .rollback import DeployRecord, RollbackTarget, append_record, config_key, now, rollback_target
from .scores import recorded_warnings
from .settings import FinetuneSettings
from .train import ADAPTER_FOLDER, CONVERTED_FILE, RUN_FILE

Echo = Callable[[str], None]

# What to do instead, for the backends that do not take GGUF adapters.
OTHER_BACKENDS = {
    "transformers": (
        "it takes peft adapter folders, not GGUF files: set its lora_path to the peft folder and "
        "/reload the bot (an admin command)"
    ),
    "openai": (
        "the model runs on its server: load the adapter there (vLLM: --enable-lora --lora-modules "
        "NAME=PATH) and name it in the table's model"
    ),
}


@dataclass(frozen=True)
class Deployment:
    """What to deploy where: ``adapter`` is an absolute adapter path, or ``None`` for the base model."""

    backend: str
    adapter: Path | None
    scale: float | None = None
    reload: bool = True
    timeout: float = 300.0
    accept_license: bool = False  # deploy an adapter whose licence [finetune] allowed_licenses does not list
    force: bool = False  # deploy an adapter whose red-team results miss [finetune.gate]
    rollback: bool = False  # it takes back the newest recorded deploy (finetune/rollback.py)

    @property
    def values(self) -> dict[str, Any]:
        """The config keys to write (``None`` removes ``lora_path``)."""
        values: dict[str, Any] = {"lora_path": str(self.adapter) if self.adapter else None}
        if self.scale is not None:
            values["lora_scale"] = self.scale
        return values

    @property
    def expected_adapter(self) -> str | None:
        """The running backend's active adapter once it took the deployment (its ``lora_path`` as text)."""
        return str(self.adapter) if self.adapter else None

    def describe(self) -> str:
        return f"adapter {self.adapter}" if self.adapter else "the base model, without adapter"


def adapter_argument(value: str) -> Path | None:
    """``none`` for the base model, else the adapter file's absolute path (relative to the current folder).

    A run folder of ``botkit finetune train`` stands for the adapter ``convert`` wrote into it.
    Symlinks are kept, so that a link such as ``adapters/current.gguf`` can be repointed later.
    """
    if value == NO_LORA:
        return None
    path = Path(os.path.abspath(Path(value).expanduser()))
    if (path / RUN_FILE).is_file():
        if not (path / CONVERTED_FILE).is_file():
            raise LoraError(
                f"{path} is a training run without {CONVERTED_FILE}: run `botkit finetune convert {value}` first"
            )
        return path / CONVERTED_FILE
    return path


def check_gguf_file(adapter: Path) -> None:
    """Refuse what is not a GGUF file, saying how ``botkit finetune convert`` makes one (``LoraError``).

    The deeper checks (a LoRA adapter, and for this model) are ``check_adapter``'s.
    """
    if adapter.is_dir() or not adapter.is_file():
        problem = "is a folder" if adapter.is_dir() else "does not exist"
    else:
        try:
            with adapter.open("rb") as file:
                if file.read(4) == b"GGUF":
                    return
        except OSError:
            return  # check_adapter says why it cannot be read
        problem = "is not a GGUF LoRA adapter (not a GGUF file)"
    if problem == "does not exist":
        return  # check_adapter names the path and what to give
    run = next((folder for folder in (adapter, *adapter.parents[:2]) if (folder / RUN_FILE).is_file()), None)
    if run is not None:
        how = f"make one from the training run with `botkit finetune convert {run}`"
    elif adapter.is_dir():
        how = f"make one from this peft adapter folder with `botkit finetune convert {adapter}`"
    else:
        how = (
            "make one with `botkit finetune convert RUN` (RUN: the folder `botkit finetune train --out` "
            f"wrote, or a peft adapter folder such as RUN/{ADAPTER_FOLDER})"
        )
    raise LoraError(f"{adapter} {problem}; deploy takes a GGUF LoRA adapter file: {how}")


def find_backend(bot: Bot, name: str) -> BackendSlot:
    """The llama.cpp backend ``name`` of the config; ``ConfigError`` naming the choices otherwise."""
    settings = bot.settings
    slot = bot.backends.get(name)
    if slot is None:
        raise ConfigError(
            f"{settings.source_name}: no backend {name!r}; configured: {', '.join(bot.backends)} "
            "('default' is [backend], the others [backends.<name>])"
        )
    if slot.type_name != "llamacpp":
        instead = OTHER_BACKENDS.get(slot.type_name, "it takes no LoRA adapters")
        raise ConfigError(
            f"{settings.source_name}: [{slot.table}] is a {slot.type_name} backend, and deploy puts GGUF "
            f"adapters into llamacpp backends; {instead}"
        )
    return slot


def check_against_model(slot: BackendSlot, adapter: Path) -> str:
    """Check ``adapter`` against the backend's model file, read but not loaded; a line saying it fits.

    Raises ``LoraError`` (another base model, with both names; a missing or non-GGUF file)
    or ``ModelLoadError`` (the model file cannot be read).
    """
    settings = slot.settings
    assert isinstance(settings, LlamaCppSettings)
    model_path = settings.model_path.expanduser() if settings.model_path else embedded_model_path()
    try:
        model = ModelInfo.read(model_path)
    except (OSError, ValueError) as error:
        where = f"[{slot.table}] model_path" if settings.model_path else "the embedded model"
        problem = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ModelLoadError(
            f"{where}: cannot read {model_path} to check the adapter against it: {problem} "
            "(a relative model_path is taken from the current folder, as the bot takes it)"
        ) from None
    check_adapter(adapter, f"[{slot.table}] lora_path", model)
    return f"{adapter}: a LoRA adapter for {model.describe()}, the model of [{slot.table}]"


def check_licence(deployment: Deployment, finetune: FinetuneSettings, echo: Echo, warn: Echo) -> None:
    """Show the adapter's licence (its base model's); refuse one ``allowed_licenses`` does not list.

    ``LicenceRefused`` unless ``accept_license``; an adapter that declares no licence is deployed
    with a warning when no list is set.
    """
    adapter = deployment.adapter
    assert adapter is not None
    provenance = from_adapter_metadata(read_gguf_header(adapter).metadata)  # check_adapter read it already
    echo(f"{adapter}: licence {provenance.describe()}")
    problem = licence_problem(provenance, finetune.allowed_licenses)
    if problem and not deployment.accept_license:
        raise LicenceRefused(
            f"{adapter}: not deployed: {problem}; pass --accept-license to deploy it anyway, "
            "or add its licence to allowed_licenses"
        )
    if problem:
        warn(f"warning: {adapter}: deploying with --accept-license: {problem}")
    elif not provenance.known:
        warn(
            f"warning: {adapter} declares no licence (its base model has no general.license): find out under "
            "which terms the base model may be used before the bot answers with it"
        )


def check_deployment(
    settings: Settings, deployment: Deployment, echo: Echo, warn: Echo
) -> tuple[Bot, BackendSlot]:
    """The checks of a deployment, before anything is written: its backend, and the adapter against
    the backend's model, ``[finetune] allowed_licenses`` and ``[finetune.gate]``. The loaded bot
    (no model) and the backend's slot; raises ``BotkitError``."""
    bot = load_bot(settings)
    slot = find_backend(bot, deployment.backend)
    if deployment.adapter is not None:
        check_gguf_file(deployment.adapter)
        echo(check_against_model(slot, deployment.adapter))
        finetune = config_table(settings, "finetune", FinetuneSettings)
        check_licence(deployment, finetune, echo, warn)
        check_gate(deployment.adapter, finetune.gate, deployment.force, echo, warn)
        run = deployment.adapter.parent
        if (run / RUN_FILE).is_file():  # convert wrote it into a training run: what did that measure?
            for line in recorded_warnings(run):
                warn(f"{line} (recorded in {run})")
    return bot, slot


def deploy(settings: Settings, deployment: Deployment, echo: Echo, warn: Echo, running: Ask | None = None) -> None:
    """Deploy as the command does; ``echo`` prints progress. Raises ``BotkitError`` on failure.

    Nothing is written unless the adapter fits; when the running bot refuses the new
    config, or keeps another adapter, the file gets its previous text back. ``running``:
    how to ask the running bot, in place of its control socket (``in_process``, for the web
    console inside ``botkit run`` with the socket off).
    """
    path = config_file(settings)
    bot, slot = check_deployment(settings, deployment, echo, warn)
    socket_path = control_socket_path(settings)  # a bad control_socket fails before anything is written
    table = table_path(slot.name)
    for key in deployment.values:
        variable = env_name((*table, key))
        if variable in os.environ:
            warn(
                f"warning: {variable} is set in this environment; where the bot has it too, it overrides {key} in {path}"
            )

    before = _lora_values(slot)
    edit = edit_table(path, table, deployment.values)
    try:
        check_written_config(bot, path, slot.name)
    except ConfigError:
        edit.restore()
        raise
    echo(describe_edit(edit, slot, deployment))
    try:
        _reload_running_bot(deployment, edit, slot, socket_path, echo, running)
    finally:
        # Recorded while the file holds the deployment (not restored): what a rollback takes back.
        if edit.changed and edit.path.resolve().read_text(encoding="utf-8") == edit.after:
            try:
                append_record(settings, _record(settings, deployment, slot, before))
            except OSError as error:
                warn(f"warning: the deploy is not recorded, so `botkit finetune rollback` cannot undo it: {error}")


def config_file(settings: Settings) -> Path:
    """The config file deploy writes into; ``ConfigError`` saying how to name one when there is none."""
    if settings.source_path is None:
        raise ConfigError(
            "deploy writes lora_path into the config file, and no config file was given: pass --config "
            "PATH (or set BOTKIT_CONFIG, or run where ./config.toml is)"
        )
    return settings.source_path


def plan_rollback(settings: Settings, backend: str, **options: Any) -> tuple[RollbackTarget, Deployment]:
    """What ``botkit finetune rollback`` deploys for ``backend``: the adapter its newest recorded deploy
    replaced (``RollbackError`` when there is none), as a ``Deployment`` of ``options`` for ``deploy``."""
    config_file(settings)
    slot = find_backend(load_bot(settings), backend)
    target = rollback_target(settings, slot.name, _lora_values(slot)[0])
    return target, Deployment(slot.name, target.adapter, target.scale, rollback=True, **options)


def _lora_values(slot: BackendSlot) -> tuple[str | None, float]:
    lora_path = getattr(slot.settings, "lora_path", None)
    return (str(lora_path) if lora_path else None), float(getattr(slot.settings, "lora_scale", 1.0))


def _record(
    settings: Settings, deployment: Deployment, slot: BackendSlot, before: tuple[str | None, float]
) -> DeployRecord:
    return DeployRecord(
        at=now(),
        config=config_key(settings),
        backend=slot.name,
        adapter=deployment.expected_adapter,
        previous=before[0],
        scale=deployment.scale,
        previous_scale=before[1],
        rollback=deployment.rollback,
    )


def _reload_running_bot(
    deployment: Deployment,
    edit: ConfigEdit,
    slot: BackendSlot,
    socket_path: Path | None,
    echo: Echo,
    running: Ask | None,
) -> None:
    """Have the bot running with this config take the written deployment, as ``deploy`` describes."""
    path = edit.path
    takes = "loads the adapter" if deployment.adapter else "answers with the base model"
    follow = f"it {takes} when it starts, or an admin can /reload"
    if not deployment.reload:
        echo(f"not reloading the running bot (--no-reload): {follow}")
        return
    if running is None:
        if socket_path is None:
            echo(f'[bot] control_socket is "off", so the running bot cannot be asked: {follow}')
            return
        running = _over_socket(socket_path, deployment.timeout)
    try:
        answer = running({"command": "reload"})
    except NoRunningBot:
        echo(f"no running bot found at {socket_path}; {follow}")
        return
    except ControlError as error:
        # The bot may still take the request (a reload waits for the generation in progress),
        # so the file keeps the deployed values rather than disagree with the bot later.
        raise ControlError(
            f"{error}; {path} names the deployment, which the bot takes at its next reload or start"
        ) from None
    if not answer["ok"]:
        edit.restore()
        raise ControlError(
            f"the running bot refused the new config, so {path} has its previous text again:\n{answer.get('error')}"
        )
    echo("the running bot reloaded its config:")
    for note in answer.get("notes", []):
        echo(f"  {note}")
    confirm(running, deployment, edit, slot, echo)


def _over_socket(socket_path: Path, timeout: float) -> Ask:
    def ask(request: Any) -> dict[str, Any]:
        return request_sync(socket_path, request, timeout)

    return ask


def check_written_config(bot: Bot, path: Path, backend: str) -> None:
    """The config as written loads, and its backend table validates (as the bot will check it)."""
    check_backend_table(bot, load_settings(path), backend)


def describe_edit(edit: ConfigEdit, slot: BackendSlot, deployment: Deployment) -> str:
    keys = ", ".join(
        f"{key} = {toml_value(value)}" if value is not None else f"no {key}"
        for key, value in deployment.values.items()
    )
    return f"{edit.path}: [{slot.table}] {'now has' if edit.changed else 'already had'} {keys}"


def confirm(running: Ask, deployment: Deployment, edit: ConfigEdit, slot: BackendSlot, echo: Echo) -> None:
    """Ask the bot which adapter the backend now applies; undo the edit when it is not the deployed one."""
    status = running({"command": "status"})
    backend = status.get("backends", {}).get(slot.name) if status["ok"] else None
    if backend is None:
        raise ControlError(
            f"the running bot (pid {status.get('pid')}) has no backend {slot.name!r} (started from another config?)"
        )
    active = backend.get("adapter")
    if active == deployment.expected_adapter:
        answers = f"adapter {active}" if active else "the base model, without adapter"
        echo(f"backend {slot.name} of the running bot (pid {status.get('pid')}) now answers with {answers}")
        return
    if edit.changed:
        edit.restore()
        # The bot read the deployed values; have it read the restored ones, so file and bot agree.
        running({"command": "reload"})
        undone = f"{edit.path} has its previous text again"
    else:
        undone = f"{edit.path} was unchanged (an admin may have switched with /lora: /lora {deployment.adapter or 'none'})"
    raise ControlError(
        f"backend {slot.name} of the running bot still answers with {active or 'no adapter'}, not "
        f"{deployment.describe()} (its notes above say why); {undone}"
    )
