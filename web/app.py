"""The web console's ASGI app: every route behind a login and a role, CSRF on every form, security headers.

``create_app(bot, settings)`` builds the Starlette app. A page is added with
``Console.page(path, handler, role)``, which wraps the handler: no login ->
redirect to ``/login``; a reviewer on an admin page -> 403; a POST without the
session's CSRF token -> 403, before the handler runs. Only ``/login`` and
``/static`` are public. The pages themselves live in ``web/*_pages.py``.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from botkit import BotAPI

from . import audit
from .accounts import check_password, close_session, login_for, open_session
from .login_limit import LoginLimit, shared_storage
from .settings import WebSettings

HERE = Path(__file__).parent
SESSION_COOKIE = "botkit_session"
LOGIN_COOKIE = "botkit_login"  # the CSRF token of the login form, before there is a session
CSRF_FIELD = "csrf"
NAME_CHARS = 64  # the longest account name: longer input is cut before it is counted or logged
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
Handler = Callable[[Request], Awaitable[Response]]


class Console:
    """What every page needs: the bot (database, plugins), ``[web]``, the templates, the login limiter."""

    def __init__(self, bot: BotAPI, settings: WebSettings, live: bool) -> None:
        self.bot = bot
        self.live = live  # served by the running bot (`botkit run`), not by `botkit web` beside it
        self.db = bot.db
        self.settings = settings
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        self.login_limit = LoginLimit(settings.login_limit, shared_storage(bot))
        self.routes: list[BaseRoute] = []

    # -- pages ------------------------------------------------------------

    def page(self, path: str, handler: Handler, role: str, methods: tuple[str, ...] = ("GET",)) -> None:
        """Add ``handler`` at ``path`` for logins of ``role`` (admins may see every page)."""
        self.routes.append(Route(path, self._guarded(handler, role), methods=list(methods)))

    def _guarded(self, handler: Handler, role: str) -> Handler:
        async def guarded(request: Request) -> Response:
            token = request.cookies.get(self.session_cookie)
            login = await login_for(self.db, token) if token else None
            if login is None:
                wanted = request.url.path if request.method == "GET" else "/"
                return RedirectResponse(f"/login?next={quote(wanted)}", status_code=303)
            request.state.login = login
            if not login.may(role):
                return self.render(request, "refused.html", status=403, reason=f"this page is for {role}s")
            if request.method not in ("GET", "HEAD"):
                form = await request.form()
                if not secrets.compare_digest(str(form.get(CSRF_FIELD, "")), login.csrf_token):
                    return self.render(request, "refused.html", status=403, reason=STALE_FORM)
                request.state.form = form
            return await handler(request)

        guarded.__name__ = handler.__name__
        return guarded

    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        login = getattr(request.state, "login", None)
        html = self.templates.get_template(template).render(
            login=login, csrf=login.csrf_token if login else "", path=request.url.path, **context
        )
        return HTMLResponse(html, status_code=status)

    async def act(self, request: Request, action: str, target: str = "") -> None:
        """Write the action of the request's login to the audit log."""
        await audit.record(self.db, request.state.login.name, action, target)

    # -- cookies ----------------------------------------------------------

    @property
    def session_cookie(self) -> str:
        # "__Host-": browsers accept it only with Secure, Path=/ and no Domain, so no subdomain can set it.
        return f"__Host-{SESSION_COOKIE}" if self.settings.https else SESSION_COOKIE

    def set_cookie(self, response: Response, name: str, value: str, max_age: int | None = None) -> None:
        response.set_cookie(
            name, value, max_age=max_age, path="/", httponly=True, samesite="strict", secure=self.settings.https
        )


STALE_FORM = "the form was not sent from this console's page, or its page is from an earlier login: reload it"


def form_of(request: Request) -> FormData:
    """The form of a POST that passed the CSRF check."""
    return request.state.form  # type: ignore[no-any-return]


# -- login, logout, audit (the home page: overview_pages.py) ----------------------


