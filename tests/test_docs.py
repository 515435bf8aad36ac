"""The docs stay true: every hook documented by its exact signature and tested, the README runs."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from botkit import hookspecs

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PLUGINS_DOC = REPO / "docs" / "plugins.md"
TESTS = REPO / "tests"


def hook_heading(name: str) -> str:
    """``### botkit_gate(message: Message, bot: Bot)``: the parameters as hookspecs.py writes them."""
    params = []
    for param in inspect.signature(getattr(hookspecs, name)).parameters.values():
        annotation = param.annotation
        if annotation is inspect.Parameter.empty:
            params.append(param.name)
        else:
            # hookspecs.py uses `from __future__ import annotations`: annotations are source text.
            text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
            params.append(f"{param.name}: {text}")
    return f"### {name}({', '.join(params)})"


def doc_sections(text: str) -> dict[str, str]:
    """``### `` heading line -> the text up to the next heading."""
    sections: dict[str, str] = {}
    heading = None
    for line in text.splitlines():
        if line.startswith("#"):
            heading = line if line.startswith("### ") else None
            if heading:
                sections[heading] = ""
        elif heading:
            sections[heading] += line + "\n"
    return sections


@pytest.mark.parametrize("name", hookspecs.HOOK_NAMES)
def test_every_hook_has_a_section_headed_by_its_exact_signature(name):
    sections = doc_sections(PLUGINS_DOC.read_text(encoding="utf-8"))
    heading = hook_heading(name)
    assert heading in sections, f"docs/plugins.md has no section headed {heading!r}"
    body = sections[heading]
    for part in ("**When**", "**Arguments**", "**Results**", "**Where**", "```python"):
        assert part in body, f"docs/plugins.md {heading!r}: no {part}"


def test_no_section_documents_a_hook_that_does_not_exist():
    documented = re.findall(r"^### (botkit_\w+)\(", PLUGINS_DOC.read_text(encoding="utf-8"), re.MULTILINE)
    assert sorted(documented) == sorted(hookspecs.HOOK_NAMES)


@pytest.mark.parametrize("name", hookspecs.HOOK_NAMES)
def test_every_hook_is_implemented_in_a_test(name):
    implemented = re.compile(rf"\bdef {name}\(")
    files = [p for p in TESTS.glob("*.py") if p.name != Path(__file__).name]
    assert any(implemented.search(p.read_text(encoding="utf-8")) for p in files), (
        f"no test implements {name}: add one that drives it through a real bot (make_bot)"
    )


@pytest.mark.parametrize(
    "doc", [README, PLUGINS_DOC, REPO / "docs" / "architecture.md"], ids=lambda p: p.name
)
def test_python_examples_in_the_docs_are_valid_python(doc):
    for info, body in code_blocks(doc.read_text(encoding="utf-8")):
        if info == "python":
            compile(body, f"{doc.name} example", "exec")


def readme_section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def code_blocks(text: str) -> list[tuple[str, str]]:
    """``(info string, body)`` of each fenced code block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def test_quickstart_is_exactly_scripts_chat_and_scripts_test():
    commands = [
        line.strip()
        for _, body in code_blocks(readme_section("Quickstart"))
        for line in body.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert commands == ["scripts/chat", "scripts/test"]
    for script in commands:
        assert os.access(REPO / script, os.X_OK), f"{script} is not executable"


def test_ci_runs_the_readme_test_command():
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert any(re.fullmatch(r"(exec\s+)?scripts/test", line) for line in lines)


def readme_files() -> dict[str, str]:
    """README code blocks whose first line is ``# <relative path>``: the files of its plugin example."""
    files = {}
    for _, body in code_blocks(README.read_text(encoding="utf-8")):
        first = body.splitlines()[0] if body.strip() else ""
        if match := re.fullmatch(r"# ([\w./-]+\.(?:py|toml))", first):
            files[match.group(1)] = body
    return files


@pytest.fixture
def readme_project(tmp_path: Path) -> Path:
    files = readme_files()
    assert {"myplugins/swearjar.py", "tests/test_swearjar.py", "pyproject.toml"} <= files.keys()
    for relative, body in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
    return tmp_path


async def test_readme_plugin_works_as_described(readme_project, make_bot, monkeypatch):
    monkeypatch.chdir(readme_project)
    readme = README.read_text(encoding="utf-8")
    assert '`[plugins] directory = "myplugins"`' in readme
    # A relative plugins folder is taken from the current directory.
    async with make_bot({"plugins": {"directory": "myplugins"}}) as bot:
        assert bot.host.infos["swearjar"].hooks == ["botkit_gate", "botkit_register_commands"]
        refused = await bot.chat.say("What the heck?")
        also_refused = await bot.chat.say("DARN it", user="bob")
        bot.backend.say("Hi!")
        answered = await bot.chat.say("hello")
        jar = await bot.chat.say("/jar")
        listed = await bot.chat.say("/help")
    assert refused.texts == also_refused.texts == ["Language, please."]
    assert answered.final == "Hi!"
    assert [p.current.text for p in bot.backend.prompts] == ["hello"]
    assert jar.texts == ["The swear jar holds 2 coin(s)."]
    assert "/jar - say how many messages were refused" in listed.sent[0]


def test_readme_plugin_test_passes_in_a_project_of_its_own(readme_project):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOTKIT_", "PYTEST_"))}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_swearjar.py"],
        check=False,
        cwd=readme_project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
