"""The review queue page: the pairs of `botkit finetune review`, approved, rejected and corrected in the browser's forms."""

from __future__ import annotations

from export_helpers import SEED_CONFIG, read_records, reply_to, talk
from web_helpers import client_for, console_of, log_in, page_csrf

from botkit.finetune.export import ExportOptions, SystemPrompts, run_export
from botkit.finetune.review import list_candidates
from botkit.storage import FeedbackRecord, ModerationEventRecord, utcnow
from botkit.web import audit

XSS = "<script>alert(1)</script><img src=x onerror=alert(2)>"


async def seed(bot) -> dict[str, int]:
    """Three pairs, and the id of each reply by its question."""
    questions = {"What is a mutex?": "A lock.", "What is a semaphore?": "A counter.", "What is a deadlock?": "Dunno."}
    for question, answer in questions.items():
        await talk(bot, question, answer)
    return {question: (await reply_to(bot, question)).id for question in questions}


async def test_a_reviewer_approves_rejects_and_corrects_pairs_and_the_export_uses_the_correction(make_bot, tmp_path):
    async with make_bot(SEED_CONFIG) as bot, console_of(bot) as app, client_for(app) as http:
        ids = await seed(bot)
        await log_in(http, "rita")
        queue = await http.get("/review")
        assert queue.status_code == 200
        for question in ids:
            assert question in queue.text
        csrf = await page_csrf(http, "/review")

        approved = await http.post(f"/review/{ids['What is a mutex?']}/approve", data={"csrf": csrf, "state": "pending"})
        assert approved.status_code == 303
        assert approved.headers["location"] == (
            f"/review?state=pending&votes=any&moderation=any&truncated=any&done=%23{ids['What is a mutex?']}+approved"
        )
        assert (await http.post(f"/review/{ids['What is a semaphore?']}/reject", data={"csrf": csrf})).status_code == 303
        corrected = await http.post(
            f"/review/{ids['What is a deadlock?']}/correct",
            data={"csrf": csrf, "text": "Two tasks each waiting for a lock the other holds."},
        )
        assert corrected.status_code == 303

        states = {pair.reply_id: pair.state for pair in await list_candidates(bot.db, "all", 10)}
        assert states == {
            ids["What is a mutex?"]: "approved",
            ids["What is a semaphore?"]: "rejected",
            ids["What is a deadlock?"]: "corrected",
        }
        assert "No pending pairs." in (await http.get("/review")).text
        corrected_page = (await http.get("/review?state=corrected")).text
        assert "Two tasks each waiting for a lock the other holds." in corrected_page
        assert [(e.actor, e.action, e.target) for e in await audit.recent(bot.db)][:3] == [
            ("rita", "review.correct", f"#{ids['What is a deadlock?']}"),
            ("rita", "review.reject", f"#{ids['What is a semaphore?']}"),
            ("rita", "review.approve", f"#{ids['What is a mutex?']}"),
        ]

        out = tmp_path / "export"
        await run_export(
            bot.db,
            ExportOptions(out=out, formats=("alpaca-jsonl",), validation_fraction=0.0),
            SystemPrompts(bot.settings),
        )
    records = {r["instruction"]: r["output"] for r in read_records(out / "alpaca-jsonl" / "train.jsonl")}
    assert records["What is a deadlock?"] == "Two tasks each waiting for a lock the other holds."
    assert "What is a semaphore?" not in records  # rejected
    assert records["What is a mutex?"] == "A lock."


async def test_a_decision_that_cannot_be_taken_says_why(make_bot):
    async with make_bot(SEED_CONFIG) as bot, console_of(bot) as app, client_for(app) as http:
        ids = await seed(bot)
        await log_in(http, "rita")
        csrf = await page_csrf(http, "/review")
        missing = await http.post("/review/999999/approve", data={"csrf": csrf})
        assert missing.status_code == 400
        assert "there is no bot reply with id 999999" in missing.text
        empty = await http.post(f"/review/{ids['What is a mutex?']}/correct", data={"csrf": csrf, "text": "  "})
        assert empty.status_code == 400 and "the correction is empty" in empty.text
        bad_state = await http.get("/review?state=maybe")
        assert bad_state.status_code == 400 and "state &#39;maybe&#39;: choose one of pending" in bad_state.text
        bad_votes = await http.get("/review?votes=many")
        assert bad_votes.status_code == 400 and "votes &#39;many&#39;: choose one of any, up, down, none" in bad_votes.text
        assert [entry.action for entry in await audit.recent(bot.db)] == ["login"]  # nothing was decided


async def test_the_export_counts_are_those_of_export_dry_run(make_bot):
    async with make_bot(SEED_CONFIG) as bot, console_of(bot) as app, client_for(app) as http:
        await seed(bot)
        await log_in(http, "rita")
        page = await http.get("/review/export-counts")
        report = await run_export(bot.db, ExportOptions(dry_run=True), SystemPrompts(bot.settings))
        assert page.status_code == 200
        for line in report.lines():
            assert line.replace("'", "&#39;") in page.text
        assert "examples kept: 3 unique" in page.text


async def test_markup_in_a_pair_renders_as_text(make_bot):
    async with make_bot(SEED_CONFIG) as bot, console_of(bot) as app, client_for(app) as http:
        await talk(bot, XSS, f"You wrote {XSS}")
        await reply_to(bot, XSS)
        await log_in(http, "rita")
        page = (await http.get("/review")).text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in page
        assert "<img" not in page and "<script>" not in page.replace('<script src="/static/review.js" defer></script>', "")


async def test_the_filters_are_review_lists_and_a_decision_keeps_them(make_bot):
    async with make_bot(SEED_CONFIG) as bot, console_of(bot) as app, client_for(app) as http:
        ids = await seed(bot)
        async with bot.db.session() as session:
            session.add(FeedbackRecord(message_id=ids["What is a mutex?"], kind="reaction", value="👍", created_at=utcnow()))
            session.add(
                ModerationEventRecord(
                    message_id=ids["What is a deadlock?"], direction="out", category="profanity", action="flag",
                    created_at=utcnow(),
                )
            )
        await log_in(http, "rita")

        async def shown(**query: str) -> list[str]:
            page = await http.get("/review", params=query)
            assert page.status_code == 200, page.text
            return [question for question in ids if question in page.text]

        assert await shown(votes="up") == ["What is a mutex?"]
        assert await shown(votes="none") == ["What is a semaphore?", "What is a deadlock?"]
        assert await shown(moderation="with") == ["What is a deadlock?"]
        assert "moderation: out: flag profanity" in (await http.get("/review?moderation=with")).text
        assert "votes +1 −0" in (await http.get("/review?votes=up")).text
        rejected = await http.post(
            f"/review/{ids['What is a deadlock?']}/reject",
            data={"csrf": await page_csrf(http), "state": "pending", "moderation": "with"},
        )
        assert rejected.headers["location"].startswith("/review?state=pending&votes=any&moderation=with&truncated=any")
