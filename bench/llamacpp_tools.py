"""llama.cpp's own benchmark tools: built once from the sources botkit's llama-cpp-python comes from, and run.

The benchmarks compare botkit with ``llama-bench``, ``llama-server`` and
``llama-batched-bench``. Those must run the same llama.cpp as botkit does, so
they are built from ``vendor/llama.cpp`` in the sdist of the installed
llama-cpp-python version (fetched with ``pip download``), CPU only, Release,
against shared libraries, into a cache folder that later runs reuse::

    ~/.cache/botkit-bench/llama.cpp-VERSION-shared/bin/   (or $XDG_CACHE_HOME, or --tools-dir)

Only the programs are kept: they run with ``LD_LIBRARY_PATH`` naming the folder of
llama-cpp-python's own ``libllama.so`` and ``libggml*.so`` (``tool_env``), so both
sides run the very same compiled llama.cpp. (Tools linked statically ran about 8%
faster than the same library loaded by Python on this project's 2-core VM:
position-independent code, and whatever flags pip's build chose.)

Nothing here runs at test time: only a benchmark that needs the tools calls
``ensure_tools``. Run this file alone to build them ahead of a benchmark::

    .venv/bin/python bench/llamacpp_tools.py              # about 15 minutes on two cores, once
    .venv/bin/python bench/llamacpp_tools.py --tools-dir /tmp/llama-tools
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TOOLS = ("llama-bench", "llama-server", "llama-batched-bench")
BUILD_JOBS = 2
# CPU only, like botkit's llama-cpp-python here; no web UI, no downloads during the
# build (the server's UI would otherwise come from a Hugging Face bucket), no HTTPS,
# shared, as llama-cpp-python builds it, so that the programs load its libraries (``tool_env``).
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DGGML_CUDA=OFF",
    "-DGGML_VULKAN=OFF",
    "-DGGML_METAL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
)


class ToolBuildError(RuntimeError):
    """The tools could not be fetched or built; the message says what failed and what to do."""


@dataclass(frozen=True)
class LlamaTools:
    """Paths of the built tools, and the llama-cpp-python version whose llama.cpp they come from."""

    version: str
    folder: Path

    @property
    def bench(self) -> Path:
        return self.folder / "bin" / "llama-bench"

    @property
    def server(self) -> Path:
        return self.folder / "bin" / "llama-server"

    @property
    def batched_bench(self) -> Path:
        return self.folder / "bin" / "llama-batched-bench"

    def missing(self) -> list[str]:
        return [name for name in TOOLS if not os.access(self.folder / "bin" / name, os.X_OK)]


def llama_cpp_version() -> str:
    """The installed llama-cpp-python's version: the sdist to build the tools from."""
    return importlib.metadata.version("llama_cpp_python")


def default_folder(version: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "botkit-bench" / f"llama.cpp-{version}-shared"


def llama_cpp_libraries() -> Path:
    """The folder of the installed llama-cpp-python's libllama.so and libggml*.so."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise ToolBuildError("llama-cpp-python is not installed here: run scripts/setup")
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


def tool_env(tools: LlamaTools) -> dict[str, str]:
    """The environment the tools run in: llama.cpp's libraries from llama-cpp-python, theirs beside them."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [str(llama_cpp_libraries()), str(tools.folder / "bin"), *filter(None, [os.environ.get("LD_LIBRARY_PATH")])]
    )
    return env


