"""A backend that streams from any server speaking the OpenAI HTTP API (vLLM, TGI, llama.cpp servers).

It posts to ``{base_url}/chat/completions`` (the server applies the model's chat
template) or ``{base_url}/completions`` (botkit renders the prompt) with
``stream: true`` and yields the text of each server-sent event. Connection
errors, timeouts and 5xx answers before the first token are retried
``[backend] retries`` times after a randomised wait (``backoff_delay``); a 429 is
waited out for its ``Retry-After``. The API key comes only from the environment
(``BOTKIT_BACKEND__API_KEY``) and appears in no log line or error text.

Token counts are the server's own: each request asks for them with
``stream_options: {"include_usage": true}`` and the last event's ``usage`` becomes
the reply's prompt and completion tokens. A server that sends no usage leaves
botkit's estimate (one token per streamed event, four characters a token for the
prompt); one that refuses the option with HTTP 400 or 422 is asked again without
it, and never again with it while the backend runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import httpx2
from pydantic import Field, SecretStr, model_validator

from botkit import hookimpl
from botkit.backend import Backend, BackendSettings
from botkit.errors import BotkitError, ModelLoadError
from botkit.prompts import ALPACA_STOP, chat_messages, render_alpaca, render_chat
from botkit.settings import env_name, mask_urls
from botkit.types import Chunk, Prompt, SamplingParams

log = logging.getLogger("botkit.backends.openai_http")

# Tokens a chat message costs beyond its text (role markers, separators), for the estimate.
MESSAGE_OVERHEAD_TOKENS = 4
# How often a wait for the server's next line looks at the cancel flag.
CANCEL_POLL_SECONDS = 0.05
# Asks the server to end the stream with the request's token usage (OpenAI, vLLM, llama.cpp).
USAGE_OPTION = {"include_usage": True}
# What a server that does not know ``stream_options`` answers: 400 (OpenAI-style), 422 (FastAPI).
REFUSED_OPTION_STATUSES = frozenset({400, 422})


class OpenAISettings(BackendSettings):
    type: str = "openai"
    base_url: str = Field(
        "http://127.0.0.1:8000/v1", description="the server's API root, up to and including /v1"
    )
    model: str = Field("default", min_length=1, description="model name sent with every request")
    api_key: SecretStr | None = Field(
        None, description="sent as 'Authorization: Bearer'; environment only: BOTKIT_BACKEND__API_KEY"
    )
    endpoint: Literal["chat", "completions"] = Field(
        "chat",
        description="'chat': /chat/completions, the server's chat template; "
        "'completions': /completions with a prompt botkit renders",
    )
    chat_template: str | None = Field(
        None, description="Jinja2 chat template for endpoint 'completions' with prompt_format 'chat'"
    )
    context_window: int = Field(4096, ge=16, description="tokens the server's model takes")
    concurrency: int = Field(4, ge=1, description="requests in flight at once (the server batches them)")
    connect_timeout: float = Field(5.0, gt=0, description="seconds to connect (and to answer at start)")
    read_timeout: float = Field(60.0, gt=0, description="seconds to wait for the first or the next token")
    retries: int = Field(2, ge=0, description="retries after a connection error, timeout, 5xx or 429")
    retry_backoff: float = Field(
        1.0,
        ge=0,
        description="most seconds before the first retry (a random wait up to it), doubled each time",
    )
    max_retry_after: float = Field(30.0, ge=0, description="longest 429 Retry-After that is waited out")

    @model_validator(mode="after")
    def _endpoint_fits_the_prompt_format(self) -> OpenAISettings:
        if self.endpoint == "chat" and self.prompt_format == "alpaca":
            raise ValueError(
                "prompt_format 'alpaca' renders the prompt in botkit: set endpoint = 'completions' "
                "(endpoint 'chat' always uses the server's chat template)"
            )
        if self.endpoint == "completions" and self.prompt_format == "chat" and not self.chat_template:
            raise ValueError(
                "endpoint 'completions' sends text botkit renders: set prompt_format = 'alpaca' "
                "or give chat_template (or use endpoint 'chat' for the server's own template)"
            )
        return self


class OpenAIServerError(BotkitError):
    """The server failed a request (after the configured retries) or sent a broken stream."""


class _Retryable(Exception):
    """One failed attempt that may be tried again after ``wait`` seconds (None: the backoff).

    ``kind``: ``rate_limited`` (429) or ``server_error`` (5xx), as ``Backend.retried`` counts it.
    """

    def __init__(self, reason: str, kind: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.wait = wait


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header (seconds or an HTTP date) as seconds from now."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass  # not a number of seconds: an HTTP date, tried next
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def backoff_delay(attempt: int, base: float, draw: random.Random) -> float:
    """Seconds to wait before retrying after failed attempt ``attempt`` (0 for the first).

    "Full jitter": a uniform draw from ``[0, base * 2**attempt]``. Replicas that
    failed together (a server restart) do not all come back at the same instant,
    and the mean wait is half the un-jittered one. A server's ``Retry-After``
    is used as given instead of this.
    """
    return draw.uniform(0.0, base * 2**attempt)


def usage_counts(usage: object) -> tuple[int | None, int | None]:
    """``(prompt_tokens, completion_tokens)`` from an event's ``usage``; None for what it lacks."""
    if not isinstance(usage, dict):
        return None, None

    def count(key: str) -> int | None:
        value = usage.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

    return count("prompt_tokens"), count("completion_tokens")


