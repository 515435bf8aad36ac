"""Whether a bot is ready to answer: its model loaded, its database writable, each adapter connected.

``/readyz`` on the metrics listener and ``botkit status`` (through the control socket) read
the same ``readiness``; ``/healthz`` says only that the process answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from botkit.bot import Bot

DATABASE_TIMEOUT = 2.0  # seconds the database check may take: an orchestrator's probe waits less than 10


@dataclass(frozen=True, slots=True)
class Check:
    """One readiness check: its name (``model``, ``database``, ``adapter:<name>``), ok, and why not."""

    name: str
    ok: bool
    detail: str = ""


async def readiness(bot: Bot, adapters: Sequence[str]) -> list[Check]:
    """Every check of ``bot``, whose ``adapters`` are the ones it runs (or will run once started)."""
    checks = [Check("model", True, "loaded") if bot.started else Check("model", False, "not loaded yet")]
    problem = await bot.db.problem(DATABASE_TIMEOUT) if bot.started else "not connected yet"
    checks.append(Check("database", problem is None, problem or "reachable"))
    for name in adapters:
        adapter = bot.adapters.get(name)
        if adapter is None:
            checks.append(Check(f"adapter:{name}", False, "not started yet"))
        elif adapter.is_connected():
            checks.append(Check(f"adapter:{name}", True, "connected"))
        else:
            checks.append(Check(f"adapter:{name}", False, "not connected"))
    return checks


def as_json(checks: Sequence[Check]) -> dict[str, Any]:
    """``{"ready": bool, "checks": {name: {"ok", "detail"}}}``: the body of ``/readyz`` and the control socket's."""
    return {
        "ready": all(check.ok for check in checks),
        "checks": {check.name: {"ok": check.ok, "detail": check.detail} for check in checks},
    }
