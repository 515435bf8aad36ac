"""The privacy page (admins): a user's stored data as ``/mydata`` tells it, their opt-out, and forgetting them.

For operators handling a user's data request. The page calls what ``botkit privacy
show|forget|optout|optin`` calls (``botkit.storage.privacy``): looking a user up by
platform and id or display name, their counts (their messages' text only when asked
for), the opt-out switch of ``/optout``, and forgetting them as ``/forgetme`` does,
after a confirmation page that names the user and what goes. Inside ``botkit run``
the bot forgets them itself (its caches too); beside it, ``botkit.ops.forget_user_beside``
asks the running bot, as the CLI does. Every look-up and change goes to the audit log.
"""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from botkit import BotkitError, UnknownUser
from botkit.ops import forget_user_beside
from botkit.storage import (
    PUT_OFF,
    StoredUser,
    UserRows,
    count_user_rows,
    find_user,
    forget_user,
    opt_in,
    opt_out,
    user_data,
    user_platforms,
)

from .app import Console, form_of

PAGE_MESSAGES = 100  # the newest messages shown when their text is asked for
DONE = {  # what the page says after a switch: fixed texts, so that a link cannot make it say anything else
    "optout": "Opted out: their messages are never exported for training.",
    "optin": "Opted back in: their messages may be exported for training.",
    "optout-already": "They had already opted out: nothing changed.",
    "optin-already": "They had not opted out: nothing changed.",
}


def add_privacy_pages(console: Console) -> None:
    async def forget_it(user: StoredUser) -> tuple[UserRows, str]:
        if console.live:  # this process is the bot: its plugins let go of the user themselves
            deleted = await forget_user(console.bot, user.platform, user.platform_user_id)
            if deleted is None:
                raise BotkitError(f"{PUT_OFF}: nothing was deleted; try again later")
            return deleted, "the running bot"
        return await forget_user_beside(console.bot, user.platform, user.platform_user_id)  # type: ignore[arg-type]

    async def lookup(platform: str, who: str) -> tuple[StoredUser | None, str | None]:
        try:
            return await find_user(console.db, platform, who), None
        except UnknownUser as error:
            return None, str(error)

    async def show(request: Request) -> Response:
        asked = {name: request.query_params.get(name, "").strip() for name in ("platform", "user")}
        with_text = request.query_params.get("text") == "1"
        user, problem = None, None
        data = rows = None
        if any(asked.values()):
            user, problem = await lookup(asked["platform"], asked["user"])
        if user is not None:
            data = await user_data(
                console.db, user.platform, user.platform_user_id, PAGE_MESSAGES if with_text else 0
            )
            rows = await count_user_rows(console.db, user.platform, user.platform_user_id)
            await console.act(request, "privacy.show-text" if with_text else "privacy.show", user.key)
        return console.render(
            request, "privacy.html", status=400 if problem else 200, asked=asked, with_text=with_text,
            platforms=await user_platforms(console.db), user=user, data=data, rows=rows, problem=problem,
            done=DONE.get(request.query_params.get("done", "")),
        )  # fmt: skip

    async def confirm(request: Request) -> Response:
        user, problem = await lookup(
            request.query_params.get("platform", ""), request.query_params.get("user", "")
        )
        if user is None:
            return console.render(request, "refused.html", status=404, reason=problem)
        rows = await count_user_rows(console.db, user.platform, user.platform_user_id)
        return console.render(request, "privacy_forget.html", user=user, rows=rows, live=console.live)

    async def forget(request: Request) -> Response:
        form = form_of(request)
        user, problem = await lookup(str(form.get("platform", "")), str(form.get("user", "")))
        if user is None:
            return console.render(request, "refused.html", status=404, reason=problem)
        if form.get("confirm") != user.key:  # only the confirmation page's button says it
            query = urlencode({"platform": user.platform, "user": user.platform_user_id})
            return RedirectResponse(f"/privacy/forget?{query}", status_code=303)
        try:
            deleted, where = await forget_it(user)
        except BotkitError as error:
            return console.render(request, "refused.html", status=503, reason=str(error))
        await console.act(request, "privacy.forget", user.key)
        return console.render(request, "privacy_forgotten.html", user=user, deleted=deleted, where=where)

    async def switch(request: Request) -> Response:
        form = form_of(request)
        user, problem = await lookup(str(form.get("platform", "")), str(form.get("user", "")))
        if user is None:
            return console.render(request, "refused.html", status=404, reason=problem)
        wanted = str(form.get("switch", ""))
        if wanted == "optout":
            changed = await opt_out(console.db, user.platform, user.platform_user_id, via="console")
        elif wanted == "optin":
            changed = await opt_in(console.db, user.platform, user.platform_user_id)
        else:
            return console.render(
                request, "refused.html", status=400, reason=f"switch {wanted!r}: optout or optin"
            )
        if changed:
            await console.act(request, f"privacy.{wanted}", user.key)
        done = wanted if changed else f"{wanted}-already"
        query = urlencode({"platform": user.platform, "user": user.platform_user_id, "done": done})
        return RedirectResponse(f"/privacy?{query}", status_code=303)

    console.page("/privacy", show, "admin")
    console.page("/privacy/forget", confirm, "admin")
    console.page("/privacy/forget", forget, "admin", methods=("POST",))
    console.page("/privacy/optout", switch, "admin", methods=("POST",))
