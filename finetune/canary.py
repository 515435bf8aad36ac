"""The canary watch of a running bot: takes canaries started or ended elsewhere, and rolls back a bad one.

Every ``[finetune.canary] check_interval`` seconds each replica reads the running
canaries again (``Bot.refresh_canaries``: one another replica or the CLI started,
promoted or rolled back) and, with ``auto_rollback``, rolls back a canary whose 👎
rate is higher than the control arm's at significance ``alpha`` (one-sided
two-proportion z-test, ``min_votes`` votes on each arm at least).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from botkit import BotkitError
from botkit.ops import ROLLED_BACK, Bot

from .settings import CanarySettings

log = logging.getLogger("botkit.finetune.canary")


class CanaryWatch:
    """Looks at a bot's canaries every ``check_interval`` seconds (``check`` once; ``start`` for the loop)."""

    def __init__(self, bot: Bot, settings: CanarySettings) -> None:
        self.bot = bot
        self.settings = settings
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="botkit-canary-watch")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def check(self) -> list[str]:
        """Look once: a line for each canary ended since (elsewhere or rolled back here)."""
        notes = await self.bot.refresh_canaries()
        settings = self.settings
        for plan in self.bot.canaries.plans:
            results = await self.bot.canaries.results(plan)
            if not (
                settings.auto_rollback and results.significantly_worse(settings.min_votes, settings.alpha)
            ):
                continue
            test = results.negative_test
            assert test is not None
            reason = (
                f"auto_rollback: 👎 rate {results.canary.negative}/{results.canary.votes} against the control's "
                f"{results.control.negative}/{results.control.votes}, p = {test.p_greater:.3g} < alpha {settings.alpha:g}"
            )
            try:
                notes.append(await self.bot.end_canary(plan.backend, ROLLED_BACK, reason))
            except BotkitError as error:  # another replica ended it first
                notes.append(str(error))
        for note in notes:
            log.warning("canary: %s", note)
        return notes

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.check_interval)
            try:
                await self.check()
            except Exception:
                log.exception(
                    "canary: looking at the running canaries failed; trying again in %g s",
                    self.settings.check_interval,
                )
