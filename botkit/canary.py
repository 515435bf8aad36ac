"""Canary rollouts of LoRA adapters: which arm answers a conversation, the running canaries, and their results.

A canary runs on one backend: a share of the conversations (``share`` percent,
sticky per conversation) is answered with the canary adapter, the rest with the
adapter the backend had (the control arm). The arm of a conversation is a stable
hash of its conversation key salted with the canary's id: the same conversation
stays on one arm for the whole rollout, on every replica, and each new rollout
draws its canary conversations afresh.

The running canaries are rows of the ``canaries`` table (one without ``ended_at`` per
backend), so they survive a restart and every replica sharing the database answers
alike; ``Canaries.refresh`` reads them again. Both adapters must be among the backend's
``loras``, which a backend loads side by side and applies per request.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update

from botkit.backend_set import BackendSlot
from botkit.canary_stats import ProportionTest, two_proportion_test, wilson_interval
from botkit.errors import BotkitError
from botkit.storage import (
    CanaryRecord,
    Database,
    FeedbackRecord,
    MessageRecord,
    ModerationEventRecord,
    utcnow,
)
from botkit.types import ReplyStatus

CONTROL = "control"
CANARY = "canary"
ARMS = (CONTROL, CANARY)
PROMOTED = "promoted"
ROLLED_BACK = "rolled_back"
# Hash buckets: a share is honoured to a hundredth of a percent.
_BUCKETS = 10_000


class CanaryError(BotkitError):
    """A canary cannot be started or ended as asked (the message says why and what to do)."""


def arm_for(conversation_key: str, share: float, salt: str) -> str:
    """The arm of a conversation: ``CANARY`` for about ``share`` percent of keys, else ``CONTROL``.

    Stable: the same key and salt give the same arm in every process (sha256, not ``hash()``).
    """
    digest = hashlib.sha256(f"{salt}\x00{conversation_key}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % _BUCKETS
    return CANARY if bucket < round(share * _BUCKETS / 100) else CONTROL


@dataclass(frozen=True, slots=True)
class CanaryPlan:
    """One running canary: on ``backend``, ``share`` percent of conversations get ``canary_lora``."""

    id: int
    backend: str
    control_lora: str | None  # None: the base model
    canary_lora: str
    share: float
    started_at: datetime

    def arm(self, conversation_key: str) -> str:
        return arm_for(conversation_key, self.share, f"canary-{self.id}")

    def lora(self, arm: str) -> str | None:
        """The LoRA adapter that answers on ``arm``; None for the base model."""
        return self.canary_lora if arm == CANARY else self.control_lora

    def describe(self) -> str:
        control = self.control_lora or "the base model"
        return (
            f"canary {self.id} on backend {self.backend!r}: {self.share:g}% of conversations get LoRA adapter "
            f"{self.canary_lora!r}, the rest {control}"
        )

    @classmethod
    def from_record(cls, row: CanaryRecord) -> CanaryPlan:
        return cls(row.id, row.backend, row.control_lora, row.canary_lora, row.share, row.started_at)


@dataclass(frozen=True, slots=True)
class ArmResults:
    """What one arm's replies met: votes (👍 / 👎 reactions), stops and moderation events."""

    arm: str
    replies: int
    positive: int
    negative: int
    stopped: int
    moderation_events: int

    @property
    def votes(self) -> int:
        return self.positive + self.negative

    @property
    def negative_rate(self) -> float | None:
        """👎 among the arm's 👍 and 👎; None before any vote."""
        return self.negative / self.votes if self.votes else None

    @property
    def negative_interval(self) -> tuple[float, float]:
        return wilson_interval(self.negative, self.votes)

    @property
    def stop_rate(self) -> float | None:
        return self.stopped / self.replies if self.replies else None


