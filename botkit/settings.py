"""The one settings object: config.toml plus BOTKIT_* environment overrides, validated.

Core keys are typed here. The ``[backend]``, ``[adapters.<name>]`` and
``[plugins.<name>]`` tables are validated against the models their plugins
register (see ``validate_table``) once the plugins are loaded; so is a top-level
table named after a plugin, such as ``[finetune]`` (see ``plugin_table``).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from botkit.errors import ConfigError
from botkit.overrides import PlaceOverride, check_place
from botkit.storage.database import StorageSettings
from botkit.types import ConversationScope

ENV_PREFIX = "BOTKIT_"
ENV_CONFIG = "BOTKIT_CONFIG"
DEFAULT_CONFIG = Path("config.toml")
# `[bot] control_socket` values that are not paths (botkit/control.py).
CONTROL_SOCKET_WORDS = ("auto", "off")


class BotSettings(BaseModel):
    """``[bot]``: who the bot is and how it treats messages."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("botkit", description="the bot's display name")
    system_prompt: str = Field(
        "You are a helpful assistant. Answer briefly and truthfully.",
        description="system prompt for every conversation; empty for the model's own default",
    )
    max_message_chars: int = Field(8000, ge=1, description="longer messages are refused politely")
    conversation_scope: ConversationScope = Field(
        ConversationScope.THREAD, description="'channel', 'thread' or 'user'; DMs are always per DM"
    )
    admins: list[str] = Field(
        default_factory=lambda: ["console:admin"],
        description="administrators as 'platform:user_id'",
    )
    command_prefix: str = Field("/", min_length=1, max_length=3)
    stream_interval: float = Field(
        0.1,
        ge=0,
        le=10,
        allow_inf_nan=False,
        description="seconds between two looks at a streamed reply (reply filters, then the adapter): "
        "the first text at once, text streamed in between with the next look or the final text; 0 for every chunk",
    )
    control_socket: str = Field(
        "auto",
        min_length=1,
        description="local socket for `botkit finetune deploy` and other tools: 'auto', 'off' or a path",
    )


class PluginsSettings(BaseModel):
    """``[plugins]``: which plugins load; each ``[plugins.<name>]`` table configures one."""

    model_config = ConfigDict(extra="allow")

    on_error: Literal["fail", "skip"] = Field(
        "fail", description="a plugin that fails to load stops start-up ('fail') or is left out ('skip')"
    )
    directory: Path | None = Field(None, description="folder of single-file plugins (*.py)")

    def tables(self) -> dict[str, dict[str, Any]]:
        """The ``[plugins.<name>]`` tables, by plugin name."""
        return {k: v for k, v in (self.model_extra or {}).items()}


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LOGGER_NAME = re.compile(r"^[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*$")


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


class LoggingSettings(BaseModel):
    """``[logging]``: what botkit writes to stderr (botkit/logs.py, docs/operations.md)."""

    model_config = ConfigDict(extra="forbid")

    level: LogLevel = Field("WARNING", description="botkit's log level: DEBUG, INFO, WARNING or ERROR")
    format: Literal["text", "json"] = Field(
        "text", description="'text' (one line per record) or 'json' (one JSON object per line)"
    )
    include_text: bool = Field(
        False, description="write users' messages and the model's replies when a log line would carry them"
    )
    loggers: dict[str, LogLevel] = Field(
        default_factory=dict,
        description="levels of other loggers by name, e.g. aiosqlite = 'DEBUG'; libraries stay at WARNING",
    )

    @field_validator("level", mode="before")
    @classmethod
    def _level_any_case(cls, value: Any) -> Any:
        return _upper(value)

    @field_validator("include_text", mode="before")
    @classmethod
    def _true_or_false(cls, value: Any) -> Any:
        # A privacy switch: true or false (as TOML or an environment variable writes them), not 1 or "yes".
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value

    @field_validator("loggers", mode="before")
    @classmethod
    def _logger_levels_any_case(cls, value: Any) -> Any:
        return {name: _upper(level) for name, level in value.items()} if isinstance(value, dict) else value

    @field_validator("loggers")
    @classmethod
    def _logger_names(cls, value: dict[str, LogLevel]) -> dict[str, LogLevel]:
        for name in value:
            if not LOGGER_NAME.match(name):
                raise ValueError(
                    f"{name!r} is not a logger name (dotted words, e.g. 'slack_bolt' or 'discord.http')"
                )
        return value


