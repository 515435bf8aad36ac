"""Real database servers for the tests: a throwaway PostgreSQL cluster on 127.0.0.1.

Nothing is skipped when a server is missing: the fixture fails and says how to
install it (scripts/test installs the Debian packages itself).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(ready: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Probe a server starting in another process until ``ready()`` is true; ``RuntimeError`` naming
    ``what`` after ``timeout`` seconds. Synchronous: fixtures and benchmarks start servers outside a loop."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {timeout:g} s")
        time.sleep(0.1)  # between probes of another process; nothing in this one to await


def _as_server_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the 'postgres' system user then."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@dataclass
class PostgresServer:
    """A PostgreSQL cluster in a temporary folder, listening on 127.0.0.1:port."""

    root: Path
    port: int
    user: str = "botkit"

    @staticmethod
    def binaries() -> Path:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise RuntimeError(
                "PostgreSQL is not installed: `apt-get install postgresql` (scripts/test does this)"
            )
        return Path(found[-1]).parent

    def start(self) -> None:
        bin_dir = self.binaries()
        data = self.root / "data"
        data.mkdir(parents=True)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in (self.root, data):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        subprocess.run(
            _as_server_user(
                [str(bin_dir / "initdb"), "-D", str(data), "-U", self.user, "-A", "trust", "-E", "UTF8"]
            ),
            check=True,
            capture_output=True,
        )
        self.resume()

    def stop(self) -> None:
        subprocess.run(
            _as_server_user(
                [str(self.binaries() / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "stop"]
            ),
            check=False,
            capture_output=True,
        )

    def resume(self) -> None:
        """Start the server (again, after ``stop``)."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            _as_server_user(
                [
                    str(self.binaries() / "pg_ctl"),
                    "-D",
                    str(self.root / "data"),
                    "-o",
                    options,
                    "-l",
                    str(self.root / "log"),
                    "-w",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [
                str(self.binaries() / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                database,
                "-Atc",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return result.stdout

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{name}"


def start_postgres(root: Path) -> PostgresServer:
    server = PostgresServer(root, free_port())
    server.start()

    def answers() -> bool:
        try:
            server.psql("SELECT 1")
        except subprocess.CalledProcessError:
            return False
        return True

    wait_until_ready(answers, "PostgreSQL")
    return server


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class RedisServer:
    """A redis-server on 127.0.0.1:port with no persistence."""

    root: Path
    port: int
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: `apt-get install redis-server` (scripts/test does this)"
            )
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until_ready(self._pongs, "redis-server")

    def _pongs(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)


def start_redis(root: Path) -> RedisServer:
    server = RedisServer(root, free_port())
    server.start()
    return server
