"""Running probes against the bot, as users reach it, and scoring what it answered.

Two targets take the same request (the control socket's ``probe``): ``InProcessTarget``
answers it with a bot in this process (``botkit.ops.answer_probe``), ``LiveTarget`` sends it to
a running bot's control socket. Every conversation of a run has a channel of its own,
``<run id>-<suite>-<probe id>[-<value>]``, on the ``redteam`` platform, and a user of its own,
so that no probe sees another's history and per-user rate limits do not pile up on one user.

A probe whose conversation fails (the backend raised or timed out, the bot stopped answering,
a scorer raised) is an error, never a pass, and the run goes on with the next.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from botkit import BotkitError
from botkit.ops import Bot, ProbeScorer, answer_probe, control_request

from .canary import canary_for
from .scoring import SCORERS, Gaps, Scene, Variant, gaps, judge_counterfactual
from .suites import Probe

# Reply statuses that mean the conversation did not happen as a user's would: no verdict.
FAILED_STATUSES = {"failed", "timed_out", "stopped"}
PASS, FAIL, ERROR = "pass", "fail", "error"


class ProbeRunError(BotkitError):
    """A probe could not be run to a verdict (the bot or its backend failed)."""


class Target(Protocol):
    async def probe(self, messages: list[dict[str, str]]) -> Mapping[str, Any]:
        """The ``probe`` request's answer (``replies``, ``plugins``, ``backend``); raises ``BotkitError``."""
        ...


class InProcessTarget:
    """A bot started in this process (``botkit redteam`` without ``--live``, tests)."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot

    async def probe(self, messages: list[dict[str, str]]) -> Mapping[str, Any]:
        return await answer_probe(self.bot, {"messages": messages})


class LiveTarget:
    """A running bot, through its control socket."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout

    async def probe(self, messages: list[dict[str, str]]) -> Mapping[str, Any]:
        answer = await control_request(self.path, {"command": "probe", "messages": messages}, self.timeout)
        if not answer.get("ok"):
            raise ProbeRunError(f"the running bot refused the probe: {answer.get('error')}")
        return answer


@dataclass(slots=True)
class ProbeResult:
    suite: str
    id: str
    outcome: str  # PASS, FAIL or ERROR
    reason: str | None
    prompts: list[str]
    replies: list[str]
    model_answered: bool  # every prompt was answered by the model (not a gate's or a command's notice)
    attribute: str | None = None
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # counterfactual: label -> measures
    gaps: dict[str, float] | None = None

    def as_json(self) -> dict[str, Any]:
        data = {
            "suite": self.suite,
            "id": self.id,
            "outcome": self.outcome,
            "reason": self.reason,
            "prompts": self.prompts,
            "replies": self.replies,
            "model_answered": self.model_answered,
        }
        if self.attribute is not None:
            data.update(attribute=self.attribute, variants=self.variants, gaps=self.gaps)
        return data


@dataclass(slots=True)
class Conversation:
    replies: list[str]
    model_answered: bool
    scene: Scene


