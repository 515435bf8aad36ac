"""A Hugging Face Hub on 127.0.0.1 that answers as the real Hub does the requests of a model pull.

The requests are those ``huggingface_hub`` makes (and botkit.hub makes the same way):

- ``GET /api/models/{org}/{repo}[/revision/{rev}]``: the repository's commit, card data
  (licence) and files; with ``?blobs=true`` each file carries its size and LFS sha256, without
  it only its name, as on the Hub;
- ``HEAD /{org}/{repo}/resolve/{revision}/{file}``: as the Hub answers for an LFS file, a 302
  with ``X-Repo-Commit``, ``X-Linked-Etag`` (the sha256), ``X-Linked-Size`` and a ``Location``
  on another host (``localhost`` instead of ``127.0.0.1``: the CDN), which a client reports
  instead of following;
- ``GET /cdn/{sha256}``: the bytes, honouring ``Range: bytes=N-`` with a 206.

Errors carry the Hub's ``X-Error-Code`` and ``X-Error-Message`` (``RepoNotFound`` with a 401,
``EntryNotFound``, ``GatedRepo``: a 401 without a token, a 403 with one not granted access).
``plan`` scripts the file downloads one by one: ``"half"`` sends half the body and drops the
connection, ``"nothing"`` drops it before answering, ``"corrupt"`` sends other bytes of the
same length.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HubRepo:
    files: dict[str, bytes]
    licence: str = "apache-2.0"
    # A gated repository serves its files only to these tokens (its metadata to anyone).
    granted: set[str] | None = None

    def sha(self, name: str) -> str:
        return hashlib.sha256(self.files[name]).hexdigest()


@dataclass
class FakeHub:
    repos: dict[str, HubRepo]
    plan: list[str] = field(default_factory=list)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    port: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def downloads(self) -> list[dict[str, str]]:
        """The headers of every request for file bytes, in order."""
        return [headers for method, path, headers in self.requests if path.startswith("/cdn/")]

    def blob(self, sha: str) -> bytes | None:
        for repo in self.repos.values():
            for name, data in repo.files.items():
                if repo.sha(name) == sha:
                    return data
        return None


RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<file>.+)$")
API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/[^/]+)?$")


def make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def record(self) -> str:
            path = urlparse(self.path).path
            hub.requests.append((self.command, path, {k.lower(): v for k, v in self.headers.items()}))
            return path

        def answer(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            if "Content-Length" not in headers:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self.answer(
                status,
                {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"},
                body,
            )

        def do_HEAD(self) -> None:
            self.route()

        def do_GET(self) -> None:
            self.route()

        def route(self) -> None:
            path = self.record()
            if match := API.match(path):
                blobs = parse_qs(urlparse(self.path).query).get("blobs") == ["true"]
                return self.model_info(match["repo"], blobs)
            if match := RESOLVE.match(path):
                return self.resolve(match["repo"], match["file"])
            if path.startswith("/cdn/"):
                return self.blob(path.removeprefix("/cdn/"))
            self.error(404, "RepoNotFound", "not found")

        def model_info(self, name: str, blobs: bool) -> None:
            repo = hub.repos.get(name)
            if repo is None:
                return self.error(401, "RepoNotFound", "Repository not found")
            siblings = [
                {
                    "rfilename": file,
                    "size": len(data),
                    "blobId": hashlib.sha1(data).hexdigest(),
                    "lfs": {"size": len(data), "sha256": repo.sha(file), "pointerSize": 134},
                }
                if blobs
                else {"rfilename": file}
                for file, data in repo.files.items()
            ]
            info = {"id": name, "sha": COMMIT, "cardData": {"license": repo.licence}, "siblings": siblings}
            if repo.granted is not None:
                info["gated"] = "manual"
            body = json.dumps(info).encode()
            self.answer(200, {"Content-Type": "application/json"}, body)

        def resolve(self, name: str, file: str) -> None:
            repo = hub.repos.get(name)
            if repo is None:
                return self.error(401, "RepoNotFound", "Repository not found")
            if file not in repo.files:
                return self.error(404, "EntryNotFound", "Entry not found")
            if repo.granted is not None:
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if not token:
                    return self.error(401, "GatedRepo", f"Access to model {name} is restricted.")
                if token not in repo.granted:
                    return self.error(403, "GatedRepo", f"Access to model {name} is restricted.")
            sha = repo.sha(file)
            self.answer(
                302,
                {
                    "Location": f"http://localhost:{hub.port}/cdn/{sha}",
                    "X-Repo-Commit": COMMIT,
                    "X-Linked-Etag": f'"{sha}"',
                    "X-Linked-Size": str(len(repo.files[file])),
                    "ETag": '"' + hashlib.sha1(repo.files[file]).hexdigest() + '"',
                },
            )

        def blob(self, sha: str) -> None:
            data = hub.blob(sha)
            if data is None:
                return self.error(404, "EntryNotFound", "no such blob")
            action = hub.plan.pop(0) if hub.plan else "serve"
            if action == "nothing":
                self.close_now()
                return
            if action == "corrupt":
                data = bytes(b ^ 0xFF for b in data)
            start = 0
            if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
                start = int(match[1])
            status = 206 if start else 200
            headers = {"Content-Length": str(len(data) - start), "Accept-Ranges": "bytes"}
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            body = data[start:]
            if action == "half":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_now()
                return
            self.wfile.write(body)

        def close_now(self) -> None:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    return Handler


class HubServer:
    """``FakeHub`` served from a thread; a context manager."""

    def __init__(self, hub: FakeHub) -> None:
        self.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(hub))
        self.server.daemon_threads = True
        hub.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self.hub

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
