"""Install size and start-up of a plain ``pip install botkit``: one source tree against another.

Run from the repository root::

    .venv/bin/python bench/bench_install.py --before 4e675a6       # this tree against a commit
    .venv/bin/python bench/bench_install.py --before REF --after REF2

Each side is installed (not editable, no extras, as a user gets it) into a
fresh virtual environment from pip's cache; when its tree has a
``constraints.txt`` the install follows it, so both sides differ only in what
they depend on. Then, for each side:

- the bytes its environment's site-packages hold, less those of an empty venv,
  the number of distributions, and which of the heavy ones are there;
- ``python -X importtime -c "import botkit.cli"``: the import time of the command;
- ``botkit --version``: the wall time of the whole command (median of runs);
- ``botkit chat`` on a pseudo-terminal, with the embedded model, until its
  first prompt: the wall time and the process's resident memory at that
  moment (median of runs).

Both sides run in the same minute on the same machine; compare the ratios,
not the absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import pty
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("scikit_learn", "scipy", "joblib", "datasketch", "httpx", "huggingface_hub", "torch")


def run(*args: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], check=True, text=True, capture_output=True, **kwargs)


def tree_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def source_of(ref: str | None, work: Path, label: str) -> Path:
    """The tree to install: the working tree (``None``) or an exported commit."""
    if ref is None:
        return REPO
    target = work / f"src-{label}"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def install(source: Path, venv: Path) -> float:
    run(sys.executable, "-m", "venv", venv)
    started = time.perf_counter()
    constraints = ["-c", str(source / "constraints.txt")] if (source / "constraints.txt").exists() else []
    run(venv / "bin/python", "-m", "pip", "install", "--quiet", *constraints, str(source))
    return time.perf_counter() - started


def distributions(venv: Path) -> list[str]:
    listing = run(
        venv / "bin/python",
        "-c",
        "import importlib.metadata as m; print('\\n'.join(sorted(d.metadata['Name'] for d in m.distributions())))",
    )
    return listing.stdout.split()


def import_time_ms(venv: Path, env: dict[str, str]) -> float:
    """``import botkit.cli``'s cumulative import time, as ``-X importtime`` reports it (median of 3)."""
    times = []
    for _ in range(3):
        result = run(venv / "bin/python", "-X", "importtime", "-c", "import botkit.cli", env=env)
        line = next(line for line in reversed(result.stderr.splitlines()) if line.rstrip().endswith("botkit.cli"))
        times.append(int(line.split("|")[1]) / 1000)
    return statistics.median(times)


def version_seconds(venv: Path, env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run(venv / "bin/botkit", "--version", env=env)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def chat_to_first_prompt(venv: Path, env: dict[str, str], config: Path, timeout: float = 120) -> tuple[float, int]:
    """Seconds from starting ``botkit chat`` on a pseudo-terminal to its first prompt, and its RSS (KiB) then."""
    master, slave = pty.openpty()
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(venv / "bin/botkit"), "--config", str(config), "chat"],
        stdin=slave,
        stdout=slave,
        stderr=subprocess.DEVNULL,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    seen = b""
    try:
        deadline = started + timeout
        while b"] > " not in seen:
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or process.poll() is not None:
                raise RuntimeError(f"botkit chat showed no prompt; it printed {seen[-500:]!r}")
            ready, _, _ = select.select([master], [], [], remaining)
            if ready:
                try:
                    seen += os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    continue
        elapsed = time.perf_counter() - started
        return elapsed, rss_kib(process.pid)
    finally:
        process.kill()
        process.wait()
        os.close(master)


def measure(label: str, source: Path, work: Path, empty_bytes: int, runs: int) -> dict[str, object]:
    venv = work / f"venv-{label}"
    seconds = install(source, venv)
    names = distributions(venv)
    lowered = {name.lower().replace("-", "_") for name in names}
    data = work / f"data-{label}"
    data.mkdir()
    config = work / f"config-{label}.toml"
    config.write_text(f'[storage]\ndata_dir = "{data}"\n', encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("BOTKIT_", "PYTHON"))}
    env["HOME"] = str(work)  # no readline history or config of the user's
    chats = [chat_to_first_prompt(venv, env, config) for _ in range(runs)]
    return {
        "label": label,
        "install_seconds": seconds,
        "installed_mb": (tree_bytes(site_packages(venv)) - empty_bytes) / 1e6,
        "distributions": len(names),
        "heavy": [name for name in HEAVY if name in lowered],
        "import_ms": import_time_ms(venv, env),
        "version_s": version_seconds(venv, env, runs),
        "chat_prompt_s": statistics.median(elapsed for elapsed, _ in chats),
        "chat_rss_mb": statistics.median(rss for _, rss in chats) / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision to compare against")
    parser.add_argument("--after", default=None, help="git revision (default: the working tree)")
    parser.add_argument("--runs", type=int, default=5, help="start-ups measured per side (median)")
    parser.add_argument("--keep", action="store_true", help="keep the environments (printed)")
    options = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="botkit-bench-install-"))
    try:
        empty = work / "venv-empty"
        run(sys.executable, "-m", "venv", empty)
        empty_bytes = tree_bytes(site_packages(empty))
        results = [
            measure("before", source_of(options.before, work, "before"), work, empty_bytes, options.runs),
            measure("after", source_of(options.after, work, "after"), work, empty_bytes, options.runs),
        ]
    finally:
        if options.keep:
            print(f"environments kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    before, after = results
    rows = [
        ("installed (MB, site-packages less an empty venv's)", "installed_mb", "{:.1f}"),
        ("distributions", "distributions", "{}"),
        ("import botkit.cli (ms, -X importtime)", "import_ms", "{:.0f}"),
        ("botkit --version (s, median)", "version_s", "{:.2f}"),
        ("botkit chat to its first prompt (s, median)", "chat_prompt_s", "{:.2f}"),
        ("RSS at that prompt (MB, median)", "chat_rss_mb", "{:.0f}"),
        ("pip install from the cache (s)", "install_seconds", "{:.0f}"),
    ]
    print(f"{'':52} {'before':>9} {'after':>9} {'after/before':>13}")
    for title, key, shape in rows:
        b, a = before[key], after[key]
        ratio = f"{a / b:.2f}x" if isinstance(b, int | float) and b else ""
        print(f"{title:52} {shape.format(b):>9} {shape.format(a):>9} {ratio:>13}")
    print(f"{'heavy distributions present':52} {' '.join(before['heavy']) or '-'}  |  {' '.join(after['heavy']) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
