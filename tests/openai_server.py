"""OpenAI-compatible servers for the tests: llama-cpp-python's real server, and a scripted stub.

The stub answers each POST with the next scripted answer (an HTTP error with
headers, or a stream of text deltas) and records every request's path, headers
and body, for the cases a real engine cannot be made to show (429, 5xx, keys).
It streams as vLLM, llama.cpp's server and OpenAI do: a chunk per delta (one
piece of the scripted answer a token, cut at the request's ``max_tokens``), a
chunk with the finish reason (``length`` when cut, else ``stop``), then, only when the request asked with
``stream_options: {"include_usage": true}``, ``"usage": null`` on every chunk and
a last chunk with empty ``choices`` and the usage, then ``[DONE]``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
from servers import free_port, wait_until_ready

SERVER_SCRIPT = Path(__file__).with_name("llama_cpp_server.py")  # llama_cpp.server, loading as botkit does


@dataclass
class LlamaCppServer:
    """``python -m llama_cpp.server`` serving one GGUF model on 127.0.0.1:port."""

    model: Path
    log: Path
    alias: str = "smollm2"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 60) -> None:
        command = [sys.executable, str(SERVER_SCRIPT), "--model", str(self.model)]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048"]
        # Queue concurrent requests instead of cutting the running one short (its default).
        command += ["--model_alias", self.alias, "--interrupt_requests", "false"]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_ready(self._answers, "llama_cpp.server (its /v1/models)", timeout)
        except RuntimeError:
            self.stop()
            raise

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited: {self.log.read_text(errors='replace')[-2000:]}")
        try:
            return httpx2.get(f"{self.base_url}/models", timeout=5).status_code == 200
        except httpx2.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Failure:
    """One scripted HTTP error answer."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    message: str = "scripted failure"


# The longest a held first token waits for the test, so that a failed test leaves no thread behind.
HOLD_LIMIT = 120.0

DROP = ("<drop the connection>",)
# As the last piece of a scripted reply: end the stream there, with no finish reason and
# no [DONE], as llama.cpp's server does to a request another one interrupts.
CUT = "<end the stream early>"


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float


def prompt_words(body: dict[str, Any]) -> int:
    """The stub's own "tokenizer": words of the prompt, and two for each chat message's markers."""
    if "messages" in body:
        return sum(len(m["content"].split()) + 2 for m in body["messages"])
    return len(str(body.get("prompt", "")).split())


class StubServer:
    """A tiny threaded HTTP server speaking just enough of the OpenAI streaming API."""

    def __init__(self, default_reply: tuple[str, ...] = ("Hello", " from", " the", " stub.")) -> None:
        self.script: deque[Failure | tuple[str, ...]] = deque()
        self.default_reply = default_reply
        self.requests: list[Recorded] = []
        self.always: Failure | tuple[str, ...] | None = None
        # Cleared, a streamed answer waits after its headers until the test sets it again;
        # ``holding`` tells the test that a request is waiting there.
        self.first_token = threading.Event()
        self.first_token.set()
        self.holding = threading.Event()
        # An older server that ignores stream_options and never reports usage: False.
        self.reports_usage = True
        # The (prompt_tokens, completion_tokens) it reports; None: counted (words, deltas).
        self.usage: tuple[int, int] | None = None
        # A server that does not know stream_options and refuses a request that has it.
        self.refuses_stream_options = False
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.endswith("/models"):
                    self._json(200, {"object": "list", "data": [{"id": "smollm2", "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                stub.requests.append(Recorded(self.path, dict(self.headers), body, time.monotonic()))
                if stub.refuses_stream_options and "stream_options" in body:
                    # As a server with a strict request schema answers an unknown field.
                    message = "Unrecognized request argument supplied: stream_options"
                    self._json(400, {"error": {"message": message, "type": "invalid_request_error"}})
                    return
                answer = stub.always or (stub.script.popleft() if stub.script else stub.default_reply)
                if answer is DROP:  # hang up without answering, as a crashing server does
                    self.close_connection = True
                    return
                if isinstance(answer, Failure):
                    self._json(answer.status, {"error": {"message": answer.message}}, answer.headers)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                chat = self.path.endswith("/chat/completions")
                with_usage = stub.reports_usage and bool(
                    (body.get("stream_options") or {}).get("include_usage")
                )
                if not stub.first_token.is_set():
                    stub.holding.set()
                    stub.first_token.wait(HOLD_LIMIT)
                # One piece a token: a reply longer than max_tokens is cut there, finish reason "length".
                limit = body.get("max_tokens")
                sent = answer if limit is None else answer[:limit]
                for piece in sent:
                    if piece == CUT:
                        self.close_connection = True
                        return
                    self._event(chat, {"content": piece} if chat else {"text": piece}, with_usage)
                self._event(chat, {"finish_reason": "length" if len(sent) < len(answer) else "stop"}, with_usage)
                if with_usage:
                    prompt, completion = stub.usage or (prompt_words(body), len(sent))
                    usage = {
                        "prompt_tokens": prompt,
                        "completion_tokens": completion,
                        "total_tokens": prompt + completion,
                    }
                    self._send({**self._envelope(chat), "choices": [], "usage": usage})
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

            def _event(self, chat: bool, part: dict[str, str], with_usage: bool) -> None:
                finish = part.pop("finish_reason", None)
                choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
                if chat:
                    choice["delta"] = part
                else:
                    choice["text"] = part.get("text", "")
                event = {**self._envelope(chat), "choices": [choice]}
                if with_usage:
                    event["usage"] = None
                self._send(event)

            @staticmethod
            def _envelope(chat: bool) -> dict[str, Any]:
                kind = "chat.completion.chunk" if chat else "text_completion"
                return {"id": "cmpl-stub", "object": kind, "created": 0, "model": "smollm2"}

            def _send(self, event: dict[str, Any]) -> None:
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.flush()

            def _json(self, status: int, data: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                raw = json.dumps(data).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> StubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.first_token.set()  # a held request finishes, so the server can shut down
        self.server.shutdown()
        self.server.server_close()