class MetricsSettings(BaseModel):
    """``[metrics]``: Prometheus metrics and health checks over HTTP (docs/operations.md)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="serve /metrics, /healthz and /readyz while `botkit run` runs")
    listen: str = Field(
        "127.0.0.1:9464",
        description="host:port of the metrics listener ('[::1]:9464' for IPv6; port 0: any free port)",
    )
    per_channel: bool = Field(
        False, description="label message metrics with the channel id (one series per channel)"
    )

    @field_validator("listen")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        parse_listen(value)
        return value

    @property
    def address(self) -> tuple[str, int]:
        """``listen`` as (host, port)."""
        return parse_listen(self.listen)


class ClusterSettings(BaseModel):
    """``[cluster]``: several ``botkit run`` processes serving one bot (docs/deploy.md)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False,
        description="several `botkit run` processes serve this bot: take each conversation's lock across "
        "them and read memory from the database; false: one process",
    )
    redis_url: str | None = Field(
        None,
        description="redis://HOST:PORT/DB shared by the replicas for the conversation locks; "
        "unset: PostgreSQL advisory locks",
    )
    redis_password: SecretStr | None = Field(None, description="the Redis password (environment only)")
    lock_ttl_s: float = Field(
        30.0,
        ge=1.0,
        le=3600.0,
        description="seconds after which a conversation's lock held by a replica that died is free",
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in ("redis", "rediss", "unix") or not rest:
            raise ValueError(
                "expected redis://HOST:PORT/DB, rediss://HOST:PORT/DB (TLS) or unix:///PATH"
            )
        userinfo, at, _ = rest.partition("/")[0].rpartition("@") if scheme != "unix" else ("", "", "")
        if at and ":" in userinfo:
            raise ValueError(
                "holds a password: put it in the environment as BOTKIT_CLUSTER__REDIS_PASSWORD instead"
            )
        return value


def parse_listen(value: str) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:9464"`` for IPv6) as (host, port); ``ValueError`` saying what is expected."""
    host, colon, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected host:port, e.g. '127.0.0.1:9464' or '[::1]:9464' (got {value!r})")
    return host, int(port)


class Settings(BaseSettings):
    """Everything botkit reads from config.toml and the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        # Top-level tables of plugins ([finetune]) pass here and are checked once the plugins are known
        # (``reject_unknown_tables``, ``plugin_table``).
        extra="allow",
        nested_model_default_partial_update=True,
    )

    bot: BotSettings = Field(default_factory=BotSettings)
    backend: dict[str, Any] = Field(default_factory=dict)
    backends: dict[str, dict[str, Any]] = Field(default_factory=dict)
    overrides: dict[str, PlaceOverride] = Field(default_factory=dict)
    adapters: dict[str, dict[str, Any]] = Field(default_factory=dict)
    plugins: PluginsSettings = Field(default_factory=PluginsSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)

    # Where the values came from, for error messages and the secrets rule.
    _source_path: Path | None = PrivateAttr(None)
    _file_data: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (passed in as init values).
        return env_settings, init_settings

    @property
    def source_path(self) -> Path | None:
        return self._source_path

    @property
    def file_data(self) -> dict[str, Any]:
        """The values as read from the file, before environment overrides."""
        return self._file_data

    @property
    def source_name(self) -> str:
        return str(self._source_path) if self._source_path else "config"

    def top_level_extras(self) -> dict[str, Any]:
        """Top-level tables (and keys) of the file that are not botkit's own, by name, as read."""
        return dict(self.model_extra or {})


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; errors name the file, line and problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file (pass --config PATH or set {ENV_CONFIG})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config file: {error}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None


def config_path(explicit: Path | None = None) -> Path | None:
    """The config file to read: ``--config``, else ``BOTKIT_CONFIG``, else ./config.toml if present."""
    if explicit is not None:
        return explicit
    from_env = os.environ.get(ENV_CONFIG)
    if from_env:
        return Path(from_env)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def load_settings(path: Path | None = None) -> Settings:
    """Read and validate the core settings. Plugin tables are checked later by ``validate_table``."""
    path = config_path(path)
    return settings_from_mapping(read_toml(path) if path is not None else {}, path)


def settings_from_mapping(data: dict[str, Any], path: Path | None = None) -> Settings:
    """Validate settings given as a parsed config file (with environment overrides applied)."""
    where = str(path) if path else "config"
    reject_secrets_in_file(Settings, data, where, ())
    try:
        settings = Settings(**data)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, where, ())) from None
    except SettingsError as error:
        # A list or table value in a BOTKIT_* variable that is not valid JSON.
        raise ConfigError(
            f"environment: {error}; lists and tables in BOTKIT_* variables are JSON, "
            "e.g. BOTKIT_BOT__ADMINS='[\"console:admin\"]'"
        ) from None
    settings._source_path = path
    settings._file_data = data
    for place in settings.overrides:
        problem = check_place(place)
        if problem:
            raise ConfigError(f'{where}: [overrides."{place}"]: {problem}')
    if path is not None:
        # Relative paths in a config file are relative to the file, not to where botkit runs.
        base = path.parent
        if (
            settings.plugins.directory is not None
            and not settings.plugins.directory.expanduser().is_absolute()
        ):
            settings.plugins.directory = base / settings.plugins.directory
        if "data_dir" in data.get("storage", {}) and not settings.storage.data_dir.expanduser().is_absolute():
            settings.storage.data_dir = base / settings.storage.data_dir
        control_socket = settings.bot.control_socket
        if (
            "control_socket" in data.get("bot", {})
            and control_socket not in CONTROL_SOCKET_WORDS
            and not Path(control_socket).expanduser().is_absolute()
        ):
            settings.bot.control_socket = str(base / control_socket)
    return settings


