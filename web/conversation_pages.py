"""The conversations pages: search stored messages, and read one conversation as a thread."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from starlette.requests import Request
from starlette.responses import Response

from .app import Console
from .conversations import MessageSearch, read_thread, search_messages

FIELDS = ("platform", "channel", "user", "since", "until", "text")


def _day(value: str, name: str) -> datetime | None:
    if not value:
        return None
    try:
        day = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name} {value!r}: give a date as YYYY-MM-DD, e.g. 2026-11-01") from None
    return day if day.tzinfo else day.replace(tzinfo=UTC)


def add_conversation_pages(console: Console) -> None:
    async def search(request: Request) -> Response:
        asked = {name: request.query_params.get(name, "").strip() for name in FIELDS}
        problem = None
        found = []
        searched = any(asked.values())
        try:
            since, until = _day(asked["since"], "from"), _day(asked["until"], "to")
            if until is not None and len(asked["until"]) == len("YYYY-MM-DD"):
                until += timedelta(days=1)  # a day given as "to" is searched to its end
            if since and until and since >= until:
                raise ValueError("'to' must not be before 'from'")
        except ValueError as error:
            problem, searched = str(error), False
        if searched:
            found = await search_messages(
                console.db,
                MessageSearch(asked["platform"], asked["channel"], asked["user"], since, until, asked["text"]),
            )
        return console.render(
            request, "conversations.html", status=400 if problem else 200, asked=asked, found=found,
            searched=searched, problem=problem,
        )

    async def thread(request: Request) -> Response:
        found = await read_thread(console.db, request.path_params["conversation_id"])
        if found is None:
            return console.render(request, "refused.html", status=404, reason="there is no such conversation")
        return console.render(request, "thread.html", thread=found)

    console.page("/conversations", search, "reviewer")
    console.page("/conversations/{conversation_id:int}", thread, "reviewer")
