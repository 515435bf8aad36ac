"""The review queue page: the candidates of ``botkit finetune review``, approved, rejected or corrected in place.

Every decision goes through ``botkit.finetune.review`` (``decide``, ``correct``), the
functions the CLI calls, and is written to the audit log; the filters are
``review list``'s. The export's counts come from ``run_export`` with ``dry_run``, as
``botkit export --dry-run`` prints them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import get_args
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from botkit import ExportError
from botkit.finetune.export import ExportOptions, NothingToExport, SystemPrompts, run_export
from botkit.finetune.review import CandidateFilter, Presence, State, Votes, correct, decide, list_candidates

from .app import Console, form_of

SHOWN = 50
# Each filter of the page: its choices, the first being the default.
CHOICES: dict[str, tuple[str, ...]] = {
    "state": get_args(State),
    "votes": get_args(Votes),
    "moderation": get_args(Presence),
    "truncated": get_args(Presence),
}


def chosen(values: Mapping[str, object]) -> tuple[dict[str, str], str | None]:
    """The filters in ``values`` (a query or a form), each its default when absent; a problem when one is unknown."""
    picked, problem = {}, None
    for name, choices in CHOICES.items():
        value = str(values.get(name) or choices[0])
        if value not in choices:
            problem = f"{name} {value!r}: choose one of {', '.join(choices)}"
            value = choices[0]
        picked[name] = value
    return picked, problem


def add_review_pages(console: Console) -> None:
    async def queue(request: Request, status: int = 200, problem: str | None = None) -> Response:
        picked, unknown = chosen(request.query_params)
        if unknown:
            status, problem = 400, unknown
        only = CandidateFilter(picked["votes"], picked["moderation"], picked["truncated"])  # type: ignore[arg-type]
        candidates = await list_candidates(console.db, picked["state"], SHOWN, only)  # type: ignore[arg-type]
        return console.render(
            request, "review.html", status=status, picked=picked, choices=CHOICES, candidates=candidates,
            problem=problem, done=request.query_params.get("done"), shown=SHOWN,
        )

    def back(request: Request, done: str) -> Response:
        picked, _ = chosen(form_of(request))
        return RedirectResponse(f"/review?{urlencode({**picked, 'done': done})}", status_code=303)

    async def approve(request: Request) -> Response:
        return await _decide(request, "approved")

    async def reject(request: Request) -> Response:
        return await _decide(request, "rejected")

    async def _decide(request: Request, decision: str) -> Response:
        reply_id = request.path_params["reply_id"]
        try:
            await decide(console.db, reply_id, decision)  # type: ignore[arg-type]
        except ExportError as error:
            return await queue(request, 400, str(error))
        await console.act(request, "review.approve" if decision == "approved" else "review.reject", f"#{reply_id}")
        return back(request, f"#{reply_id} {decision}")

    async def correction(request: Request) -> Response:
        reply_id = request.path_params["reply_id"]
        text = str(form_of(request).get("text", ""))
        try:
            await correct(console.db, reply_id, text)
        except ExportError as error:
            return await queue(request, 400, str(error))
        await console.act(request, "review.correct", f"#{reply_id}")
        return back(request, f"#{reply_id} corrected")

    async def export_counts(request: Request) -> Response:
        options = ExportOptions(dry_run=True)
        try:
            report = await run_export(console.db, options, SystemPrompts(console.bot.settings))
            empty = None
        except NothingToExport as nothing:
            report, empty = nothing.report, str(nothing)
        return console.render(request, "export_counts.html", lines=report.lines(), empty=empty)

    console.page("/review", queue, "reviewer")
    console.page("/review/export-counts", export_counts, "reviewer")
    console.page("/review/{reply_id:int}/approve", approve, "reviewer", methods=("POST",))
    console.page("/review/{reply_id:int}/reject", reject, "reviewer", methods=("POST",))
    console.page("/review/{reply_id:int}/correct", correction, "reviewer", methods=("POST",))