def reject_unknown_tables(settings: Settings, plugins: Iterable[str]) -> None:
    """A top-level table that neither botkit nor one of ``plugins`` (the installed plugins' names) owns is an error.

    A plugin may claim the top-level table of its own name (``[finetune]``); whether it does is
    checked once it is loaded. Tables of plugins that are installed but not loaded are not checked.
    """
    known = set(plugins)
    unknown = sorted(set(settings.top_level_extras()) - known)
    if unknown:
        own = ", ".join(Settings.model_fields)
        raise ConfigError(
            "\n".join(
                f"{settings.source_name}: {format_key((name,))}: unknown key (check the spelling); "
                f"the top-level tables are botkit's ({own}) and those named after an installed plugin"
                for name in unknown
            )
        )


def plugin_table(settings: Settings, name: str) -> dict[str, Any]:
    """The raw top-level table ``[name]`` of a plugin: the file's values with ``BOTKIT_<NAME>__*`` on top.

    pydantic-settings reads the environment only for botkit's own tables, so a plugin's are
    gathered here, by the same rule: ``BOTKIT_FINETUNE__RANK=16`` sets ``[finetune] rank``.
    """
    table = settings.top_level_extras().get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{settings.source_name}: {name}: expected a table, [{name}] (got {table!r})")
    values: dict[str, Any] = dict(table)
    prefix = env_name((name,)) + "__"
    for variable, value in os.environ.items():
        if not variable.upper().startswith(prefix):
            continue
        *parents, key = variable[len(prefix) :].lower().split("__")
        target = values
        for parent in parents:
            nested = target.get(parent)
            nested = dict(nested) if isinstance(nested, dict) else {}
            target[parent] = nested
            target = nested
        target[key] = value
    return values


