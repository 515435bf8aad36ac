"""Changing keys of config.toml in place: the user's comments, order and spacing stay as they were.

tomlkit keeps everything it parsed (comments, blank lines, quoting); a changed key keeps its
line and trailing comment, a new key goes right after the table's last key (not after the
comments that introduce the next table), a removed key takes its line with it. The file is
replaced atomically, so a reader (a bot's ``/reload``) sees the old text or the new, never half.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import Item, Table

from botkit.errors import ConfigError


@dataclass(frozen=True)
class ConfigEdit:
    """One change written to a config file, which ``restore`` can take back."""

    path: Path
    before: str
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def restore(self) -> None:
        """Write the text the file had before the edit back (atomically)."""
        if self.changed:
            write_atomically(self.path, self.before)


def edit_table(path: Path, table: tuple[str, ...], values: Mapping[str, Any | None]) -> ConfigEdit:
    """Set each key of ``values`` in the config table ``table`` of the file at ``path``; ``None`` removes it.

    ``table`` is a table path such as ``("backend",)`` or ``("backends", "big")``; it is
    created at the end of the file when missing. Everything else in the file stays as it
    was, byte for byte. Raises ``ConfigError`` when the file cannot be read, parsed or written.
    """
    target = path.resolve()  # a symlinked config.toml stays a symlink: its target is rewritten
    try:
        before = target.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config file: {error}") from None
    try:
        document = tomlkit.parse(before)
    except tomlkit.exceptions.TOMLKitError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    newline = "\r\n" if "\r\n" in before else "\n"
    container = _table(document, table, path)
    for key, value in values.items():
        if value is None:
            if key in container:
                del container[key]
        else:
            _set(container, key, value, newline)
    after = document.as_string()
    _check_written(after, table, values, path)
    edit = ConfigEdit(path, before, after)
    if edit.changed:
        write_atomically(target, after)
    return edit


def _table(document: Any, table: tuple[str, ...], path: Path) -> Any:
    """The (possibly new) table at ``table``: a ``Table``, an inline table or a dotted-key table."""
    current = document
    for depth, name in enumerate(table):
        if name not in current:
            # An intermediate level (``backends`` of ``[backends.big]``) is only a header prefix.
            current.add(name, tomlkit.table(is_super_table=depth < len(table) - 1))
        current = current[name]
        if not isinstance(current, Mapping):
            where = ".".join(table[: depth + 1])
            raise ConfigError(f"{path}: {where} is not a table; fix the file by hand")
    return current


def _set(container: Any, key: str, value: Any, newline: str) -> None:
    item: Item = tomlkit.item(value)
    if key in container or not isinstance(container, Table) or container.is_inline_table():
        container[key] = item  # an existing key keeps its place and its trailing comment
        return
    body = container.value.body
    keys = [i for i, (k, v) in enumerate(body) if k is not None and not isinstance(v, Table)]
    # tomlkit's public append puts a new key after the table's trailing blank lines and comments,
    # which belong to what follows; insert it after the table's last key instead. tomlkit has no
    # public insert: its Container._insert_at (0.13 to 0.15.3 at least; _insert_after went away
    # in 0.15.3) is used when present, and a tomlkit without it gets the public append, whose
    # layout is plainer but whose values _check_written still proves.
    insert_at = getattr(container.value, "_insert_at", None)
    if not keys or keys[-1] == len(body) - 1 or insert_at is None:
        container[key] = item
        return
    item.trivia.trail = newline
    insert_at(keys[-1] + 1, key, item)


def _check_written(text: str, table: tuple[str, ...], values: Mapping[str, Any | None], path: Path) -> None:
    """The edited text parses and holds exactly the values asked for (a guard on the layout surgery)."""
    try:
        data: Any = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: editing the file would break it ({error}); nothing written") from None
    for name in table:
        data = data.get(name, {})
    for key, value in values.items():
        if data.get(key) != value:
            raise ConfigError(
                f"{path}: [{'.'.join(table)}] {key} could not be written; set it by hand (nothing written)"
            )


def write_atomically(path: Path, text: str) -> None:
    """Replace the file at ``path`` by ``text`` in one step, keeping its permissions (and owner, if allowed)."""
    try:
        info: os.stat_result | None = path.stat()
    except FileNotFoundError:
        info = None
    temporary: str | None = None
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(handle, "wb") as file:
            file.write(text.encode("utf-8"))
            file.flush()
            os.fsync(file.fileno())
        if info is not None:
            os.chmod(temporary, stat.S_IMODE(info.st_mode))
            if hasattr(os, "chown"):
                with contextlib.suppress(OSError):  # only root may give a file away; others keep theirs
                    os.chown(temporary, info.st_uid, info.st_gid)
        os.replace(temporary, path)
    except OSError as error:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        raise ConfigError(f"{path}: cannot write the config file: {error}") from None
