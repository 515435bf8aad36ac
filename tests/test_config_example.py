"""config.example.toml loads, holds only defaults, and documents every setting that ships."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr

from botkit.adapter import AdapterSettings
from botkit.adapters.console import ConsoleSettings
from botkit.backend import BackendSettings
from botkit.backends.llamacpp import LlamaCppSettings
from botkit.backends.openai_http import OpenAISettings
from botkit.backends.scripted import ScriptedSettings
from botkit.bot import Bot
from botkit.finetune.settings import FinetuneSettings
from botkit.ops import config_table
from botkit.overrides import PlaceOverride
from botkit.plugin_host import PluginHost
from botkit.plugins.access import AccessSettings
from botkit.plugins.disclosure import DisclosureSettings
from botkit.plugins.feedback import FeedbackSettings
from botkit.plugins.memory import MemorySettings
from botkit.plugins.mentions import MentionSettings
from botkit.plugins.moderation.settings import ModerationSettings
from botkit.plugins.privacy import PrivacySettings
from botkit.plugins.ratelimit import RateLimitSettings
from botkit.settings import (
    BotSettings,
    ClusterSettings,
    LoggingSettings,
    PluginsSettings,
    Settings,
    env_name,
    load_settings,
    settings_from_mapping,
)
from botkit.storage import StorageSettings
from botkit.web.settings import WebSettings

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"

# A table header, active or commented out: "[backend]", "# [backend]".
HEADER = re.compile(r'^\s*#?\s*\[([A-Za-z0-9_.":/-]+)\]\s*$')
# A key, active or commented out: "name = ...", "# seed = 42". Prose comments never start so.
KEY = re.compile(r"^\s*#?\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")

# Every settings model that ships, and the table that configures it.
DOCUMENTED: list[tuple[type[BaseModel], str]] = [
    (OpenAISettings, "backend"),
    (BotSettings, "bot"),
    (LoggingSettings, "logging"),
    (ClusterSettings, "cluster"),
    (PluginsSettings, "plugins"),
    (StorageSettings, "storage"),
    (MemorySettings, "plugins.memory"),
    (BackendSettings, "backend"),
    (LlamaCppSettings, "backend"),
    (ScriptedSettings, "backend"),
    (AdapterSettings, "adapters.console"),
    (ConsoleSettings, "adapters.console"),
    (PlaceOverride, 'overrides."discord:123456789012345678"'),
]


@pytest.fixture(autouse=True)
def in_empty_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)


def documented_keys() -> dict[str, set[str]]:
    """Keys per table, counting commented-out tables and keys (the scripted backend, unset values)."""
    keys: dict[str, set[str]] = {}
    table = ""
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if header := HEADER.match(line):
            table = header.group(1)
        elif key := KEY.match(line):
            keys.setdefault(table, set()).add(key.group(1))
    return keys


def undocumented(model: type[BaseModel], table: str) -> list[str]:
    """Fields of ``model`` that config.example.toml does not mention in ``[table]``.

    A secret is documented by its environment variable, since it must never be in the file.
    """
    text = EXAMPLE.read_text(encoding="utf-8")
    keys = documented_keys().get(table, set())
    missing = []
    for field_name, field in model.model_fields.items():
        name = field.alias or field_name
        nested = isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        if nested and name not in keys:
            # A nested model not written inline is a table of its own, such as [finetune.dpo].
            missing += undocumented(field.annotation, f"{table}.{name}")
        elif field.annotation in (SecretStr, SecretStr | None):
            if env_name((*table.split("."), name)) not in text:
                missing.append(f"[{table}] {name} (secret: name {env_name((*table.split('.'), name))})")
        elif name not in keys:
            missing.append(f"[{table}] {name}")
    return missing


@pytest.mark.parametrize("model, table", DOCUMENTED, ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_every_setting_is_documented(model, table):
    missing = undocumented(model, table)
    assert not missing, f"config.example.toml does not document {missing} of {model.__name__}"


def shipped_settings_models() -> list[tuple[type[BaseModel], str]]:
    """Every core table, and every model the built-in plugins register, with its table."""
    models = [
        (field.annotation, name)
        for name, field in Settings.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    ]
    host = PluginHost(settings_from_mapping({}))
    host.load()
    registry = host.registry
    models += [(backend.settings_model, "backend") for backend in registry.backends.values()]
    models += [(adapter.settings_model, f"adapters.{name}") for name, adapter in registry.adapters.items()]
    models += [(model, f"plugins.{name}") for name, model in registry.settings_models.items()]
    models += [(model, name) for name, model in registry.top_level_models.items()]
    return models


def test_plugins_top_level_tables_are_among_the_shipped_models():
    assert (FinetuneSettings, "finetune") in shipped_settings_models()


def test_settings_added_later_are_documented_too():
    missing = [item for model, table in shipped_settings_models() for item in undocumented(model, table)]
    assert not missing, "config.example.toml does not document: " + ", ".join(missing)


def test_the_backend_types_listed_are_the_registered_ones():
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# Which registered backend type"))
    prose = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        prose.append(line)
    listed = set(re.findall(r'"([a-z_]+)"', " ".join(prose)))
    host = PluginHost(settings_from_mapping({}))
    host.load()
    assert listed == set(host.registry.backends)


def test_the_example_loads_and_every_value_is_the_default():
    settings = load_settings(EXAMPLE)
    assert settings.bot == BotSettings()
    assert settings.logging == LoggingSettings()
    assert (settings.plugins.on_error, settings.plugins.directory) == ("fail", None)
    assert settings.storage == StorageSettings()
    assert set(settings.plugins.tables()) == {
        "access",
        "memory",
        "mentions",
        "moderation",
        "disclosure",
        "feedback",
        "privacy",
        "ratelimit",
    }
    bot = Bot.load(settings)
    assert bot.plugin_settings("memory") == MemorySettings()
    assert bot.plugin_settings("mentions") == MentionSettings()
    assert bot.plugin_settings("disclosure") == DisclosureSettings()
    assert bot.plugin_settings("ratelimit") == RateLimitSettings()
    assert bot.plugin_settings("access") == AccessSettings()
    assert bot.plugin_settings("privacy") == PrivacySettings()
    assert bot.plugin_settings("feedback") == FeedbackSettings()
    assert bot.plugin_settings("moderation") == ModerationSettings()
    assert bot.backend_name == "llamacpp"
    assert bot.backend_settings == LlamaCppSettings()
    assert bot.adapter_settings("console") == ConsoleSettings()
    assert bot.enabled_adapters() == ["console"]
    assert config_table(settings, "finetune", FinetuneSettings) == FinetuneSettings()
    assert config_table(settings, "web", WebSettings) == WebSettings()


def test_the_commented_out_scripted_backend_is_valid_and_holds_defaults():
    text = EXAMPLE.read_text(encoding="utf-8")
    block = text.split("# [backend]\n", 1)[1].split("\n[", 1)[0]
    uncommented = "\n".join(line.removeprefix("# ") for line in block.splitlines() if KEY.match(line))
    table = tomllib.loads(uncommented)
    assert table["type"] == "scripted"
    data = tomllib.loads(text)
    data["backend"] = table
    bot = Bot.load(settings_from_mapping(data, EXAMPLE))
    assert bot.backend_name == "scripted"
    assert bot.backend_settings == ScriptedSettings()


def test_commented_out_keys_of_active_tables_are_valid_when_uncommented():
    text = EXAMPLE.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    table: str | None = None  # None inside a commented-out table
    for line in text.splitlines():
        if header := HEADER.match(line):
            table = None if line.lstrip().startswith("#") else header.group(1)
        elif table is not None and line.startswith("# ") and KEY.match(line):
            target = data
            for part in table.split("."):
                target = target[part]
            target.update(tomllib.loads(line.removeprefix("# ")))
    data["plugins"].pop("directory")  # the example folder does not exist
    bot = Bot.load(settings_from_mapping(data, EXAMPLE))
    assert bot.backend_settings.seed == 42 and bot.backend_settings.n_threads == 4
    assert bot.backend_settings.model_path is not None and bot.backend_settings.chat_template
    assert bot.settings.storage.url is not None and bot.db.url.get_backend_name() == "postgresql"