def validate_table(
    model: type[BaseModel], values: dict[str, Any], settings: Settings, table: tuple[str, ...]
) -> BaseModel:
    """Validate one config table (e.g. ``("plugins", "ratelimit")``) against ``model``."""
    file_values: Any = settings.file_data
    for key in table:
        file_values = file_values.get(key, {}) if isinstance(file_values, dict) else {}
    reject_secrets_in_file(model, file_values, settings.source_name, table)
    try:
        return model.model_validate(decode_environment_values(model, values))
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, settings.source_name, table)) from None


def decode_environment_values(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """Parse JSON in string values meant for list or table keys (they arrive so from BOTKIT_* variables)."""
    decoded = dict(values)
    for name, value in values.items():
        field = model.model_fields.get(name)
        if field is None or not isinstance(value, str):
            continue
        origin = get_origin(field.annotation) or field.annotation
        complex_types = (list, dict, set, tuple)
        if origin in complex_types or (
            origin in (Union, UnionType)
            and any((get_origin(arg) or arg) in complex_types for arg in get_args(field.annotation))
        ):
            try:
                decoded[name] = json.loads(value)
            except json.JSONDecodeError:
                pass  # validation then says what is expected
    return decoded


def env_name(path: tuple[str | int, ...]) -> str:
    return ENV_PREFIX + "__".join(str(p).upper() for p in path)


def format_key(path: tuple[str | int, ...]) -> str:
    """``("plugins", "ratelimit", "per_user")`` -> ``[plugins.ratelimit] per_user``."""
    names = [str(p) if re.fullmatch(r"[A-Za-z0-9_-]+", str(p)) else json.dumps(str(p)) for p in path]
    if len(names) == 1:
        return names[0]
    return f"[{'.'.join(names[:-1])}] {names[-1]}"


def describe_validation_error(error: ValidationError, where: str, table: tuple[str, ...]) -> str:
    lines = []
    for problem in error.errors():
        loc = table + tuple(str(p) for p in problem["loc"])
        source = env_name(loc) if env_name(loc) in os.environ else where
        if problem["type"] == "extra_forbidden":
            lines.append(f"{source}: {format_key(loc)}: unknown key (check the spelling)")
            continue
        got = problem.get("input")
        shown = (
            "" if isinstance(got, dict) or problem["type"] == "missing" else f" (got {mask_urls(repr(got))})"
        )
        lines.append(f"{source}: {format_key(loc)}: {problem['msg']}{shown}")
    return "\n".join(lines)


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@/\s]+@")


def mask_urls(text: str) -> str:
    """Hide the password of any URL in ``text`` (``scheme://user:***@host``)."""
    return _URL_PASSWORD.sub(r"\1***@", text)


def reject_secrets_in_file(
    model: type[BaseModel], file_values: Any, where: str, table: tuple[str, ...]
) -> None:
    """Secrets come only from the environment: refuse a ``SecretStr`` key set in the file."""
    if not isinstance(file_values, dict):
        return
    for name, field in model.model_fields.items():
        if name not in file_values:
            continue
        annotation = field.annotation
        path = table + (name,)
        if annotation is SecretStr or annotation == SecretStr | None:
            raise ConfigError(
                f"{where}: {format_key(path)} is a secret and is read only from the environment: "
                f"remove it from the file and set {env_name(path)}"
            )
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            reject_secrets_in_file(annotation, file_values[name], where, path)


def masked_dump(model: BaseModel) -> dict[str, Any]:
    """The model as plain data with every secret shown as '**********'."""
    return model.model_dump(mode="json", exclude_none=False)


def to_toml(data: dict[str, Any], table: tuple[str, ...] = ()) -> str:
    """A small TOML writer for the effective config: unset values become comments."""
    lines: list[str] = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if table and (scalars or not tables):
        lines.append(f"[{'.'.join(table)}]")
    for key, value in scalars.items():
        lines.append(f"# {key} is unset" if value is None else f"{key} = {toml_value(value)}")
    text = "\n".join(lines)
    for key, value in tables.items():
        sub = to_toml(value, table + (key,))
        text = f"{text}\n\n{sub}" if text else sub
    return text


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)
