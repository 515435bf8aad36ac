"""The conversations pages: search by platform, channel, user, date and text (SQL metacharacters as text); a thread."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta

from export_helpers import SEED_CONFIG, reply_to, settle, talk
from sqlalchemy import update
from web_helpers import client_for, console_of, log_in

from botkit.storage import FeedbackRecord, MessageRecord, ModerationEventRecord, utcnow
from botkit.web.conversations import MessageSearch, literal_pattern, search_messages

ROW = re.compile(r'<td class="text">(.*?)</td>', re.S)
NASTY = [
    "50% off_sale",
    "it's a 'quote' \"double\"",
    "C:\\temp\\new",
    "x'; DROP TABLE messages; --",
    "100%",
    "a_b",
]


def texts(page: str) -> list[str]:
    return [html.unescape(found.strip()) for found in ROW.findall(page)]


async def test_search_with_sql_metacharacters_finds_exactly_the_literal_text(make_bot):
    async with make_bot(SEED_CONFIG) as bot, console_of(bot) as app, client_for(app) as http:
        for text in NASTY:
            await talk(bot, text, "ok")
        await talk(bot, "500 off sale", "ok")  # what % and _ as wildcards would also match
        await talk(bot, "axb", "ok")
        await settle(bot)
        await log_in(http, "rita")
        for query, expected in (
            ("50% off_", ["50% off_sale"]),
            ("%", ["100%", "50% off_sale"]),
            ("_", ["a_b", "50% off_sale"]),
            ("'quote' \"double\"", ["it's a 'quote' \"double\""]),
            ("\\temp\\", ["C:\\temp\\new"]),
            ("'; DROP TABLE", ["x'; DROP TABLE messages; --"]),
            ("OFF_SALE", ["50% off_sale"]),  # case ignored
        ):
            page = await http.get("/conversations", params={"text": query})
            assert page.status_code == 200
            assert sorted(texts(page.text)) == sorted(expected), query
        assert len(await search_messages(bot.db, MessageSearch(limit=100))) == 2 * (len(NASTY) + 2)  # table intact


def test_a_literal_pattern_escapes_the_like_wildcards():
    assert literal_pattern("50%_\\") == "%50\\%\\_\\\\%"


async def test_search_by_platform_channel_user_and_date(make_bot):
    async with make_bot(SEED_CONFIG) as bot, console_of(bot) as app, client_for(app) as http:
        await talk(bot, "from bob in ops", "ok", user="bob", channel="ops")
        await talk(bot, "from carol in ops", "ok", user="carol", channel="ops")
        await talk(bot, "from bob in general", "ok", user="bob", channel="general")
        await settle(bot)
        old = datetime(2026, 1, 15, 12, tzinfo=UTC)
        async with bot.db.session() as session:
            await session.execute(
                update(MessageRecord).where(MessageRecord.text == "from carol in ops").values(created_at=old)
            )
        await log_in(http, "rita")

        async def found(**params: str) -> list[str]:
            page = await http.get("/conversations", params=params)
            assert page.status_code == 200, page.text
            return sorted(text for text in texts(page.text) if text != "ok")

        assert await found(channel="ops") == ["from bob in ops", "from carol in ops"]
        assert await found(user="bob") == ["from bob in general", "from bob in ops"]
        assert await found(user="bob", channel="ops") == ["from bob in ops"]
        assert await found(platform="test", text="carol") == ["from carol in ops"]
        assert await found(platform="slack", text="carol") == []
        assert await found(since="2026-01-15", until="2026-01-15") == ["from carol in ops"]  # "to" is inclusive
        assert await found(until="2026-01-14") == []
        today = utcnow().date().isoformat()
        assert await found(since=today, channel="ops") == ["from bob in ops"]
        bad = await http.get("/conversations", params={"since": "yesterday"})
        assert bad.status_code == 400 and "give a date as YYYY-MM-DD" in bad.text
        backwards = await http.get("/conversations", params={"since": today, "until": (utcnow() - timedelta(days=3)).date().isoformat()})
        assert backwards.status_code == 400 and "&#39;to&#39; must not be before &#39;from&#39;" in backwards.text


async def test_a_thread_shows_each_reply_with_its_metadata_feedback_and_moderation(make_bot):
    async with make_bot(SEED_CONFIG) as bot, console_of(bot) as app, client_for(app) as http:
        await talk(bot, "What is a mutex?", "A lock.")
        await talk(bot, "<script>alert(1)</script>", "<img src=x onerror=alert(2)>")
        reply = await reply_to(bot, "What is a mutex?")
        async with bot.db.session() as session:
            session.add(FeedbackRecord(message_id=reply.id, kind="reaction", value="thumbsup", created_at=utcnow()))
            session.add(
                ModerationEventRecord(
                    message_id=reply.id, direction="out", category="profanity", action="flag", created_at=utcnow()
                )
            )
        await log_in(http, "rita")
        search = await http.get("/conversations", params={"text": "mutex"})
        link = re.search(r'href="(/conversations/(\d+))#m\d+"', search.text)
        assert link, search.text
        page = await http.get(link.group(1))
        assert page.status_code == 200
        text = page.text
        assert text.index("What is a mutex?") < text.index("A lock.")
        assert reply.status == "completed" and reply.model and reply.latency_ms is not None
        assert f"status completed · model {reply.model}" in text
        assert f"tokens {reply.prompt_tokens} in / {reply.completion_tokens} out" in text
        assert f"· {reply.latency_ms} ms" in text
        assert "feedback: reaction thumbsup" in text
        assert "moderation (out): flag profanity" in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "&lt;img src=x onerror=alert(2)&gt;" in text
        assert "<script>" not in text and "<img" not in text
        assert (await http.get("/conversations/999999")).status_code == 404