async def next_line(lines: AsyncIterator[str], cancel: threading.Event) -> str | None:
    """The next line of a stream, or None at its end or once ``cancel`` is set.

    ``cancel`` is a thread-safe flag, not an awaitable, so it is polled: a server
    that keeps a request queued before its first token can still be stopped.
    """
    pending = asyncio.ensure_future(anext(lines, None))
    try:
        while not pending.done():
            await asyncio.wait({pending}, timeout=CANCEL_POLL_SECONDS)
            if cancel.is_set() and not pending.done():
                return None
        return pending.result()
    finally:
        if not pending.done():
            pending.cancel()
            await asyncio.wait({pending})


class OpenAIBackend(Backend):
    """Streams replies from an OpenAI-compatible server over HTTP; the server holds the model."""

    settings: OpenAISettings

    def __init__(self, settings: OpenAISettings) -> None:
        super().__init__(settings)
        self.concurrency = settings.concurrency
        self.base_url = settings.base_url.rstrip("/")
        self._client: httpx2.AsyncClient | None = None
        # The random source of the retry backoff; a test gives a seeded one.
        self.jitter = random.Random()
        # Cleared once the server refuses ``stream_options``: not asked again while this backend runs.
        self.asks_for_usage = True

    @property
    def model_name(self) -> str:
        return self.settings.model

    @property
    def context_window(self) -> int:
        return self.settings.context_window

    @property
    def _shown_url(self) -> str:
        return mask_urls(self.base_url)

    def _headers(self) -> dict[str, str]:
        key = self.settings.api_key
        return {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}

    async def start(self) -> None:
        settings = self.settings
        timeout = httpx2.Timeout(settings.read_timeout, connect=settings.connect_timeout)
        self._client = httpx2.AsyncClient(base_url=self.base_url, headers=self._headers(), timeout=timeout)
        where = f"[{self.table}] base_url: {self._shown_url}/models"
        try:
            response = await self._client.get("/models", timeout=settings.connect_timeout)
        except httpx2.HTTPError as error:
            await self.close()
            raise ModelLoadError(
                f"{where} is not reachable ({type(error).__name__}: {mask_urls(str(error)) or 'no answer'}, "
                f"[{self.table}] connect_timeout {settings.connect_timeout:g} s): "
                f"start the server or fix [{self.table}] base_url"
            ) from None
        if response.status_code in (401, 403):
            await self.close()
            raise ModelLoadError(
                f"{where} refused access (HTTP {response.status_code}): "
                f"set the server's API key in {env_name((*self.table.split('.'), 'api_key'))}"
            )
        if response.status_code >= 400:
            await self.close()
            raise ModelLoadError(
                f"{where} answered HTTP {response.status_code}: is [{self.table}] base_url the API root "
                "(ending in /v1)?"
            )
        try:
            served = [entry.get("id") for entry in response.json().get("data", [])]
        except (ValueError, AttributeError):
            served = []
        if served and settings.model not in served:
            # Many servers answer under any name; those that do not say so on the first request.
            log.warning(
                "the server at %s lists %s, not [%s] model %r",
                self._shown_url,
                served,
                self.table,
                settings.model,
            )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def render(self, prompt: Prompt) -> str:
        """The text sent to /completions."""
        if self.settings.prompt_format == "alpaca":
            return render_alpaca(prompt, self.settings.alpaca_variant)
        assert self.settings.chat_template is not None  # checked by the settings
        return render_chat(prompt, self.settings.chat_template)

    # The server's tokenizer is not part of the OpenAI API, so counts made before a request
    # (fitting the context) are an honest estimate: about four characters a token, as for
    # English text with a BPE tokenizer. The reply's own counts come from the server's usage.
    async def count_text(self, text: str) -> int:
        return len(text) // 4 + 1

    async def count_tokens(self, prompt: Prompt) -> int:
        if self.settings.endpoint == "completions":
            return await self.count_text(self.render(prompt))
        messages = chat_messages(prompt)
        text = sum(len(message["content"]) for message in messages)
        return text // 4 + MESSAGE_OVERHEAD_TOKENS * len(messages) + 1

    def _request(self, prompt: Prompt, params: SamplingParams) -> tuple[str, dict[str, Any]]:
        stop = list(params.stop)
        if self.settings.prompt_format == "alpaca":
            stop.extend(ALPACA_STOP)
        body: dict[str, Any] = {
            "model": self.settings.model,
            "stream": True,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if stop:
            body["stop"] = stop
        if self.settings.endpoint == "chat":
            body["messages"] = chat_messages(prompt)
            return "/chat/completions", body
        body["prompt"] = self.render(prompt)
        return "/completions", body

    async def stream(
        self, prompt: Prompt, params: SamplingParams, cancel: threading.Event
    ) -> AsyncIterator[Chunk]:
        if self._client is None:
            raise OpenAIServerError("the openai backend is not started")
        path, body = self._request(prompt, params)
        url = f"{self._shown_url}{path}"
        retries = self.settings.retries
        ask_usage = self.asks_for_usage
        refused: int | None = None  # the status with which the server refused stream_options
        attempt = 0
        while True:
            started = False
            sent = {**body, "stream_options": USAGE_OPTION} if ask_usage else body
            try:
                async with self._client.stream("POST", path, json=sent) as response:
                    if ask_usage and response.status_code in REFUSED_OPTION_STATUSES:
                        # The option or the request itself: asked once more without the option
                        # (not counted as a retry), the answer tells which.
                        refused, ask_usage = response.status_code, False
                        continue
                    await self._check_status(response, url)
                    if refused is not None:
                        self._stop_asking_for_usage(refused)
                    async with aclosing(self._events(response, cancel, url)) as events:
                        async for chunk in events:
                            started = True
                            yield chunk
                return
            except _Retryable as failure:
                reason, kind, wait = failure.reason, failure.kind, failure.wait
            except httpx2.TransportError as error:  # connect errors, timeouts, dropped connections
                reason, wait = f"{type(error).__name__} from {url}", None
                kind = "timeout" if isinstance(error, httpx2.TimeoutException) else "connection"
                if started:  # text already reached the user: a retry would repeat it
                    raise OpenAIServerError(f"{reason} in the middle of the reply") from None
            if attempt == retries:
                raise OpenAIServerError(f"{reason} (after {retries + 1} attempts)")
            if wait is None:
                wait = backoff_delay(attempt, self.settings.retry_backoff, self.jitter)
            log.warning("%s; retrying in %.1f s (%d of %d)", reason, wait, attempt + 1, retries)
            self.retried[kind] += 1
            if not await self.pause(wait, cancel):
                return
            attempt += 1

    async def pause(self, seconds: float, cancel: threading.Event) -> bool:
        """Wait ``seconds`` before a retry; False, at once, when ``cancel`` is set meanwhile."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if cancel.is_set():
                return False
            await asyncio.sleep(min(CANCEL_POLL_SECONDS, left))
        return not cancel.is_set()

    def _stop_asking_for_usage(self, status: int) -> None:
        """The server refused ``stream_options`` and took the request without it: stop asking."""
        if self.asks_for_usage:  # several requests may learn it at once; it is said once
            self.asks_for_usage = False
            log.warning(
                "the server at %s refused stream_options (HTTP %d) and answers without it: "
                "token counts of its replies are botkit's estimates from now on",
                self._shown_url,
                status,
            )

    async def _check_status(self, response: httpx2.Response, url: str) -> None:
        status = response.status_code
        if status < 400:
            return
        detail = await self._error_detail(response)
        if status == 429:
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            if wait is not None and wait > self.settings.max_retry_after:
                raise OpenAIServerError(
                    f"{url}: rate limited (HTTP 429) for {wait:.0f} s, longer than "
                    f"[{self.table}] max_retry_after ({self.settings.max_retry_after:g} s)"
                )
            raise _Retryable(f"{url}: rate limited (HTTP 429)", "rate_limited", wait)
        if status >= 500:
            raise _Retryable(f"{url}: HTTP {status}{detail}", "server_error")
        # 4xx: the request itself is wrong (model name, too long a prompt): retrying cannot help.
        raise OpenAIServerError(f"{url}: HTTP {status}{detail}")

    @staticmethod
    async def _error_detail(response: httpx2.Response) -> str:
        """The server's own short error message, if it gave one."""
        try:
            raw = (await response.aread())[:2000]
            message = json.loads(raw).get("error", {})
            message = message.get("message", "") if isinstance(message, dict) else str(message)
        except (ValueError, AttributeError, httpx2.HTTPError):
            return ""
        return f": {message[:300]}" if message else ""

    async def _events(
        self, response: httpx2.Response, cancel: threading.Event, url: str
    ) -> AsyncIterator[Chunk]:
        """The text of each ``data:`` event until ``[DONE]``; stops early when ``cancel`` is set.

        Each text counts as one token, as servers send about one token an event. When
        the server reports usage (the last event, with no choices, once asked for it),
        a closing chunk without text brings the reply's count to the server's and
        carries its count of the prompt; it also says when the finish reason was
        ``length`` (``Chunk.truncated``).
        """
        chat = self.settings.endpoint == "chat"
        lines = response.aiter_lines()
        finished = truncated = False
        counted = 0
        prompt_tokens: int | None = None
        completion_tokens: int | None = None
        while True:
            line = await next_line(lines, cancel)
            if cancel.is_set():
                return  # leaving the ``async with`` closes the response: the server stops
            if line is None:
                if finished:
                    break
                # No finish reason and no [DONE]: the server cut the reply short (llama.cpp's
                # server does so when another request interrupts it), so it is not complete.
                raise OpenAIServerError(f"{url}: the stream ended before the reply was complete")
            if not line.startswith("data:"):
                continue  # blank separators, comments, event names
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                event = json.loads(data)
            except ValueError:
                raise OpenAIServerError(f"{url}: the stream sent an event that is not JSON") from None
            if event.get("error"):
                error = event["error"]
                message = error.get("message", "") if isinstance(error, dict) else str(error)
                raise OpenAIServerError(f"{url}: the server failed mid-reply: {message[:300]}")
            # Usage is null on every event but the last; a server may repeat it as it grows.
            prompt, completion = usage_counts(event.get("usage"))
            prompt_tokens = prompt if prompt is not None else prompt_tokens
            completion_tokens = completion if completion is not None else completion_tokens
            for choice in event.get("choices") or []:
                finished = finished or bool(choice.get("finish_reason"))
                # "length": the server stopped at max_tokens (or its context), not at the answer's end.
                truncated = truncated or choice.get("finish_reason") == "length"
                piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                if piece:  # the closing event carries only the finish reason
                    counted += 1
                    yield Chunk(piece)
        if prompt_tokens is not None or completion_tokens is not None or truncated:
            correction = 0 if completion_tokens is None else completion_tokens - counted
            yield Chunk("", tokens=correction, prompt_tokens=prompt_tokens, truncated=truncated)


@hookimpl
def botkit_register_backends(register):
    register("openai", OpenAIBackend, OpenAISettings)
