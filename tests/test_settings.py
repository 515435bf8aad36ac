"""Settings: config.toml, BOTKIT_* overrides, plugin settings, secrets, and the errors a user sees."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, SecretStr

from botkit import hookimpl
from botkit.bot import Bot
from botkit.errors import ConfigError
from botkit.settings import load_settings, settings_from_mapping


@pytest.fixture(autouse=True)
def in_empty_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)


def test_defaults_without_a_file():
    settings = load_settings()
    assert settings.source_path is None
    assert settings.bot.max_message_chars == 8000
    assert settings.bot.conversation_scope.value == "thread"


def test_file_is_read(write_config):
    path = write_config('[bot]\nname = "helper"\n[backend]\ntemperature = 0.1\n')
    settings = load_settings(path)
    assert settings.bot.name == "helper"
    assert settings.backend == {"temperature": 0.1}


def test_config_path_from_environment_and_cwd(write_config, monkeypatch, tmp_path):
    write_config('[bot]\nname = "from-cwd"\n')
    assert load_settings().bot.name == "from-cwd"
    other = write_config('[bot]\nname = "from-env"\n', name="other.toml")
    monkeypatch.setenv("BOTKIT_CONFIG", str(other))
    assert load_settings().bot.name == "from-env"


def test_environment_overrides_the_file(write_config, monkeypatch):
    path = write_config('[bot]\nname = "file"\nmax_message_chars = 10\n[backend]\ntemperature = 0.1\n')
    monkeypatch.setenv("BOTKIT_BOT__NAME", "env")
    monkeypatch.setenv("BOTKIT_BACKEND__TEMPERATURE", "0.9")
    settings = load_settings(path)
    assert settings.bot.name == "env"
    assert settings.bot.max_message_chars == 10
    assert settings.backend["temperature"] == "0.9"  # validated by the backend's model later


def test_malformed_toml_names_file_line_and_problem(write_config):
    path = write_config('[bot]\nname = "ok"\nmax_message_chars = = 3\n')
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    message = str(error.value)
    assert str(path) in message and "line 3" in message and "invalid TOML" in message


def test_missing_file_says_how_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="no such config file .*--config PATH or set BOTKIT_CONFIG"):
        load_settings(tmp_path / "absent.toml")


def test_invalid_value_names_the_key_and_what_is_expected(write_config):
    path = write_config('[bot]\nmax_message_chars = "lots"\n')
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert "[bot] max_message_chars: Input should be a valid integer" in str(error.value)
    assert "'lots'" in str(error.value)


def test_invalid_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("BOTKIT_BOT__MAX_MESSAGE_CHARS", "-5")
    with pytest.raises(
        ConfigError,
        match=r"BOTKIT_BOT__MAX_MESSAGE_CHARS: \[bot\] max_message_chars: Input should be greater than or equal to 1",
    ):
        load_settings()


def test_unknown_key_is_reported(write_config):
    path = write_config('[bot]\nnmae = "typo"\n')
    with pytest.raises(ConfigError, match=r"\[bot\] nmae: unknown key"):
        load_settings(path)


def test_backend_settings_are_validated_by_the_backend_type(write_config):
    path = write_config('[backend]\ntype = "scripted"\ntemperature = "hot"\n')
    with pytest.raises(ConfigError, match=r"\[backend\] temperature: Input should be a valid number.*'hot'"):
        Bot.load(load_settings(path))


def test_unknown_backend_type_lists_the_available_ones(write_config):
    path = write_config('[backend]\ntype = "gpt5"\n')
    with pytest.raises(
        ConfigError, match=r"\[backend\] type: no backend 'gpt5'; available: llamacpp, openai, scripted"
    ):
        Bot.load(load_settings(path))


class TokenSettings(BaseModel):
    token: SecretStr | None = None
    greeting: str = "hi"


class SecretPlugin:
    @hookimpl
    def botkit_register_settings(self, register):
        register("secretive", TokenSettings)


def test_secret_in_the_file_is_refused_with_the_variable_to_use():
    data = {"backend": {"type": "scripted"}, "plugins": {"secretive": {"token": "xoxb-123"}}}
    with pytest.raises(ConfigError) as error:
        Bot.load(settings_from_mapping(data), extra_plugins={"secretive": SecretPlugin()})
    message = str(error.value)
    assert "[plugins.secretive] token is a secret" in message
    assert "BOTKIT_PLUGINS__SECRETIVE__TOKEN" in message
    assert "xoxb-123" not in message


def test_secret_from_the_environment_is_accepted_and_masked(monkeypatch):
    monkeypatch.setenv("BOTKIT_PLUGINS__SECRETIVE__TOKEN", "xoxb-123")
    data = {"backend": {"type": "scripted"}, "plugins": {"secretive": {"greeting": "hello"}}}
    bot = Bot.load(settings_from_mapping(data), extra_plugins={"secretive": SecretPlugin()})
    settings = bot.plugin_settings("secretive")
    assert settings.token.get_secret_value() == "xoxb-123"
    assert settings.greeting == "hello"
    from botkit.settings import to_toml

    shown = to_toml(bot.effective_config())
    assert "xoxb-123" not in shown and 'token = "**********"' in shown


def test_plugin_settings_errors_name_the_table(write_config):
    data = {"backend": {"type": "scripted"}, "plugins": {"secretive": {"greeting": ["not", "a", "string"]}}}
    with pytest.raises(ConfigError, match=r"\[plugins.secretive\] greeting: Input should be a valid string"):
        Bot.load(settings_from_mapping(data), extra_plugins={"secretive": SecretPlugin()})


def test_table_for_a_plugin_without_settings_is_an_error():
    data = {"backend": {"type": "scripted"}, "plugins": {"commands": {"colour": "blue"}}}
    with pytest.raises(
        ConfigError, match=r"\[plugins.commands\]: plugin 'commands' has no settings \(found colour\)"
    ):
        Bot.load(settings_from_mapping(data))


def test_list_values_from_the_environment_are_json(monkeypatch):
    monkeypatch.setenv("BOTKIT_BOT__ADMINS", '["discord:42"]')
    monkeypatch.setenv("BOTKIT_BACKEND__STOP", '["END", "###"]')
    bot = Bot.load(settings_from_mapping({"backend": {"type": "scripted"}}))
    assert bot.settings.bot.admins == ["discord:42"]
    assert bot.backend_settings.stop == ["END", "###"]


def test_a_list_variable_that_is_not_json_is_a_config_error(monkeypatch):
    monkeypatch.setenv("BOTKIT_BOT__ADMINS", "console:bob")
    with pytest.raises(ConfigError, match=r"BOTKIT_\* variables are JSON, e.g. BOTKIT_BOT__ADMINS="):
        load_settings()


def test_relative_paths_in_a_file_are_relative_to_the_file(tmp_path, write_config):
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "plugins").mkdir()
    path = folder / "bot.toml"
    path.write_text('[plugins]\ndirectory = "plugins"\n[storage]\ndata_dir = "state"\n', encoding="utf-8")
    settings = load_settings(path)
    assert settings.plugins.directory == folder / "plugins"
    assert settings.storage.data_dir == folder / "state"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("localhost:6379", "expected redis://HOST:PORT/DB"),
        ("http://localhost:6379/0", "expected redis://HOST:PORT/DB"),
        ("redis://", "expected redis://HOST:PORT/DB"),
        ("redis://:hunter2@localhost:6379/0", "BOTKIT_CLUSTER__REDIS_PASSWORD"),
    ],
)
def test_a_cluster_redis_url_that_cannot_be_used_is_refused_without_echoing_it(url, problem):
    with pytest.raises(ConfigError, match=r"\[cluster\] redis_url") as error:
        settings_from_mapping({"cluster": {"redis_url": url}})
    assert problem in str(error.value)
    assert "hunter2" not in str(error.value)


def test_the_cluster_settings_read_the_redis_password_from_the_environment_only(monkeypatch):
    with pytest.raises(ConfigError, match="BOTKIT_CLUSTER__REDIS_PASSWORD"):
        settings_from_mapping({"cluster": {"redis_password": "hunter2"}})
    monkeypatch.setenv("BOTKIT_CLUSTER__REDIS_PASSWORD", "hunter2")
    settings = settings_from_mapping({"cluster": {"redis_url": "redis://redis.internal:6379/2"}})
    assert settings.cluster.redis_url == "redis://redis.internal:6379/2"
    assert settings.cluster.redis_password is not None
    assert settings.cluster.redis_password.get_secret_value() == "hunter2"
    assert settings.cluster.lock_ttl_s == 30.0