def ensure_tools(folder: Path | None = None, say=print) -> LlamaTools:
    """The tools for the installed llama-cpp-python, built into ``folder`` first when it lacks them.

    Raises ``ToolBuildError`` when the download or the build fails.
    """
    version = llama_cpp_version()
    tools = LlamaTools(version, (folder or default_folder(version)).expanduser())
    if not tools.missing():
        return tools
    tools.folder.mkdir(parents=True, exist_ok=True)
    # Engineers share the cache: a second benchmark waits for the first one's build.
    with open(tools.folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tools.missing():
            _build(tools, say)
    return tools


def _build(tools: LlamaTools, say) -> None:
    say(f"llama.cpp tools: {', '.join(tools.missing())} missing in {tools.folder / 'bin'}")
    say(f"  building them from llama-cpp-python {tools.version}'s vendored llama.cpp (once; cached)")
    work = tools.folder / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    log_path = tools.folder / "build.log"
    started = time.monotonic()
    with open(log_path, "w") as log:
        source = _fetch_source(tools.version, work, log, say)
        cmake = _cmake(log, say)
        build = work / "build"
        say(f"  configuring with {cmake} (CPU only, Release)")
        _run([cmake, "-S", str(source), "-B", str(build), *CMAKE_OPTIONS], log, log_path, "configure")
        say(f"  compiling {', '.join(TOOLS)} with -j{BUILD_JOBS} under nice (about 15 minutes on two cores)")
        _run(
            [cmake, "--build", str(build), "--config", "Release", f"-j{BUILD_JOBS}", "--target", *TOOLS],
            log,
            log_path,
            "build",
        )
    bin_folder = tools.folder / "bin"
    bin_folder.mkdir(exist_ok=True)
    for name in TOOLS:
        built = build / "bin" / name
        if not built.is_file():
            raise ToolBuildError(f"the build finished without {built}; see {log_path}")
        shutil.copy2(built, bin_folder / name)
    # The tools' own libraries (llama-bench's implementation, the server's), not llama.cpp's:
    # those come from llama-cpp-python at run time (tool_env).
    provided = {path.name.split(".so")[0] for path in llama_cpp_libraries().glob("lib*.so*")}
    for library in (build / "bin").glob("lib*.so*"):
        if library.name.split(".so")[0] not in provided:
            shutil.copy2(library, bin_folder / library.name, follow_symlinks=True)
    shutil.rmtree(work)
    say(f"  built in {time.monotonic() - started:.0f} s: {bin_folder} (log: {log_path})")


def _fetch_source(version: str, work: Path, log, say) -> Path:
    say(f"  fetching the llama-cpp-python=={version} sdist with pip download")
    command = [
        sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}",
        "--no-binary", ":all:", "--no-deps", "-d", str(work),
    ]  # fmt: skip
    _run(command, log, Path(log.name), "pip download", niced=False)
    archives = list(work.glob("llama_cpp_python-*.tar.gz"))
    if len(archives) != 1:
        raise ToolBuildError(
            f"pip download left {len(archives)} sdists in {work}, expected one; see {log.name}"
        )
    say(f"  unpacking {archives[0].name}")
    with tarfile.open(archives[0]) as archive:
        archive.extractall(work, filter="data")
    source = work / archives[0].name.removesuffix(".tar.gz") / "vendor" / "llama.cpp"
    if not (source / "CMakeLists.txt").is_file():
        raise ToolBuildError(f"the sdist has no vendor/llama.cpp/CMakeLists.txt (looked in {source})")
    return source


def _cmake(log, say) -> str:
    """cmake from the PATH or the virtualenv, installed into the virtualenv with pip when neither has it."""
    venv_cmake = Path(sys.executable).parent / "cmake"
    found = shutil.which("cmake") or (str(venv_cmake) if venv_cmake.is_file() else None)
    if found:
        return found
    say("  cmake not found: installing it into this virtualenv with pip")
    _run(
        [sys.executable, "-m", "pip", "install", "cmake"],
        log,
        Path(log.name),
        "pip install cmake",
        niced=False,
    )
    if not venv_cmake.is_file():
        raise ToolBuildError(f"pip installed cmake but {venv_cmake} is missing; install cmake and run again")
    return str(venv_cmake)


def _run(command: list[str], log, log_path: Path, step: str, niced: bool = True) -> None:
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    try:
        # The machine is shared: a compile must not slow down everything else on it.
        result = subprocess.run(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.nice(10)) if niced else None,
            check=False,
        )
    except OSError as error:
        raise ToolBuildError(f"{step}: cannot run {command[0]}: {error.strerror}") from None
    if result.returncode != 0:
        log.flush()
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise ToolBuildError(
            f"building llama.cpp's tools failed at the {step} step (exit status {result.returncode}).\n"
            f"The last lines of {log_path}:\n{tail}\n"
            "A C++17 compiler (g++ or clang++) and cmake >= 3.14 are needed, and pip must reach the "
            "package registry. Fix the cause and run the benchmark again; it resumes from the start."
        )


# -- running them ---------------------------------------------------------------


