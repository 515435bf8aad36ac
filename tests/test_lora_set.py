"""LoraSet, the LoRA bookkeeping of the in-process backends, with a stand-in engine (no model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from botkit.backend import BackendSettings
from botkit.backends.lora_set import LoraBackend, LoraSet, LoraSettings
from botkit.errors import LoraError
from botkit.types import NO_LORA


class StandInSettings(LoraSettings, BackendSettings):
    type: str = "stand-in"


class StandInBackend(LoraBackend):
    """Loads a "LoRA adapter" by reading its file's text; remembers every load."""

    model_name = "stand-in"
    context_window = 100

    def __init__(self, settings: StandInSettings) -> None:
        super().__init__(settings)
        self.loaded: list[Path] = []
        self._loras = LoraSet(self, "file", self._load_lora)

    async def _load_lora(self, path: Path, where: str) -> str:
        if path.read_text() == "broken":
            raise LoraError(f"{where}: {path} is broken")
        self.loaded.append(path)
        return path.read_text()

    async def count_tokens(self, prompt):
        return 0

    async def count_text(self, text):
        return 0

    def stream(self, prompt, params, cancel):
        raise AssertionError("the LoraSet tests never generate")


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    paths = {}
    for name in ("support", "terse", "broken"):
        paths[name] = tmp_path / f"{name}.gguf"
        paths[name].write_text(name)
    return paths


async def test_configured_adapters_load_once_per_file_and_lora_path_is_active(files):
    backend = StandInBackend(
        StandInSettings(
            loras={"support": files["support"], "same": files["support"].parent / "." / "support.gguf"},
            lora_path=files["terse"],
        )
    )
    await backend._loras.load_configured()
    assert backend.loaded == [files["support"], files["terse"]]
    assert backend.active_lora == str(files["terse"])
    assert backend.loras == {"support": str(files["support"]), "same": str(files["support"])}
    loras = backend._loras
    assert loras.handle_for(None) == "terse"  # a request naming none gets the active one
    assert loras.handle_for("same") == loras.handle_for("support") == "support"
    assert loras.handle_for(NO_LORA) is None


async def test_switching_by_name_by_path_and_to_none(files):
    backend = StandInBackend(StandInSettings(loras={"support": files["support"]}))
    await backend._loras.load_configured()
    assert await backend.switch_lora("support") == "backend now answers with LoRA adapter support"
    path = str(files["terse"])
    assert await backend.switch_lora(path) == f"backend now answers with LoRA adapter {path}"
    assert backend._loras.handle_for(None) == "terse" and backend.active_lora == path
    await backend.switch_lora(str(files["support"]))  # a file already loaded under a name
    assert backend.loaded == [files["support"], files["terse"]]
    note = await backend.switch_lora(NO_LORA)
    assert note == "backend now answers with the base model, without LoRA adapter"
    assert backend.active_lora is None and backend._loras.handle_for(None) is None


async def test_what_cannot_be_switched_to_leaves_the_active_adapter(files, tmp_path):
    backend = StandInBackend(StandInSettings(loras={"support": files["support"]}))
    await backend._loras.load_configured()
    await backend.switch_lora("support")
    with pytest.raises(LoraError) as unknown:
        await backend.switch_lora("chatty")
    assert str(unknown.value) == (
        "no LoRA adapter 'chatty': not a name in [backend] loras (it has: support), nor a LoRA adapter file"
    )
    with pytest.raises(LoraError, match=r"LoRA adapter .*broken\.gguf: .* is broken"):
        await backend.switch_lora(str(files["broken"]))
    assert backend.active_lora == "support"
    with pytest.raises(LoraError, match=r"no LoRA adapter 'chatty' in \[backend\] loras \(it has: support\)"):
        backend._loras.handle_for("chatty")