class Run:
    """One run: its id (in every channel name), the target, and what the bot said about itself."""

    def __init__(
        self,
        target: Target,
        scorers: Mapping[str, Mapping[str, ProbeScorer]],
        run_id: str | None = None,
    ) -> None:
        self.target = target
        self.scorers = scorers  # suite -> its plugin's scorers by kind
        self.id = run_id or secrets.token_hex(4)
        self.backend: dict[str, Any] | None = None  # the summary of the backend that answered

    async def all(self, probes: Sequence[Probe], concurrency: int = 1) -> list[ProbeResult]:
        """Every probe's result, in the order given; at most ``concurrency`` probes at a time."""
        limit = asyncio.Semaphore(concurrency)

        async def one(probe: Probe) -> ProbeResult:
            async with limit:
                return await self.one(probe)

        return list(await asyncio.gather(*(one(probe) for probe in probes)))

    async def one(self, probe: Probe) -> ProbeResult:
        result = ProbeResult(
            probe.suite, probe.id, ERROR, None, list(probe.prompts), [], False, probe.attribute
        )
        try:
            if probe.values:
                await self._counterfactual(probe, result)
            else:
                talk = await self._converse(probe, f"{self.id}-{probe.suite}-{probe.id}", probe.prompts)
                result.replies, result.model_answered = talk.replies, talk.model_answered
                result.reason = self._first_failure(probe, talk)
                result.outcome = FAIL if result.reason else PASS
                if not result.reason and not talk.model_answered:
                    result.reason = "passed without the model: a gate or a command answered"
        except (BotkitError, OSError) as error:
            result.outcome, result.reason = ERROR, str(error)
        except Exception as error:  # noqa: BLE001 - a scorer's bug: this probe has no verdict, the run goes on
            result.outcome, result.reason = ERROR, f"{type(error).__name__}: {error}"
        return result

    async def _counterfactual(self, probe: Probe, result: ProbeResult) -> None:
        variants: dict[str, Variant] = {}
        answered = True
        for label, value in probe.values.items():
            talk = await self._converse(
                probe, f"{self.id}-{probe.suite}-{probe.id}-{label}", probe.prompts_for(value)
            )
            reply = "\n".join(talk.replies)
            variants[label] = Variant.of(reply)
            answered = answered and talk.model_answered
            result.variants[label] = {
                "value": value,
                "reply": reply,
                "refused": variants[label].refused,
                "sentiment": round(variants[label].sentiment, 3),
                "length": variants[label].length,
            }
        found: Gaps = gaps(variants)
        result.gaps = {
            "refusal": found.refusal,
            "sentiment": round(found.sentiment, 3),
            "length_ratio": round(found.length_ratio, 3),
        }
        result.replies = [entry["reply"] for entry in result.variants.values()]
        result.model_answered = answered
        result.reason = judge_counterfactual(probe.score, found)
        result.outcome = FAIL if result.reason else PASS

    async def _converse(self, probe: Probe, channel: str, prompts: Sequence[str]) -> Conversation:
        """The probe's setup and ``prompts`` in conversation ``channel``; the replies to the prompts."""
        user = f"probe-{channel}"
        for message in probe.setup:
            if message.other:  # another user, in a conversation of their own, first
                await self._ask(
                    [{"text": message.text, "user": f"{user}-other", "channel": f"{channel}-other"}]
                )
        same = [m.text for m in probe.setup if not m.other] + list(prompts)
        answer = await self._ask([{"text": text, "user": user, "channel": channel} for text in same])
        if probe.kind == "canary" and "redteam" not in answer.get("plugins", ()):
            raise ProbeRunError("the bot has the redteam plugin off: no canary was planted to look for")
        replies = list(answer["replies"])[-len(prompts) :]
        shown = tuple(m.text for m in probe.setup) + tuple(prompts)
        return Conversation(
            replies=[str(reply.get("text") or "") for reply in replies],
            model_answered=all(reply.get("status") is not None for reply in replies),
            scene=Scene(canary=canary_for(channel), shown=shown, author=user),
        )

    async def _ask(self, messages: list[dict[str, str]]) -> Mapping[str, Any]:
        answer = await self.target.probe(messages)
        replies = answer.get("replies")
        if not isinstance(replies, list) or len(replies) != len(messages):
            raise ProbeRunError("the bot's answer to a probe has no reply for each message")
        for reply in replies:
            if reply.get("status") in FAILED_STATUSES:
                raise ProbeRunError(f"the bot's reply did not complete (status {reply['status']})")
        if self.backend is None and isinstance(answer.get("backend"), dict):
            self.backend = dict(answer["backend"])
        return answer

    def _first_failure(self, probe: Probe, talk: Conversation) -> str | None:
        """Why a reply fails the probe (the first that does), or None."""
        details = {"id": probe.id, "prompts": list(probe.prompts), "score": dict(probe.score)}
        own = self.scorers.get(probe.suite, {}).get(probe.kind)
        for number, reply in enumerate(talk.replies, 1):
            if own is not None:
                reason = own(reply, details)
            else:
                reason = SCORERS[probe.kind](reply, details, talk.scene)
            if reason:
                return f"reply {number}: {reason}" if len(talk.replies) > 1 else reason
        return None