def _next_path(value: str | None) -> str:
    """Where to go after logging in: a path of this console only (never //host or a full URL)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


def add_login_pages(console: Console) -> None:
    async def login_form(request: Request, status: int = 200, problem: str | None = None) -> Response:
        token = secrets.token_urlsafe(32)
        response = console.render(
            request, "login.html", status=status, login_csrf=token, problem=problem,
            next=_next_path(request.query_params.get("next")),
        )
        console.set_cookie(response, LOGIN_COOKIE, token, max_age=3600)
        return response

    async def show(request: Request) -> Response:
        return await login_form(request)

    async def log_in(request: Request) -> Response:
        form = await request.form()
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        if not cookie or not secrets.compare_digest(str(form.get(CSRF_FIELD, "")), cookie):
            return console.render(request, "refused.html", status=403, reason=STALE_FORM)
        name = str(form.get("name", "")).strip()[:NAME_CHARS]
        password = str(form.get("password", ""))
        client = request.client.host if request.client else "unknown"
        keys = (("name", name.lower()), ("client", client))
        for key in keys:
            wait = await console.login_limit.wait_s(key)
            if wait is not None:
                return await login_form(request, 429, f"too many failed logins: try again in {wait} s")
        account_id = await check_password(console.db, name, password)
        if account_id is None:
            for key in keys:
                await console.login_limit.failed(key)
            await audit.record(console.db, name or "-", "login.failed", client)
            return await login_form(request, 401, "wrong name or password")
        token = await open_session(console.db, account_id, console.settings.session_hours)
        await audit.record(console.db, name, "login", client)
        response = RedirectResponse(_next_path(str(form.get("next", ""))), status_code=303)
        console.set_cookie(response, console.session_cookie, token, max_age=console.settings.session_hours * 3600)
        response.delete_cookie(LOGIN_COOKIE, path="/")
        return response

    async def log_out(request: Request) -> Response:
        await close_session(console.db, request.cookies.get(console.session_cookie, ""))
        await console.act(request, "logout")
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(console.session_cookie, path="/", secure=console.settings.https, httponly=True)
        return response

    async def audit_log(request: Request) -> Response:
        return console.render(request, "audit.html", entries=await audit.recent(console.db))

    console.routes.append(Route("/login", show, methods=["GET"]))
    console.routes.append(Route("/login", log_in, methods=["POST"]))
    console.page("/logout", log_out, "reviewer", methods=("POST",))
    console.page("/audit", audit_log, "admin")


# -- headers ------------------------------------------------------------------


class SecurityHeaders:
    """Adds the Content-Security-Policy and friends to every response; HSTS when served over HTTPS."""

    def __init__(self, app: ASGIApp, https: bool) -> None:
        self.app = app
        self.headers = [
            (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"cache-control", b"no-store"),
        ]
        if https:
            self.headers.append((b"strict-transport-security", b"max-age=31536000"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *(header for header in self.headers if header[0] not in names),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(bot: BotAPI, settings: WebSettings, live: bool = False) -> Starlette:
    """The console of ``bot`` (its database connected and current) with ``[web]`` ``settings``.

    ``live``: ``bot`` is the running bot (``botkit run`` with ``[web] enabled``), so a plugin switch
    acts at once; otherwise it is a bot loaded by ``botkit web`` that never starts.
    """
    # Imported here: the page modules import Console from this one.
    from .conversation_pages import add_conversation_pages
    from .overview_pages import add_overview_pages
    from .plugin_pages import add_plugin_pages
    from .privacy_pages import add_privacy_pages
    from .review_pages import add_review_pages
    from .runs_pages import add_runs_pages

    console = Console(bot, settings, live)
    add_login_pages(console)
    add_review_pages(console)
    add_conversation_pages(console)
    add_plugin_pages(console)
    add_runs_pages(console)
    add_privacy_pages(console)
    add_overview_pages(console)
    console.routes.append(Mount("/static", StaticFiles(directory=HERE / "static"), name="static"))
    app = Starlette(routes=console.routes, middleware=[Middleware(SecurityHeaders, https=settings.https)])
    app.state.console = console
    return app