@dataclass(frozen=True, slots=True)
class CanaryResults:
    """Both arms' results and the test of the canary's negative rate against the control's."""

    plan: CanaryPlan
    control: ArmResults
    canary: ArmResults

    @property
    def negative_test(self) -> ProportionTest | None:
        return two_proportion_test(
            self.canary.negative, self.canary.votes, self.control.negative, self.control.votes
        )

    def significantly_worse(self, min_votes: int, alpha: float) -> bool:
        """Whether the canary's negative rate is higher than the control's at level ``alpha`` (one-sided),
        with at least ``min_votes`` votes on each arm."""
        if min(self.control.votes, self.canary.votes) < min_votes:
            return False
        test = self.negative_test
        return test is not None and test.z > 0 and test.p_greater < alpha


def check_side_by_side(slot: BackendSlot, canary_lora: str) -> None:
    """Refuse (``CanaryError``) a canary the backend cannot answer beside its current adapter."""
    loras = slot.backend.loras
    if not loras:
        raise CanaryError(
            f"backend {slot.name!r} ({slot.type_name}) cannot run two LoRA adapters side by side: it has no "
            f"loras table; a canary needs both adapters named in [{slot.table}] loras, which a llamacpp or "
            "transformers backend loads together and applies per request"
        )
    if canary_lora not in loras:
        raise CanaryError(
            f"backend {slot.name!r} has no LoRA adapter {canary_lora!r}; its LoRA adapters: "
            f"{', '.join(sorted(loras))} (name the new adapter in [{slot.table}] loras and reload)"
        )
    active = slot.backend.active_lora
    if canary_lora == active:
        raise CanaryError(f"backend {slot.name!r} already answers everyone with LoRA adapter {canary_lora!r}")


