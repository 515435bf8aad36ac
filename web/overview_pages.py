"""The home page: the links to every page a login may see, and the overview (``botkit overview``'s numbers).

Admins see all of it: the running bot's backends and adapters, the activity charts,
rate-limit refusals, the database and the spool. Reviewers see the activity charts only
(messages, 👍 / 👎 and moderation events per hour and day): counts of what they already read
in the review queue and the conversations, while the rest (database URL, paths, pids,
queues) is for whoever runs the bot.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from botkit.ops import human_bytes, human_duration, read_overview
from botkit.storage import utcnow

from .app import Console
from .charts import overview_charts


def add_overview_pages(console: Console) -> None:
    async def home(request: Request) -> Response:
        admin = request.state.login.may("admin")
        # Inside `botkit run` the console's bot is the running bot; beside it, its control socket is asked.
        overview = await read_overview(console.bot, utcnow(), in_process=console.live, operations=admin)  # type: ignore[arg-type]  # a Bot
        return console.render(
            request, "home.html", overview=overview, charts=overview_charts(overview),
            human_bytes=human_bytes, human_duration=human_duration,
        )  # fmt: skip

    console.page("/", home, "reviewer")
