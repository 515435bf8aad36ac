"""The tables in the docs that list what the code has (plugins, the bot's API, errors, extras) are the code's."""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

from botkit import api, errors
from botkit.plugin_discovery import BUILTIN_PLUGINS

REPO = Path(__file__).resolve().parent.parent
PLUGINS_DOC = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
ARCHITECTURE = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")


def table_after(text: str, marker: str) -> list[list[str]]:
    """The rows (cells stripped, header and rule left out) of the first table after ``marker``."""
    rest = text.split(marker, 1)[1]
    rows: list[list[str]] = []
    started = False
    for line in rest.splitlines():
        if line.startswith("|"):
            started = True
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows.append(cells)
        elif started:
            break
    return [row for row in rows[1:] if not set("".join(row)) <= {"-", " ", ":"}]


def names_in(cell: str) -> list[str]:
    """Every `code` name in a cell, calls trimmed: "`is_admin(user, message)`" -> ["is_admin"]."""
    return [re.split(r"[(\s]", name)[0] for name in re.findall(r"`([^`]+)`", cell)]


def test_the_built_in_plugin_table_is_the_code():
    rows = table_after(PLUGINS_DOC, "<!-- builtin-plugins")
    documented = {names_in(row[0])[0]: names_in(row[1])[0] for row in rows}
    assert documented == BUILTIN_PLUGINS


def test_the_botapi_table_lists_every_member_of_the_protocol():
    rows = table_after(PLUGINS_DOC, "## The bot plugins see: `BotAPI`")
    documented = {name for row in rows for name in names_in(row[0])}
    members = {
        name
        for name, value in vars(api.BotAPI).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    }
    assert documented == members


def test_the_errors_table_is_every_error_botkit_raises():
    rows = table_after(ARCHITECTURE, "<!-- errors:")
    documented = {names_in(row[0])[0] for row in rows}
    defined = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, errors.BotkitError) and value.__name__ == name  # not an alias
    }
    assert documented == defined


def test_the_extras_table_is_pyprojects():
    rows = table_after(ARCHITECTURE, "<!-- extras:")
    documented = {names_in(row[0])[0] for row in rows}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert documented == set(pyproject["project"]["optional-dependencies"])


def test_the_module_table_names_every_module_and_only_modules_that_exist():
    rows = table_after(ARCHITECTURE, "## Modules")
    named = {name for row in rows for name in names_in(row[0])}
    missing_files = sorted(name for name in named if not (REPO / name).exists())
    assert missing_files == [], "docs/architecture.md names modules that do not exist"
    folders = tuple(name for name in named if name.endswith("/"))
    unnamed = []
    for folder in ("botkit", "plugins", "finetune", "web"):
        for path in sorted((REPO / folder).rglob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            if path.name == "__init__.py" and relative != "botkit/__init__.py":
                continue  # a package's __init__ is described with its package
            if path.name == "__main__.py" or relative in named or relative.startswith(folders):
                continue
            unnamed.append(relative)
    assert unnamed == [], "docs/architecture.md's module table does not name these modules"


def test_the_moderation_settings_table_is_the_settings_model():
    from botkit.plugins.moderation import ModerationSettings

    doc = (REPO / "docs" / "moderation.md").read_text(encoding="utf-8")
    rows = table_after(doc, "## Settings")
    documented = {names_in(row[0])[0] for row in rows}
    assert documented == set(ModerationSettings.model_fields)