class Canaries:
    """The running canaries of one bot, as last read from the database, by backend."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._plans: dict[str, CanaryPlan] = {}

    def plan_for(self, backend: str) -> CanaryPlan | None:
        return self._plans.get(backend)

    @property
    def plans(self) -> list[CanaryPlan]:
        return list(self._plans.values())

    async def refresh(self) -> list[tuple[CanaryPlan, str | None]]:
        """Read the running canaries again (another replica or the CLI may have started or ended one).

        Returns the canaries that ran here until now and have ended since, each with its outcome.
        """
        async with self._db.session() as session:
            rows = (await session.scalars(select(CanaryRecord).where(CanaryRecord.ended_at.is_(None)))).all()
            plans = {row.backend: CanaryPlan.from_record(row) for row in rows}
            gone = [plan for backend, plan in self._plans.items() if plans.get(backend) != plan]
            outcomes = dict(
                (
                    await session.execute(
                        select(CanaryRecord.id, CanaryRecord.outcome).where(
                            CanaryRecord.id.in_([plan.id for plan in gone])
                        )
                    )
                ).all()
            )
        self._plans = plans
        return [(plan, outcomes.get(plan.id)) for plan in gone]

    async def start(self, slot: BackendSlot, canary_lora: str, share: float) -> CanaryPlan:
        """Start a canary of ``canary_lora`` on ``slot`` for ``share`` percent of conversations."""
        if not 0 < share < 100:
            raise CanaryError(f"a canary's share is a percentage above 0 and below 100, not {share:g}")
        check_side_by_side(slot, canary_lora)
        await self.refresh()
        running = self.plan_for(slot.name)
        if running is not None:
            raise CanaryError(f"{running.describe()} is running already: promote or roll it back first")
        async with self._db.session() as session:
            row = CanaryRecord(
                backend=slot.name, control_lora=slot.backend.active_lora, canary_lora=canary_lora, share=share
            )
            session.add(row)
            await session.flush()
            plan = CanaryPlan.from_record(row)
        self._plans[slot.name] = plan
        return plan

    async def end(self, backend: str, outcome: str, reason: str) -> CanaryPlan:
        """End the running canary of ``backend`` as ``PROMOTED`` or ``ROLLED_BACK``; the plan that ended.

        Of several replicas (or an admin and the watch) ending it at once, the first wins; the
        others get ``CanaryError``, so that a promotion never follows a rollback.
        """
        await self.refresh()
        plan = self.plan_for(backend)
        if plan is None:
            raise CanaryError(f"no canary is running on backend {backend!r}")
        async with self._db.session() as session:
            ended = await session.execute(
                update(CanaryRecord)
                .where(CanaryRecord.id == plan.id, CanaryRecord.ended_at.is_(None))
                .values(ended_at=utcnow(), outcome=outcome, reason=reason[:255])
            )
        self._plans.pop(backend, None)
        if ended.rowcount == 0:  # type: ignore[attr-defined]
            raise CanaryError(f"{plan.describe()} was ended elsewhere meanwhile; see canary status")
        return plan

    async def results(self, plan: CanaryPlan) -> CanaryResults:
        """Each arm's replies, votes, stops and moderation events while the canary ran."""
        replies = (
            select(MessageRecord.id, MessageRecord.arm, MessageRecord.status)
            .where(MessageRecord.canary_id == plan.id, MessageRecord.role == "assistant")
            .subquery()
        )
        async with self._db.session() as session:
            counts = dict(
                (await session.execute(select(replies.c.arm, func.count()).group_by(replies.c.arm))).all()
            )
            stopped = dict(
                (
                    await session.execute(
                        select(replies.c.arm, func.count())
                        .where(replies.c.status == ReplyStatus.STOPPED.value)
                        .group_by(replies.c.arm)
                    )
                ).all()
            )
            votes = (
                await session.execute(
                    select(replies.c.arm, FeedbackRecord.score > 0, func.count())
                    .join(FeedbackRecord, FeedbackRecord.message_id == replies.c.id)
                    .where(FeedbackRecord.kind == "reaction", FeedbackRecord.score.is_not(None))
                    .group_by(replies.c.arm, FeedbackRecord.score > 0)
                )
            ).all()
            moderation = dict(
                (
                    await session.execute(
                        select(replies.c.arm, func.count())
                        .join(ModerationEventRecord, ModerationEventRecord.message_id == replies.c.id)
                        .group_by(replies.c.arm)
                    )
                ).all()
            )
        by_vote = {(arm, bool(good)): count for arm, good, count in votes}

        def arm_results(arm: str) -> ArmResults:
            return ArmResults(
                arm,
                replies=counts.get(arm, 0),
                positive=by_vote.get((arm, True), 0),
                negative=by_vote.get((arm, False), 0),
                stopped=stopped.get(arm, 0),
                moderation_events=moderation.get(arm, 0),
            )

        return CanaryResults(plan, arm_results(CONTROL), arm_results(CANARY))


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def report_lines(results: CanaryResults) -> list[str]:
    """The canary's results as ``botkit finetune canary status`` and ``/canary`` show them."""
    lines = [f"{results.plan.describe()}, since {results.plan.started_at:%Y-%m-%d %H:%M} UTC"]
    for arm in (results.control, results.canary):
        low, high = arm.negative_interval
        interval = f" (95% CI {low:.1%}-{high:.1%})" if arm.votes else ""
        positive = _rate(arm.positive / arm.votes if arm.votes else None)
        lines.append(
            f"  {arm.arm:<7}  {arm.replies} replies, 👍 {arm.positive} ({positive}), 👎 {arm.negative} "
            f"({_rate(arm.negative_rate)}){interval}, stopped {arm.stopped} ({_rate(arm.stop_rate)}), "
            f"moderation events {arm.moderation_events}"
        )
    test = results.negative_test
    if test is None:
        lines.append(
            "  👎 rate, canary vs control: not testable yet (an arm has no votes, or neither varies)"
        )
    else:
        lines.append(
            f"  👎 rate, canary vs control: z = {test.z:+.2f}, p = {test.p_value:.3g} (two-sided), "
            f"p = {test.p_greater:.3g} that the canary's is higher"
        )
    return lines
