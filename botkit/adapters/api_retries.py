"""Counting the chat platforms' API retries (botkit_platform_retries_total): slack_sdk's retry handlers, discord.py's HTTP trace.

Both libraries retry inside themselves; these are the hooks they offer to watch it. The
labels are bounded: the platform and the reason (``rate_limited``: HTTP 429,
``server_error``: 5xx, ``connection``: a connection error), never a channel or an endpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from botkit.metrics import Instrument, Metrics

# The 5xx statuses discord.py's HTTPClient.request retries; any other 5xx it raises at once.
DISCORD_RETRIED_5XX = frozenset({500, 502, 504, 524})
# The errnos of an OSError it retries (connection reset by peer, as macOS and Windows number it).
DISCORD_RETRIED_ERRNOS = frozenset({54, 10054})


def platform_retries(metrics: Metrics) -> Instrument:
    """The counter of retried platform API requests, labelled ``platform`` and ``reason``."""
    return metrics.counter(
        "botkit_platform_retries_total",
        "Requests to a chat platform's API tried again, by reason (rate_limited, server_error, connection).",
        ("platform", "reason"),
    )


def slack_retry_handlers(retries: Instrument, rate_limit_retries: int) -> list[Any]:
    """slack_sdk's connection-error and rate-limit retry handlers, each counting the retries it makes."""
    from slack_sdk.http_retry.builtin_async_handlers import (
        AsyncConnectionErrorRetryHandler,
        AsyncRateLimitErrorRetryHandler,
    )

    connection = retries.labels(platform="slack", reason="connection")
    rate_limited = retries.labels(platform="slack", reason="rate_limited")

    # The client calls prepare_for_next_attempt_async once a retry, on the first handler
    # whose can_retry_async agreed, and then sends the request again.
    class CountedConnectionRetries(AsyncConnectionErrorRetryHandler):
        async def prepare_for_next_attempt_async(self, **kwargs: Any) -> None:
            connection.inc()
            await super().prepare_for_next_attempt_async(**kwargs)

    class CountedRateLimitRetries(AsyncRateLimitErrorRetryHandler):
        async def prepare_for_next_attempt_async(self, **kwargs: Any) -> None:
            rate_limited.inc()
            await super().prepare_for_next_attempt_async(**kwargs)

    return [
        CountedConnectionRetries(max_retry_count=2),
        CountedRateLimitRetries(max_retry_count=rate_limit_retries),
    ]


def discord_http_trace(retries: Instrument, api_url: str) -> Any:
    """An ``aiohttp.TraceConfig`` for ``discord.Client(http_trace=...)`` that counts what discord.py retries.

    discord.py retries, up to five tries, a 429 that came through Discord's proxy (a ``Via``
    header and a JSON body: else it is Cloudflare's ban and raises), the 5xx statuses of
    ``DISCORD_RETRIED_5XX`` and a connection reset. Only requests to ``api_url`` count: the
    gateway's handshake and CDN downloads share the session but are not retried. A fifth
    failure in a row is counted too, though discord.py gives up after it.
    """
    import aiohttp

    rate_limited = retries.labels(platform="discord", reason="rate_limited")
    server_error = retries.labels(platform="discord", reason="server_error")
    connection = retries.labels(platform="discord", reason="connection")
    api = api_url.rstrip("/")

    async def on_request_end(session: Any, context: Any, params: aiohttp.TraceRequestEndParams) -> None:
        if not str(params.url).startswith(api):
            return
        response = params.response
        if response.status == 429:
            if "Via" in response.headers and response.headers.get("content-type") == "application/json":
                rate_limited.inc()
        elif response.status in DISCORD_RETRIED_5XX:
            server_error.inc()

    async def on_request_exception(
        session: Any, context: Any, params: aiohttp.TraceRequestExceptionParams
    ) -> None:
        error = params.exception
        if str(params.url).startswith(api) and isinstance(error, OSError):
            if error.errno in DISCORD_RETRIED_ERRNOS:
                connection.inc()

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_request_end)
    trace.on_request_exception.append(on_request_exception)
    return trace
