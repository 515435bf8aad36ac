"""Curation: exchanges become training examples through named filters, each counting what it removed.

The order is fixed (docs/finetune.md): selection, consent, deleted, edited,
status, moderation, truncated, then the example is built (a correction replaces the
answer; PII and secrets are scrubbed), then review, feedback, length,
language, exact duplicates, near duplicates. An exchange that passes the
content filters (consent to review) also becomes history for the later
examples of its conversation, whether or not it is itself kept.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from botkit import Role, Turn
from botkit.ops import pii_scrubber

from .dedup import CompactHashMap, NearDuplicateIndex, fingerprint
from .examples import REJECTED, Example, Feedback, FeedbackPolicy, PiiPolicy, StoredMessage
from .select import Exchange, Selection


@dataclass(frozen=True, slots=True)
class Curation:
    """How exchanges are curated (the ``botkit export`` flags of the same names)."""

    moderation_clean: bool = True
    corrections: bool = True
    pii: PiiPolicy = "scrub"
    feedback: FeedbackPolicy = "weighted"
    max_weight: int = 3
    min_chars: int = 1
    max_chars: int = 16_000
    languages: tuple[str, ...] = ()
    exact_duplicates: bool = True
    near_duplicates: float | None = 0.8
    history: int = 3  # earlier exchanges of the conversation put before each example
    # Answers cut at max_tokens: dropped, or kept and labelled ``"truncated": true`` in every record.
    keep_truncated: bool = False


# (name, what it removes or changes), in the order they run.
STEPS: tuple[tuple[str, str], ...] = (
    ("selection", "replies outside the selected backends, models, adapters or feedback"),
    ("consent", "exchanges of users who opted out (/optout)"),
    ("deleted", "messages deleted by their authors, and the replies to them"),
    ("edited", "questions edited after the bot answered them"),
    ("status", "replies that did not complete (stopped, timed out, blocked, failed)"),
    ("moderation", "exchanges with a moderation event (any category, either direction)"),
    ("truncated", "answers cut at max_tokens, unless a correction replaces them (kept and labelled: changed)"),
    ("correction", "answers replaced by a human correction (changed, not removed)"),
    ("pii", "e-mail addresses, phone and card numbers, keys and tokens"),
    ("review", "pairs an admin rejected in the review queue"),
    ("feedback", "replies without approval, or voted down"),
    ("length", "answers shorter than min-chars, examples longer than max-chars"),
    ("language", "examples in a language not asked for"),
    ("exact duplicates", "the same message and answer seen before"),
    ("near duplicates", "a message and answer nearly the same as one kept before"),
)


@dataclass(slots=True)
class StepCount:
    name: str
    description: str
    removed: int = 0
    changed: int = 0
    enabled: bool = True


@dataclass(slots=True)
class Counts:
    """What each step did: removed (and changed) exchanges, in order."""

    steps: dict[str, StepCount] = field(
        default_factory=lambda: {name: StepCount(name, text) for name, text in STEPS}
    )
    exchanges: int = 0
    kept: int = 0

    def removed(self, step: str) -> None:
        self.steps[step].removed += 1

    def changed(self, step: str) -> None:
        self.steps[step].changed += 1


class LanguageFilter:
    """``py3langid`` (its model ships in the wheel) on the message and the answer together."""

    def __init__(self, languages: tuple[str, ...]) -> None:
        try:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier
        except ImportError:
            raise ValueError("the language filter needs py3langid: pip install 'botkit[finetune]'") from None
        self._identifier = LanguageIdentifier.from_model_file(MODEL_FILE)
        known = set(self._identifier.nb_classes)
        unknown = sorted(set(languages) - known)
        if unknown:
            raise ValueError(
                f"unknown language code {', '.join(unknown)}: use ISO 639-1 codes such as en, de, fr "
                f"({len(known)} are known)"
            )
        self.languages = frozenset(languages)

    def accepts(self, text: str) -> bool:
        language, _ = self._identifier.classify(text)
        return language in self.languages


@dataclass(slots=True)
class _History:
    conversation: int | None = None
    turns: deque[tuple[Role, str, int | None]] = field(default_factory=deque)
    people: dict[int, int] = field(default_factory=dict)  # users id -> number in this conversation


class Curator:
    """Turns exchanges, in conversation order, into kept examples; ``counts`` says what happened."""

    def __init__(
        self,
        selection: Selection,
        curation: Curation,
        system_prompt: Callable[[StoredMessage], str],
        opted_out: set[int],
        moderated: set[tuple[int, str]],
        on_candidate: Callable[[Example], None] | None = None,
    ) -> None:
        self.selection = selection
        self.curation = curation
        self.system_prompt = system_prompt
        self.opted_out = opted_out
        self.moderated = moderated
        self.on_candidate = on_candidate
        self.counts = Counts()
        steps = self.counts.steps
        steps["moderation"].enabled = curation.moderation_clean
        steps["correction"].enabled = curation.corrections
        steps["pii"].enabled = curation.pii != "off"
        steps["feedback"].enabled = curation.feedback != "off"
        steps["language"].enabled = bool(curation.languages)
        steps["exact duplicates"].enabled = curation.exact_duplicates
        steps["near duplicates"].enabled = curation.near_duplicates is not None
        self._scrub = pii_scrubber() if curation.pii != "off" else None
        self._language = LanguageFilter(curation.languages) if curation.languages else None
        self._exact = CompactHashMap() if curation.exact_duplicates else None
        self._near = (
            NearDuplicateIndex(curation.near_duplicates) if curation.near_duplicates is not None else None
        )
        self._history = _History()

    def take(self, exchange: Exchange, feedback: Feedback) -> Example | None:
        """The example this exchange gives, or None (counted under the step that removed it)."""
        question, reply = exchange.question, exchange.reply
        self.counts.exchanges += 1
        history, speaker = self._history_of(question.conversation_id, question.user_id)
        selected = self.selection.wants_reply(reply) and self.selection.wants_feedback(feedback)
        failed = self._content_gate(exchange)
        if not selected or (failed is None and self._drops_truncated(exchange, feedback)):
            self.counts.removed("selection" if not selected else "truncated")
            # Not an example, but the conversation went on with it: history for the next ones.
            if failed is None:
                example = self._build(exchange, feedback, history, speaker, count=False)
                if example is not None and feedback.review != REJECTED:
                    self._remember(example, question.user_id)
            return None
        if failed is not None:
            self.counts.removed(failed)
            return None
        example = self._build(exchange, feedback, history, speaker, count=True)
        if example is None:
            self.counts.removed("pii")
            return None
        if example.truncated:
            self.counts.changed("truncated")  # kept (keep_truncated), labelled in every record
        # A cut answer is never a pair's "chosen" (nor, kept, its "rejected": only a correction's pair has it).
        if self.on_candidate is not None and not example.truncated:
            self.on_candidate(example)
        if feedback.review == REJECTED:
            self.counts.removed("review")
            return None
        self._remember(example, question.user_id)
        failed = self._quality_gate(example)
        if failed is not None:
            self.counts.removed(failed)
            return None
        self.counts.kept += 1
        return example

    def _content_gate(self, exchange: Exchange) -> str | None:
        """The first content filter the exchange fails, if any."""
        question, reply = exchange.question, exchange.reply
        if question.user_id in self.opted_out:
            return "consent"
        if question.deleted_at is not None or reply.deleted_at is not None:
            return "deleted"
        if question.edited_at is not None and question.edited_at > reply.created_at:
            return "edited"
        if reply.status not in ("completed", "truncated"):
            return "status"
        if (
            self.curation.moderation_clean
            and question.user_id is not None
            and (question.user_id, question.platform_message_id or "") in self.moderated
        ):
            return "moderation"
        return None

    def _drops_truncated(self, exchange: Exchange, feedback: Feedback) -> bool:
        """Whether the reply was cut at max_tokens and goes: not kept by choice, nor replaced by a correction."""
        if exchange.reply.status != "truncated" or self.curation.keep_truncated:
            return False
        return not (self.curation.corrections and feedback.correction is not None)

    def _quality_gate(self, example: Example) -> str | None:
        curation = self.curation
        feedback = example.feedback
        if curation.feedback == "approved" and not feedback.approved(curation.corrections):
            return "feedback"
        if curation.feedback == "weighted":
            score = feedback.score(curation.corrections)
            if score < 0:
                return "feedback"
            example.weight = min(1 + score, curation.max_weight)
        text_length = len(example.instruction) + sum(len(turn.text) for turn in example.history)
        if len(example.output.strip()) < curation.min_chars:
            return "length"
        if text_length + len(example.output) > curation.max_chars:
            return "length"
        if self._language is not None and not self._language.accepts(
            f"{example.instruction}\n{example.output}"
        ):
            return "language"
        if self._exact is not None:
            key = fingerprint(example.instruction, example.output)
            if key in self._exact:
                return "exact duplicates"
            self._exact.put(key)
        if self._near is not None and self._near.seen_or_add(f"{example.instruction}\n{example.output}"):
            return "near duplicates"
        return None

    def _build(
        self,
        exchange: Exchange,
        feedback: Feedback,
        history: list[Turn],
        speaker: str | None,
        count: bool,
    ) -> Example | None:
        """The example with its correction applied and PII scrubbed; None when ``pii = drop`` found some."""
        question, reply = exchange.question, exchange.reply
        output, rejected = reply.text, None
        if self.curation.corrections and feedback.correction is not None:
            output, rejected = feedback.correction, reply.text
            if count:
                self.counts.changed("correction")
        instruction = question.text
        if self._scrub is not None:
            found = False
            texts = []
            for text in (instruction, output, rejected):
                if text is None:
                    texts.append(None)
                    continue
                clean, hit = self._scrub(text)
                texts.append(clean)
                found = found or hit
            if found:
                if self.curation.pii == "drop":
                    return None
                if count:
                    self.counts.changed("pii")
                instruction, output, rejected = texts
        return Example(
            conversation_id=question.conversation_id,
            reply_id=reply.id,
            created_at=question.created_at,
            platform=question.platform,
            channel_id=question.channel_id,
            backend=reply.backend,
            model=reply.model,
            adapter=reply.adapter,
            status=reply.status,
            system=self.system_prompt(question),
            history=history,
            instruction=instruction,
            speaker=speaker,
            output=output,
            feedback=feedback,
            rejected=rejected,
        )

    # -- history -------------------------------------------------------------

    def _history_of(self, conversation: int, user_id: int | None) -> tuple[list[Turn], str | None]:
        """The earlier exchanges of ``conversation`` as turns, and the speaker label of the new message.

        Speakers are named only when several people take part, and then by
        pseudonym ("User 1", "User 2" in order of appearance): a display name is
        personal data and never goes into a dataset.
        """
        state = self._history
        if state.conversation != conversation:
            state.conversation = conversation
            state.turns = deque(maxlen=2 * self.curation.history)
            state.people = {}
        users = {user for role, _, user in state.turns if role is Role.USER} | {user_id}
        if len(users) <= 1:
            return [Turn(role, text) for role, text, _ in state.turns], None
        history = [
            Turn(role, text, self._label(user) if role is Role.USER else None)
            for role, text, user in state.turns
        ]
        return history, self._label(user_id)

    def _label(self, user_id: int | None) -> str:
        people = self._history.people
        return f"User {people.setdefault(user_id or 0, len(people) + 1)}"

    def _remember(self, example: Example, user_id: int | None) -> None:
        self._history.turns.append((Role.USER, example.instruction, user_id))
        self._history.turns.append((Role.ASSISTANT, example.output, None))
