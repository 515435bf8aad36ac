"""Errors a user or operator can meet, each saying what happened and what to do."""

from __future__ import annotations


class BotkitError(Exception):
    """Base of every error botkit raises on purpose."""


class ConfigError(BotkitError):
    """The configuration (file, environment or flag) is invalid."""


class PluginLoadError(BotkitError):
    """A plugin could not be imported, registered or configured."""

    def __init__(self, plugin: str, cause: str) -> None:
        self.plugin = plugin
        self.cause = cause
        super().__init__(f"plugin {plugin!r}: {cause}")


class DuplicateNameError(BotkitError):
    """Two plugins registered the same backend, adapter, command or settings name."""


class ModelLoadError(BotkitError):
    """A model file is missing, unreadable or not a model the backend can load."""


class QueueFull(BotkitError):
    """A backend's generation queue has no room for another request."""


class StorageError(BotkitError):
    """The database cannot be reached, or its schema is not the one this code needs."""


class DatabaseInUse(StorageError):
    """A schema change was asked for while a running bot uses the database."""


class LoraError(BotkitError):
    """A LoRA adapter is unknown, unreadable, or built for another base model."""


# The old name, from when "adapter" meant a LoRA adapter too; removed in the next release.
AdapterError = LoraError


class PlatformError(BotkitError):
    """A chat platform refused the bot's credentials, or could not be reached or listened for."""


class ExportError(BotkitError):
    """A training-data export cannot run or would write nothing (empty selection, output folder exists)."""


class UnknownUser(BotkitError):
    """No stored user matches what was asked for (a platform and a user's id or display name)."""


class ControlError(BotkitError):
    """A running bot's control socket cannot be claimed, reached, or gave no usable answer."""


class NoRunningBot(ControlError):
    """Nobody listens on the control socket: no bot runs with this config (or its socket is off)."""

    def __init__(self, path: object) -> None:
        self.path = path
        super().__init__(f"no running bot found at {path}")
