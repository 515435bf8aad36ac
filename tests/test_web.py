"""The web console's security: logins, roles, CSRF, the login limit, escaping, headers, the audit log."""

from __future__ import annotations

import logging
import re

import pytest
from starlette.routing import Mount, Route
from web_helpers import PASSWORDS, client_for, console_of, csrf_of, log_in, page_csrf

from botkit.web import audit
from botkit.web.accounts import AccountError, add_account
from botkit.web.app import CONTENT_SECURITY_POLICY
from botkit.web.server import exposure_warning
from botkit.web.settings import WebSettings

PUBLIC = {"/login", "/static"}
# Pages that must exist; the enumeration below covers whatever else is added.
KNOWN_PAGES = {"/", "/audit", "/logout", "/review", "/review/1/correct", "/conversations", "/conversations/1", "/plugins"}


def endpoints(app) -> list[tuple[str, str]]:
    """Every (method, path) the app answers, path parameters filled with 1."""
    found = []
    for route in app.routes:
        if isinstance(route, Mount):
            found.append(("GET", route.path + "/console.css"))
        elif isinstance(route, Route):
            path = re.sub(r"\{[^}]+\}", "1", route.path)
            found.extend((method, path) for method in sorted(route.methods or ()) if method != "HEAD")
    return found


async def test_every_route_refuses_an_anonymous_request(bot):
    async with console_of(bot) as app, client_for(app) as http:
        routes = endpoints(app)
        assert KNOWN_PAGES <= {path for _, path in routes}
        checked = 0
        for method, path in routes:
            if any(path == public or path.startswith(public + "/") for public in PUBLIC):
                continue
            response = await http.request(method, path, data={"csrf": "x"} if method == "POST" else None)
            assert response.status_code == 303, (method, path, response.status_code)
            assert response.headers["location"].startswith("/login"), (method, path)
            checked += 1
        assert checked >= len(KNOWN_PAGES)


async def test_a_form_without_its_csrf_token_is_refused_with_403_and_changes_nothing(bot):
    async with console_of(bot) as app, client_for(app) as http:
        assert (await log_in(http, "alice")).status_code == 303
        before = await audit.recent(bot.db)
        posts = [path for method, path in endpoints(app) if method == "POST" and path != "/login"]
        assert "/logout" in posts
        for path in posts:
            for data in ({}, {"csrf": "not-the-token"}):
                response = await http.post(path, data=data)
                assert response.status_code == 403, (path, data)
                assert "reload it" in response.text
        assert await audit.recent(bot.db) == before
        assert (await http.get("/")).status_code == 200  # still logged in: /logout was refused too


async def test_the_login_form_needs_its_own_token(bot):
    async with console_of(bot) as app, client_for(app) as http:
        await http.get("/login")
        response = await http.post("/login", data={"name": "alice", "password": PASSWORDS["alice"]})
        assert response.status_code == 403
        assert "botkit_session" not in response.headers.get("set-cookie", "")


async def test_a_reviewer_cannot_reach_admin_pages_and_an_admin_can(bot):
    async with console_of(bot) as app:
        async with client_for(app) as http:
            await log_in(http, "rita")
            home = await http.get("/")
            assert home.status_code == 200 and 'href="/audit"' not in home.text
            for page in ("/audit", "/plugins"):
                refused = await http.get(page)
                assert refused.status_code == 403 and "this page is for admins" in refused.text
            for page in ("/review", "/conversations"):
                assert (await http.get(page)).status_code == 200
                assert (await http.head(page)).status_code == 200  # HEAD is a read, needing no CSRF token
        async with client_for(app) as http:
            await log_in(http, "alice")
            shown = await http.get("/audit")
            assert shown.status_code == 200
            assert "login" in shown.text and "rita" in shown.text


async def test_logging_out_ends_the_session_for_that_cookie(bot):
    async with console_of(bot) as app, client_for(app) as http:
        await log_in(http, "alice")
        cookie = http.cookies.get("botkit_session")
        response = await http.post("/logout", data={"csrf": await page_csrf(http)})
        assert response.status_code == 303 and response.headers["location"] == "/login"
        http.cookies.set("botkit_session", cookie)  # a copy of the cookie kept from before
        again = await http.get("/")
        assert again.status_code == 303 and again.headers["location"].startswith("/login")
        assert [entry.action for entry in await audit.recent(bot.db)][:2] == ["logout", "login"]


async def test_the_eleventh_wrong_password_in_a_minute_is_refused(bot):
    async with console_of(bot) as app, client_for(app) as http:
        for attempt in range(10):
            response = await log_in(http, "alice", "wrong password!")
            assert response.status_code == 401, attempt
            assert "wrong name or password" in response.text
        refused = await log_in(http, "alice")  # the right password, too late
        assert refused.status_code == 429
        assert "too many failed logins: try again in" in refused.text
        assert "botkit_session" not in refused.headers.get("set-cookie", "")
        # Another account from another address is not held up by alice's.
        async with client_for(app, client="10.0.0.9") as other:
            assert (await log_in(other, "rita")).status_code == 303