def _without_extra_buffers() -> bool:
    """Whether botkit loads the model without llama.cpp's extra buffer types on this machine (AMX:
    ``llamacpp_model.repacking_is_safe``); the tools must then do the same, or they measure other
    kernels (and in 0.3.36 ``llama-bench`` crashes on such a machine)."""
    from botkit.backends.llamacpp_model import repacking_is_safe

    return not repacking_is_safe()


def llama_bench(
    tools: LlamaTools,
    model: Path,
    threads: int,
    prompt_lengths: Sequence[int],
    generate: int,
    repetitions: int,
    depth: int = 0,
    flash_attn: bool = True,
    cache_type: str = "f16",
) -> dict[str, float]:
    """Tokens/s from ``llama-bench``: ``pp<N>`` for each prompt length, ``tg<generate>``, each after
    ``depth`` tokens already in the cache (0: from an empty cache)."""
    prompts = ",".join(str(n) for n in sorted(set(prompt_lengths))) or "0"
    command = [
        str(tools.bench), "-m", str(model), "-t", str(threads), "-p", prompts, "-n", str(generate),
        "-d", str(depth), "-r", str(repetitions), "-fa", "1" if flash_attn else "0", "-ctk", cache_type, "-ctv", cache_type, "-o", "json", *(["--repack", "0"] if _without_extra_buffers() else []),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=tool_env(tools))
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
    rates = {}
    for test in json.loads(result.stdout):
        name = f"pp{test['n_prompt']}" if test["n_gen"] == 0 else f"tg{test['n_gen']}"
        rates[name] = float(test["avg_ts"])
    return rates


def batched_bench(
    tools: LlamaTools,
    model: Path,
    threads: int,
    prompt: int,
    generate: int,
    sequences: Sequence[int],
    flash_attn: bool = True,
    cache_type: str = "f16",
) -> dict[int, float]:
    """Decode tokens/s of ``llama-batched-bench`` (all sequences together), by number of sequences."""
    context = max(sequences) * (prompt + generate)
    command = [
        str(tools.batched_bench), "-m", str(model), "-t", str(threads), "-c", str(context),
        "-npp", str(prompt), "-ntg", str(generate), "-npl", ",".join(map(str, sequences)),
        "--output-format", "jsonl", "-fa", "on" if flash_attn else "off", "-ctk", cache_type, "-ctv", cache_type, *(["--no-repack"] if _without_extra_buffers() else []),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=tool_env(tools))
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
    rates = {}
    for line in (result.stdout + result.stderr).splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            rates[int(row["pl"])] = float(row["speed_tg"])
    return rates


def rss_mb(pid: int | str = "self") -> tuple[float, float]:
    """A process's resident memory now and at its peak (``VmRSS``, ``VmHWM``), in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024  # reported in kB
    return fields["VmRSS"], fields["VmHWM"]


class LlamaServer:
    """``llama-server`` on a free port of 127.0.0.1, for as long as the ``with`` block lasts."""

    def __init__(
        self,
        tools: LlamaTools,
        model: Path,
        threads: int,
        parallel: int,
        n_ctx: int,
        log: Path,
        flash_attn: bool = True,
        cache_type: str = "f16",
    ) -> None:
        self.command = [
            str(tools.server), "-m", str(model), "-t", str(threads), "-np", str(parallel),
            "-c", str(parallel * n_ctx), "--cont-batching", "--host", "127.0.0.1",
            "-fa", "on" if flash_attn else "off", "-ctk", cache_type, "-ctv", cache_type,
            *(["--no-repack"] if _without_extra_buffers() else []),
        ]  # fmt: skip
        self.log = log
        self.tools = tools
        self.process: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    def __enter__(self) -> LlamaServer:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [*self.command, "--port", str(port)], stdout=log, stderr=log, env=tool_env(self.tools)
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"llama-server exited with status {self.process.returncode}; see {self.log}"
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/health", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:  # refused while it starts, 503 while the model loads
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"llama-server did not answer /health within 120 s; see {self.log}")

    def rss_mb(self) -> tuple[float, float]:
        assert self.process is not None
        return rss_mb(self.process.pid)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tools-dir",
        type=Path,
        default=None,
        help="cache folder (default: ~/.cache/botkit-bench/llama.cpp-VERSION)",
    )
    args = parser.parse_args(argv)
    try:
        tools = ensure_tools(args.tools_dir)
    except ToolBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for name in TOOLS:
        print(tools.folder / "bin" / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
