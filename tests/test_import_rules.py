"""The rooms keep to their doors: what plugins and finetune may import, and no import cycle at run time.

Imports are read from the source (``ast``), as installed names: ``plugins/x.py``
is ``botkit.plugins.x``, ``finetune/`` is ``botkit.finetune``. An import under
``if TYPE_CHECKING:`` is for type checkers only; one inside a function runs
late, when it is called; neither can make an import cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ARCHITECTURE = REPO / "docs" / "architecture.md"
# Source folder -> installed package (pyproject.toml's package-dir).
FOLDERS = {"botkit": "botkit", "plugins": "botkit.plugins", "finetune": "botkit.finetune", "web": "botkit.web"}

# The public modules: what plugins and finetune may import of botkit.
# botkit.ops: for the commands a plugin adds (botkit_register_cli), as its docstring says.
PLUGIN_API = {"botkit", "botkit.storage", "botkit.detectors", "botkit.ops"}
FINETUNE_API = {"botkit", "botkit.storage", "botkit.prompts", "botkit.detectors", "botkit.ops"}
# The web console calls what the CLI calls: the operations API, and finetune's review and export.
WEB_API = FINETUNE_API


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the botkit module imported
    line: int
    when: str  # "run" (module level), "late" (in a function), "typing" (TYPE_CHECKING)


def module_name(path: Path) -> str:
    relative = path.relative_to(REPO).with_suffix("")
    parts = list(relative.parts)
    parts[0] = FOLDERS[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {
        module_name(path): path for folder in FOLDERS for path in sorted((REPO / folder).rglob("*.py"))
    }


MODULES = all_modules()


def resolve(module: str, path: Path, node: ast.ImportFrom) -> list[str]:
    """The botkit modules an ``from X import a, b`` names (a name may be a submodule)."""
    if node.level:
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    found = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        found.append(sub if sub in MODULES else base)
    return found


def imports_of(module: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"))

    def visit(node: ast.AST, when: str) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            child_when = when
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                child_when = "typing"
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) and when == "run":
                child_when = "late"
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == "botkit" or alias.name.startswith("botkit."):
                        yield Import(module, alias.name, child.lineno, child_when)
            elif isinstance(child, ast.ImportFrom):
                for target in resolve(module, path, child):
                    if target == "botkit" or target.startswith("botkit."):
                        yield Import(module, target, child.lineno, child_when)
            yield from visit(child, child_when)

    yield from visit(tree, "run")


IMPORTS = sorted(
    {found for module, path in MODULES.items() for found in imports_of(module, path)},
    key=lambda i: (i.module, i.line, i.target),
)


def owner_plugin(module: str) -> str | None:
    """``botkit.plugins.memory.store`` -> ``botkit.plugins.memory``."""
    parts = module.split(".")
    return ".".join(parts[:3]) if module.startswith("botkit.plugins.") else None


def test_the_reader_sees_the_imports_it_must_judge():
    # A guard for the rules below: the parser finds known imports of each kind.
    found = {(i.module, i.target, i.when) for i in IMPORTS}
    assert ("botkit.bot", "botkit.pipeline", "run") in found
    assert ("botkit.plugins.memory", "botkit.plugins.memory.store", "run") in found
    assert any(i.when == "typing" for i in IMPORTS)
    assert any(i.when == "late" for i in IMPORTS)


def test_plugins_import_only_the_public_api_and_never_another_plugin():
    wrong = []
    for found in IMPORTS:
        plugin = owner_plugin(found.module)
        if plugin is None or found.when == "typing":
            continue
        if found.target in PLUGIN_API or found.target.startswith(plugin + ".") or found.target == plugin:
            continue
        wrong.append(f"{found.module} line {found.line}: imports {found.target}")
    assert wrong == [], "plugins may import only " + ", ".join(sorted(PLUGIN_API)) + ":\n" + "\n".join(wrong)


def test_finetune_imports_only_the_public_api():
    wrong = [
        f"{found.module} line {found.line}: imports {found.target}"
        for found in IMPORTS
        if found.module.startswith("botkit.finetune")
        and found.when != "typing"
        and not found.target.startswith("botkit.finetune")
        and found.target not in FINETUNE_API
    ]
    assert wrong == [], "finetune may import only " + ", ".join(sorted(FINETUNE_API)) + ":\n" + "\n".join(wrong)


def test_the_web_console_imports_only_the_public_api_and_finetune():
    wrong = [
        f"{found.module} line {found.line}: imports {found.target}"
        for found in IMPORTS
        if found.module.startswith("botkit.web")
        and found.when != "typing"
        and not found.target.startswith(("botkit.web", "botkit.finetune"))
        and found.target not in WEB_API
    ]
    assert wrong == [], "the web console may import only " + ", ".join(sorted(WEB_API)) + " and botkit.finetune:\n" + "\n".join(wrong)


def test_the_core_imports_no_plugin_no_finetune_and_no_web_module():
    wrong = [
        f"{found.module} line {found.line}: imports {found.target}"
        for found in IMPORTS
        if not found.module.startswith(("botkit.plugins", "botkit.finetune", "botkit.web"))
        and found.target.startswith(("botkit.plugins", "botkit.finetune", "botkit.web"))
    ]
    assert wrong == []


def run_time_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for found in IMPORTS:
        if found.when == "run" and found.target in MODULES and found.target != found.module:
            graph[found.module].add(found.target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return groups


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_at_run_time():
    assert cycles(run_time_graph()) == []


ROOMS = {
    "core": "botkit",
    "api": "botkit.api",
    "storage": "botkit.storage",
    "adapters": "botkit.adapters",
    "backends": "botkit.backends",
    "plugins": "botkit.plugins",
    "finetune": "botkit.finetune",
    "web": "botkit.web",
    "migrations": "botkit.migrations",
}


def room_of(module: str) -> str:
    best = "core"
    for room, prefix in ROOMS.items():
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(ROOMS[best]):
            best = room
    return best


def documented_room_map() -> dict[str, set[str]]:
    """The table under "## Map of imports" in docs/architecture.md: room -> rooms it imports at run time."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("## Map of imports", 1)[1].split("\n## ", 1)[0]
    rooms: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`") and not set(cells[0]) <= {"-"}:
            rooms[cells[0].strip("`")] = {
                name.strip().strip("`") for name in cells[1].split(",") if name.strip() not in ("", "-")
            }
    return rooms


def test_the_map_of_imports_in_architecture_md_is_the_code():
    actual: dict[str, set[str]] = {room: set() for room in ROOMS}
    for found in IMPORTS:
        if found.when == "typing":
            continue
        source, target = room_of(found.module), room_of(found.target)
        if source != target:
            actual[source].add(target)
    assert documented_room_map() == actual


@pytest.mark.parametrize("module", sorted(m for m in MODULES if owner_plugin(m)))
def test_no_plugin_keeps_per_bot_state_in_a_module_global(module):
    source = MODULES[module].read_text(encoding="utf-8")
    for marker in ("WeakKeyDictionary", "id(bot)"):
        assert marker not in source, f"{module}: per-bot state belongs in bot.state (StateKey), not {marker}"