async def test_consoles_on_one_redis_share_the_login_limit(make_bot, redis_server):
    # [plugins.ratelimit] storage on Redis: two processes (replicas, or botkit web beside botkit run)
    # allow 10 failed logins between them, not 10 each.
    config = {"plugins": {"ratelimit": {"storage": redis_server.url}}}
    async with make_bot(config) as first, make_bot(config) as second:
        async with console_of(first) as one, console_of(second) as two:
            await one.state.console.login_limit.storage.reset()  # nothing left from an earlier run
            async with client_for(one) as http_one, client_for(two) as http_two:
                for attempt in range(10):
                    http = http_one if attempt % 2 else http_two
                    assert (await log_in(http, "alice", "wrong password!")).status_code == 401, attempt
                assert (await log_in(http_one, "alice")).status_code == 429
                assert (await log_in(http_two, "alice")).status_code == 429


async def test_a_shared_login_limit_that_fails_still_counts_in_the_process_and_says_so(make_bot, caplog):
    from servers import free_port

    config = {"plugins": {"ratelimit": {"storage": f"redis://127.0.0.1:{free_port()}/0"}}}
    async with make_bot(config) as bot, console_of(bot) as app, client_for(app) as http:
        for attempt in range(10):
            assert (await log_in(http, "alice", "wrong password!")).status_code == 401, attempt
        refused = await log_in(http, "alice")
        assert refused.status_code == 429 and "too many failed logins" in refused.text
    assert caplog.text.count("the shared login limit's storage failed") == 1


async def test_wrong_names_from_one_address_are_limited_too(bot):
    async with console_of(bot) as app, client_for(app, client="10.0.0.7") as http:
        for attempt in range(10):
            assert (await log_in(http, f"nobody{attempt}", "wrong password!")).status_code == 401
        assert (await log_in(http, "rita")).status_code == 429


async def test_after_logging_in_the_browser_goes_to_the_page_it_asked_for_on_this_console_only(bot):
    async with console_of(bot) as app:
        async with client_for(app) as http:
            asked = await http.get("/audit")
            assert asked.headers["location"] == "/login?next=/audit"
            page = await http.get(asked.headers["location"])
            assert 'name="next" value="/audit"' in page.text
        for target, lands in (("/audit", "/audit"), ("//evil.example/", "/"), ("https://evil.example/", "/")):
            async with client_for(app) as fresh:
                form = await fresh.get("/login")
                response = await fresh.post(
                    "/login",
                    data={"csrf": csrf_of(form.text), "name": "alice", "password": PASSWORDS["alice"], "next": target},
                )
                assert response.status_code == 303 and response.headers["location"] == lands


async def test_cookies_are_httponly_strict_and_secure_over_https(bot):
    async with console_of(bot) as app, client_for(app) as http:
        cookie = (await log_in(http, "alice")).headers["set-cookie"]
        assert cookie.startswith("botkit_session=")
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        assert "secure" not in cookie.lower()
    async with console_of(bot, https=True) as app, client_for(app, https=True) as http:
        response = await log_in(http, "alice")
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("__Host-botkit_session=")
        assert "; secure" in cookie.lower() and "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        assert "path=/" in cookie.lower() and "domain" not in cookie.lower()
        assert response.headers["strict-transport-security"].startswith("max-age=")
        assert (await http.get("/")).status_code == 200


async def test_every_response_carries_the_content_security_policy(bot):
    async with console_of(bot) as app, client_for(app) as http:
        for response in (await http.get("/login"), await http.get("/"), await http.get("/static/console.css")):
            assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"
        assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY and "script-src 'self'" in CONTENT_SECURITY_POLICY


async def test_markup_in_an_account_name_shows_as_text_in_the_audit_log(bot):
    payload = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    async with console_of(bot) as app, client_for(app) as http:
        await log_in(http, payload, "wrong password!")
        await log_in(http, "alice")
        page = (await http.get("/audit")).text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in page
        assert "<script>" not in page and "<img" not in page


async def test_passwords_never_reach_the_log(bot, caplog):
    caplog.set_level(logging.DEBUG)
    async with console_of(bot) as app, client_for(app) as http:
        await log_in(http, "alice", "a-wrong-secret-password")
        await log_in(http, "alice")
    text = caplog.text + "".join(str(record.args) for record in caplog.records)
    assert "a-wrong-secret-password" not in text and PASSWORDS["alice"] not in text


async def test_accounts_are_checked_when_added(bot):
    for name, role, password, problem in (
        ("bad name!", "admin", "long enough password", "account name"),
        ("bob", "owner", "long enough password", "role 'owner'"),
        ("bob", "admin", "short", "at least 12 characters"),
    ):
        with pytest.raises(AccountError, match=problem):
            await add_account(bot.db, name, role, password)
    await add_account(bot.db, "bob", "admin", "long enough password")
    with pytest.raises(AccountError, match="exists already"):
        await add_account(bot.db, "bob", "reviewer", "another long password")


def test_serving_beyond_loopback_without_https_is_warned_about():
    assert exposure_warning(WebSettings()) is None
    assert exposure_warning(WebSettings(listen="[::1]:8765")) is None
    assert exposure_warning(WebSettings(listen="0.0.0.0:8765", https=True)) is None
    warning = exposure_warning(WebSettings(listen="0.0.0.0:8765"))
    assert warning is not None and "without HTTPS" in warning and "[web] https = true" in warning


def test_bad_web_settings_say_what_to_write():
    with pytest.raises(ValueError, match="HOST:PORT"):
        WebSettings(listen="8765")
    with pytest.raises(ValueError, match="'N/period'"):
        WebSettings(login_limit="ten")
    with pytest.raises(ValueError, match="certfile and keyfile go together"):
        WebSettings(certfile="cert.pem")
